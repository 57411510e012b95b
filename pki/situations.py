"""Exercise situations: which structure a professional practises for, in which profession and role.

The RPPS directory extract has one row per *activité*: the professional's identity, then the
site's FINESS / SIRET / SIREN number, its name (raison sociale) and the role. ``pki.directory``
reads those columns at ``pro import``; ``cps-admin pro situation add`` adds one by hand. The
broker lists a professional's situations in ``SubjectRefPro``, accepts a login ``for`` one of
them (``SubjectOrganizationID``), and a situation flagged ``emergency_centre`` (a SAMU / SAS
regulation centre) is what lets the professional use the emergency access mode.

``structure_id`` is the national structure identifier as the tokens carry it: the register's
prefix and the number (``1`` + FINESS, ``3`` + SIRET, ``2`` + SIREN; see ``pki.ids``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pki import audit, ids
from pki.clock import SYSTEM_CLOCK, Clock
from pki.errors import Duplicate, InvalidInput, NotFound
from pki.store.db import Store
from pki.store.models import Professional, Structure
from pki.store.patient_models import ProfessionalActivity
from pki.store.situation_models import ExerciseSituationRow

REGISTERS = ("FINESS", "SIRET", "SIREN")
_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$")
_REGISTER_BY_PREFIX = {prefix: register for register, prefix in ids.STRUCTURE_ID_PREFIX.items()}


@dataclass(frozen=True)
class ExerciseSituation:
    situation_id: str          # stable id: the row id ("a<id>" for a bare practice link)
    profession_code: str       # e.g. "10" (médecin) as in professions.json
    role_code: str | None      # PSC "fonction"/role code (RPPS extract "Code rôle"), may be None
    structure_id: str          # national structure id: register prefix + number
    structure_id_type: str     # "FINESS" | "SIRET" | "SIREN"
    structure_name: str
    emergency_centre: bool     # an emergency call centre (SAMU/SAS): grants emergency access

    @property
    def structure_number(self) -> str:
        """The number in its register (FINESS, SIRET or SIREN), without the prefix."""
        return self.structure_id[1:]


@dataclass(frozen=True)
class SituationEntry:
    """A validated situation, not yet written: what an import row or ``situation add`` gives."""

    rpps: str
    profession_code: int
    role_code: str | None
    structure_id: str
    register: str
    structure_name: str
    state: str
    emergency_centre: bool


def clean_role(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    role = value.strip()
    if not _ROLE.match(role):
        raise InvalidInput(f"role code {role!r}: expected 1-16 letters, digits, '-', '_' or '.'")
    return role


def situation_entry(rpps: str, *, structure_type: str, structure_number: str, name: str,
                    profession: str | int, role: str | None = None, state: str = "",
                    emergency_centre: bool = False) -> SituationEntry:
    """Validate one situation; raise an InvalidInput subclass naming the field at fault."""
    from pki.directory import clean_name

    register = structure_type.strip().upper()
    if register not in REGISTERS:
        raise InvalidInput(f"structure type {structure_type!r}: expected one of "
                           f"{', '.join(REGISTERS)}")
    structure_id = ids.validate_structure(register, structure_number.strip())
    return SituationEntry(
        rpps=ids.validate_rpps(rpps), profession_code=ids.profession(str(profession).strip()).code,
        role_code=clean_role(role), structure_id=structure_id, register=register,
        structure_name=clean_name(name, "structure name"),
        state=clean_name(state, "state") if state.strip() else "non renseigné",
        emergency_centre=emergency_centre)


# --- reading ----------------------------------------------------------------------------

def situations_for(session: Session, rpps: str) -> list[ExerciseSituation]:
    """The professional's situations, ordered by structure then profession; [] if none.

    Practice links made before situations existed (``professional_activity``) count as
    situations in the professional's own profession, without a role.
    """
    rows = session.execute(
        select(ExerciseSituationRow, Structure)
        .join(Structure, Structure.id == ExerciseSituationRow.structure_id)
        .join(Professional, Professional.id == ExerciseSituationRow.professional_id)
        .where(Professional.rpps == rpps)).all()
    out = [ExerciseSituation(str(row.id), str(row.profession_code), row.role_code,
                             st.structure_id, _register(st), st.name, row.emergency_centre)
           for row, st in rows]
    covered = {s.structure_id for s in out}
    legacy = session.execute(
        select(ProfessionalActivity.id, Professional.profession_code, Structure)
        .join(Structure, Structure.id == ProfessionalActivity.structure_id)
        .join(Professional, Professional.id == ProfessionalActivity.professional_id)
        .where(Professional.rpps == rpps)).all()
    out += [ExerciseSituation(f"a{act_id}", str(code), None, st.structure_id, _register(st),
                              st.name, False)
            for act_id, code, st in legacy if st.structure_id not in covered]
    out.sort(key=lambda s: (s.structure_id, s.profession_code, s.situation_id))
    return out


def _register(structure: Structure) -> str:
    register = structure.register.upper()
    return register if register in REGISTERS else _REGISTER_BY_PREFIX.get(
        structure.structure_id[:1], register)


def pick(situations: Sequence[ExerciseSituation], organisation: str | None
         ) -> ExerciseSituation | None:
    """The situation a login acts for: the one whose structure is ``organisation`` (its national
    id, or the bare FINESS/SIRET/SIREN number when that is unambiguous), the only one when
    there is one and none is asked for, else None. Raises ValueError for an unknown one."""
    if organisation is None or not organisation.strip():
        return situations[0] if len(set(s.structure_id for s in situations)) == 1 else None
    wanted = organisation.strip()
    exact = [s for s in situations if s.structure_id == wanted]
    if not exact:
        exact = [s for s in situations if s.structure_number == wanted]
        if len({s.structure_id for s in exact}) > 1:
            raise ValueError(f"organisation {wanted!r} is ambiguous: give the structure id "
                             f"({', '.join(sorted({s.structure_id for s in exact}))})")
    if not exact:
        raise ValueError(f"organisation {wanted!r} is not one of the professional's structures")
    return exact[0]


def emergency_centre_ids(session: Session, rpps: str) -> frozenset[str]:
    """Structures for which this professional may use the emergency (call-centre) mode."""
    return frozenset(s.structure_id for s in situations_for(session, rpps) if s.emergency_centre)


# --- writing ----------------------------------------------------------------------------

def _structure_rows(session: Session, entries: Sequence[SituationEntry], *, clock: Clock
                    ) -> tuple[dict[str, int], list[tuple[str, str, dict[str, Any]]]]:
    """Row ids of the entries' structures, creating the missing ones (first name wins), and
    the audit links of those created."""
    wanted = {e.structure_id: e for e in reversed(entries)}
    ids_by_structure: dict[str, int] = {
        sid: rid for sid, rid in session.execute(
            select(Structure.structure_id, Structure.id)
            .where(Structure.structure_id.in_(list(wanted))))}
    created: list[tuple[str, str, dict[str, Any]]] = []
    for structure_id, entry in wanted.items():
        if structure_id in ids_by_structure:
            continue
        row = Structure(structure_id=structure_id, register=entry.register,
                        name=entry.structure_name, state=entry.state, created_at=clock.now())
        session.add(row)
        session.flush()
        ids_by_structure[structure_id] = row.id
        created.append(("structure.add", structure_id,
                        {"register": entry.register, "name": entry.structure_name,
                         "state": entry.state}))
    return ids_by_structure, created


def write_situations(session: Session, entries: Sequence[SituationEntry], *, action: str,
                     actor: str, clock: Clock) -> int:
    """Insert situations in the caller's transaction (structures created as needed), with their
    audit records; a situation already there is a Duplicate. A few queries per batch, not per
    row: an extract has one row per activity of every professional."""
    if not entries:
        return 0
    rpps = sorted({e.rpps for e in entries})
    pro_ids: dict[str, int] = {
        r: pid for r, pid in session.execute(select(Professional.rpps, Professional.id)
                                             .where(Professional.rpps.in_(rpps)))}
    missing = [r for r in rpps if r not in pro_ids]
    if missing:
        raise NotFound(f"no professional with RPPS {missing[0]}")
    structures, audit_links = _structure_rows(session, entries, clock=clock)
    existing: set[tuple[int, int, int]] = {
        (pid, sid, code) for pid, sid, code in session.execute(
            select(ExerciseSituationRow.professional_id, ExerciseSituationRow.structure_id,
                   ExerciseSituationRow.profession_code)
            .where(ExerciseSituationRow.professional_id.in_(list(pro_ids.values()))))}
    rows = []
    now = clock.now()
    for entry in entries:
        key = (pro_ids[entry.rpps], structures[entry.structure_id], entry.profession_code)
        if key in existing:
            raise Duplicate(f"RPPS {entry.rpps} already has a situation at {entry.structure_id} "
                            f"as profession {entry.profession_code}")
        existing.add(key)
        rows.append({"professional_id": key[0], "structure_id": key[1],
                     "profession_code": entry.profession_code, "role_code": entry.role_code,
                     "emergency_centre": entry.emergency_centre,
                     "source": action.rsplit(".", 1)[-1], "created_at": now})
        audit_links.append((action, entry.rpps, {
            "structure": entry.structure_id, "profession": entry.profession_code,
            "role": entry.role_code, "emergency_centre": entry.emergency_centre}))
    session.execute(insert(ExerciseSituationRow), rows)
    audit.append_many(session, audit_links, actor=actor, clock=clock)
    return len(rows)


def add_situation(store: Store, entry: SituationEntry, *, actor: str = "cps-admin",
                  clock: Clock = SYSTEM_CLOCK) -> ExerciseSituation:
    with store.session() as session:
        write_situations(session, [entry], action="situation.add", actor=actor, clock=clock)
    with store.read() as session:
        for situation in situations_for(session, entry.rpps):
            if (situation.structure_id, situation.profession_code) == (
                    entry.structure_id, str(entry.profession_code)):
                return situation
    raise NotFound(f"situation of {entry.rpps} at {entry.structure_id} not found after adding")


def list_situations(store: Store, rpps: str) -> list[ExerciseSituation]:
    rpps = ids.validate_rpps(rpps)
    with store.read() as session:
        if session.execute(select(Professional.id).where(Professional.rpps == rpps)).first() \
                is None:
            raise NotFound(f"no professional with RPPS {rpps}")
        return situations_for(session, rpps)


def remove_situation(store: Store, rpps: str, situation_id: str, *, actor: str = "cps-admin",
                     clock: Clock = SYSTEM_CLOCK) -> None:
    rpps = ids.validate_rpps(rpps)
    if not situation_id.isdigit():
        raise InvalidInput(f"situation id {situation_id!r}: expected the number "
                           "'pro situation list' shows")
    with store.session() as session:
        row = session.execute(
            select(ExerciseSituationRow)
            .join(Professional, Professional.id == ExerciseSituationRow.professional_id)
            .where(Professional.rpps == rpps,
                   ExerciseSituationRow.id == int(situation_id))).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no situation {situation_id} for RPPS {rpps}")
        structure = session.get(Structure, row.structure_id)
        session.delete(row)
        audit.append(session, "situation.remove", rpps,
                     {"situation": situation_id,
                      "structure": structure.structure_id if structure else None},
                     actor=actor, clock=clock)
