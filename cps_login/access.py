"""Patient-record access rules (SPEC §8) as one pure function.

``decide(request, record_state, matrix)`` looks at nothing but its arguments: no clock (the
instant is in the request), no database, no Flask. It returns the ``Decision`` and the name of
the rule that decided, which the caller writes to the audit chain and to the patient's access
history. Rules are checked in the order of ``RULES`` below; the first that refuses decides.

Professional actors (``read``, ``list``, ``write``):
  1. ``patient_blocked``      the patient blocked this professional — absolute, even in an
                              emergency (the patient's strongest control).
  2. ``hidden_by_patient``    a document the patient hid is visible to its author only.
  3. mode ``normal``:  ``care_team`` or ``consent`` grants; otherwise ``no_care_relationship``.
     mode ``break_glass``: ``reason_required`` (a stated emergency), ``emergency_opposed``
                              (the patient opposed emergency access in advance), then
                              ``break_glass`` grants (flagged, patient notified).
     mode ``emergency``:  the same, plus ``not_emergency_centre`` unless the professional acts
                              for a configured emergency call centre (SAMU); grants as
                              ``emergency_centre`` (flagged, notified).
  4. ``profession_matrix``    the profession may read (or write) the document's category.
Authors (``set_visibility``): ``author`` grants, ``not_author`` refuses.

Patient actors (``read``, ``list``, ``history``, ``control``):
  ``patient_self`` grants on one's own record; acting on another record needs to be its
  ``legal_representative`` (refused ``not_representative``), and only while the patient is a
  minor (refused ``not_minor``). Documents: ``hidden_from_patient`` until the announced date,
  ``hidden_from_representatives`` when the document is withheld from the legal
  representatives (e.g. at a minor's request). Patients never ``write``: ``patient_cannot_write``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

Mode = Literal["normal", "break_glass", "emergency"]
ActorKind = Literal["professional", "patient"]
Action = Literal["read", "list", "write", "set_visibility", "history", "control"]
MODES: tuple[Mode, ...] = ("normal", "break_glass", "emergency")
ACTIONS: tuple[Action, ...] = ("read", "list", "write", "set_visibility", "history", "control")

RULES = (
    "unknown_action", "patient_blocked", "hidden_by_patient", "author", "not_author",
    "reason_required", "emergency_opposed", "not_emergency_centre", "no_care_relationship",
    "care_team", "consent", "break_glass", "emergency_centre", "profession_matrix",
    "patient_self", "legal_representative", "not_representative", "not_minor",
    "hidden_from_patient", "hidden_from_representatives", "patient_cannot_write",
    "professional_only",
)


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: str                                  # national id 8+RPPS, or the patient's INS
    profession_code: int | None = None
    organisation_id: str | None = None


@dataclass(frozen=True)
class DocumentState:
    id: int
    category: str
    author_id: str                           # national id of the author
    hidden_by_patient: bool = False
    hidden_from_patient_until: dt.datetime | None = None
    hidden_from_representatives: bool = False


@dataclass(frozen=True)
class RecordState:
    patient_id: str                          # INS
    is_minor: bool = False
    care_team: frozenset[str] = frozenset()
    consents: Mapping[str, dt.datetime | None] = field(default_factory=dict)  # id -> expiry
    blocked: frozenset[str] = frozenset()
    emergency_opposed: bool = False
    representatives: frozenset[str] = frozenset()   # INS of the legal representatives
    emergency_centres: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessRequest:
    actor: Actor
    action: Action
    at: dt.datetime
    document: DocumentState | None = None
    mode: Mode = "normal"
    reason: str | None = None


@dataclass(frozen=True)
class Decision:
    granted: bool
    rule: str
    mode: Mode = "normal"

    @property
    def flagged(self) -> bool:
        """Emergency accesses are always flagged and notified to the patient."""
        return self.mode != "normal"


@dataclass(frozen=True)
class Matrix:
    categories: frozenset[str]
    read: Mapping[int, frozenset[str]]
    write: Mapping[int, frozenset[str]]

    def allows(self, profession_code: int | None, category: str, write: bool) -> bool:
        if profession_code is None or category not in self.categories:
            return False
        allowed = (self.write if write else self.read).get(profession_code, frozenset())
        return "*" in allowed or category in allowed

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Matrix:
        categories = raw.get("categories")
        professions = raw.get("professions")
        if not isinstance(categories, dict) or not isinstance(professions, dict):
            raise ValueError("access matrix needs 'categories' and 'professions' objects")
        cats = frozenset(categories)
        read: dict[int, frozenset[str]] = {}
        write: dict[int, frozenset[str]] = {}
        for code, spec in professions.items():
            for name, table in (("read", read), ("write", write)):
                values = frozenset(spec.get(name, []))
                unknown = values - cats - {"*"}
                if unknown:
                    raise ValueError(f"access matrix: profession {code} {name}s unknown "
                                     f"categories {sorted(unknown)}")
                table[int(code)] = values
        return cls(cats, read, write)


@functools.cache
def default_matrix() -> Matrix:
    text = resources.files("cps_login.data").joinpath("access_matrix.json").read_text("utf-8")
    return Matrix.from_json(json.loads(text))


def load_matrix(path: str | Path | None) -> Matrix:
    if path is None:
        return default_matrix()
    return Matrix.from_json(json.loads(Path(path).read_text("utf-8")))


def _refuse(rule: str, mode: Mode = "normal") -> Decision:
    return Decision(False, rule, mode)


def decide(request: AccessRequest, record: RecordState,
           matrix: Matrix | None = None) -> Decision:
    """The access decision for ``request`` on the record described by ``record``."""
    if request.action not in ACTIONS or request.mode not in MODES:
        return _refuse("unknown_action")
    if request.actor.kind == "professional":
        return _professional(request, record, matrix or default_matrix())
    if request.actor.kind == "patient":
        return _patient(request, record)
    return _refuse("unknown_action")


def _professional(req: AccessRequest, record: RecordState, matrix: Matrix) -> Decision:
    actor, doc, mode = req.actor, req.document, req.mode
    if req.action in ("history", "control"):
        return _refuse("unknown_action")
    if actor.id in record.blocked:
        return _refuse("patient_blocked", mode)
    if req.action == "set_visibility":
        if doc is None or doc.author_id != actor.id:
            return _refuse("not_author")
        return Decision(True, "author")
    if doc is not None and doc.hidden_by_patient and doc.author_id != actor.id:
        return _refuse("hidden_by_patient", mode)
    if mode == "normal":
        granting = _care_relationship(actor.id, record, req.at)
        if granting is None:
            return _refuse("no_care_relationship")
    else:
        if not (req.reason or "").strip():
            return _refuse("reason_required", mode)
        if record.emergency_opposed:
            return _refuse("emergency_opposed", mode)
        if mode == "emergency" and actor.organisation_id not in record.emergency_centres:
            return _refuse("not_emergency_centre", mode)
        granting = "break_glass" if mode == "break_glass" else "emergency_centre"
    if doc is not None and not matrix.allows(actor.profession_code, doc.category,
                                             write=req.action == "write"):
        return _refuse("profession_matrix", mode)
    return Decision(True, granting, mode)


def _care_relationship(actor_id: str, record: RecordState, at: dt.datetime) -> str | None:
    if actor_id in record.care_team:
        return "care_team"
    if actor_id in record.consents:
        expiry = record.consents[actor_id]
        if expiry is None or at < expiry:
            return "consent"
    return None


def _patient(req: AccessRequest, record: RecordState) -> Decision:
    actor, doc = req.actor, req.document
    if req.mode != "normal":
        return _refuse("professional_only")
    if req.action == "write":
        return _refuse("patient_cannot_write")
    if req.action == "set_visibility":
        return _refuse("not_author")
    if actor.id == record.patient_id:
        granting = "patient_self"
    elif actor.id in record.representatives:
        if not record.is_minor:
            return _refuse("not_minor")
        granting = "legal_representative"
    else:
        return _refuse("not_representative")
    if doc is not None:
        until = doc.hidden_from_patient_until
        if until is not None and req.at < until:
            return _refuse("hidden_from_patient")
        if granting == "legal_representative" and doc.hidden_from_representatives:
            return _refuse("hidden_from_representatives")
    return Decision(True, granting)
