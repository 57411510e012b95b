"""The directory of professionals and structures: single additions and CSV imports.

An extract may also carry the structure columns of the RPPS extract (one row per activity: FINESS /
SIRET / SIREN site, raison sociale, role): each such row adds an exercise situation
(``pki.situations``), and a professional may then appear on several rows, with the same name.
Comma, semicolon and ``|`` (the RPPS extract's own separator) are accepted.

A CSV import is all-or-nothing by default: every row is validated first (identifiers, profession
code, names, duplicates inside the file and against the store), every bad row is reported with
its line number, and nothing is written unless the whole file is clean — or the caller asks to
skip the bad rows explicitly. Each write joins an audit record in the same transaction.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import insert, select

from pki import audit, ids
from pki.clock import SYSTEM_CLOCK, Clock
from pki.errors import Duplicate, InvalidInput, NotFound, PkiError
from pki.situations import ExerciseSituation as ExerciseSituation  # re-exported
from pki.situations import SituationEntry, situation_entry, write_situations
from pki.situations import situations_for as situations_for  # re-exported
from pki.store.db import Store
from pki.store.models import Professional, Structure

REQUIRED_COLUMNS = ("rpps", "profession", "given_name", "surname")
# Accepted spellings of the header of a directory extract (lower-cased, spaces -> _).
_COLUMN_ALIASES = {
    "rpps": "rpps", "identifiant_rpps": "rpps", "id_rpps": "rpps",
    "profession": "profession", "profession_code": "profession", "code_profession": "profession",
    "given_name": "given_name", "prenom": "given_name", "prénom": "given_name",
    "surname": "surname", "nom": "surname", "family_name": "surname",
    "adeli": "adeli", "numero_adeli": "adeli", "identifiant_adeli": "adeli",
    "civility": "civility", "code_civilite": "civility", "civilite": "civility",
    "exercise_civility": "exercise_civility", "code_civilite_d'exercice": "exercise_civility",
    "civilite_d'exercice": "exercise_civility",
    # The RPPS extract (PS_LibreAcces_Personne_activite), accents removed.
    "identifiant_pp": "rpps", "nom_d'exercice": "surname", "prenom_d'exercice": "given_name",
    "numero_finess_site": "finess", "finess": "finess",
    "numero_siret_site": "siret", "siret": "siret",
    "numero_siren_site": "siren", "siren": "siren",
    "raison_sociale_site": "structure_name", "raison_sociale": "structure_name",
    "structure_name": "structure_name", "enseigne_commerciale_site": "trade_name",
    "code_role": "role", "role": "role", "role_code": "role",
    "libelle_departement_(structure)": "state", "departement": "state", "state": "state",
    "emergency_centre": "emergency_centre", "centre_urgence": "emergency_centre",
}
# A header with any of these columns describes situations, one per row.
STRUCTURE_COLUMNS = ("finess", "siret", "siren")
_TRUE = frozenset({"1", "true", "yes", "oui", "o", "y", "x"})
_FALSE = frozenset({"", "0", "false", "no", "non", "n"})
NAME_MAX = 128            # width of the store columns
_CIVILITY = re.compile(r"[A-Z]{1,5}")
INSERT_BATCH = 500


@dataclass(frozen=True)
class ProfessionalEntry:
    rpps: str
    profession_code: int
    given_name: str
    surname: str
    adeli: str | None = None
    civility: str | None = None             # M, MME... (the extract's "Code civilité")
    exercise_civility: str | None = None    # DR, PR... ("Code civilité d'exercice")

    @property
    def national_id(self) -> str:
        return ids.national_id(self.rpps)

    @property
    def profession_label(self) -> str:
        return ids.profession(self.profession_code).label


@dataclass(frozen=True)
class StructureEntry:
    structure_id: str
    register: str
    name: str
    state: str


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedCsv:
    entries: list[tuple[int, ProfessionalEntry]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    situations: list[tuple[int, SituationEntry]] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    imported: int
    skipped: tuple[RowError, ...]
    situations: int = 0


# --- validation -------------------------------------------------------------------------

def clean_name(value: str, what: str) -> str:
    """A person or organisation name: trimmed, NFC, printable, 1..128 characters."""
    text = unicodedata.normalize("NFC", value.strip())
    if not text:
        raise InvalidInput(f"{what} is empty")
    if len(text) > NAME_MAX:
        raise InvalidInput(f"{what} is longer than {NAME_MAX} characters")
    bad = [ch for ch in text if unicodedata.category(ch)[0] in ("C", "Z") and ch != " "]
    if bad:
        raise InvalidInput(f"{what} contains a control or separator character {bad[0]!r}")
    return text


def professional_entry(rpps: str, profession: str | int, given_name: str,
                       surname: str, adeli: str | None = None, civility: str | None = None,
                       exercise_civility: str | None = None) -> ProfessionalEntry:
    """Validate one professional; raise an InvalidInput subclass naming the field at fault.

    ``adeli`` is optional (None or blank: none); when given it must be a valid ADELI number.
    ``civility`` and ``exercise_civility`` (optional): the RPPS nomenclature's codes, 1 to 5
    letters, kept upper-case.
    """
    valid_rpps = ids.validate_rpps(rpps)
    code = ids.profession(str(profession).strip()).code
    valid_adeli = ids.validate_adeli(adeli) if adeli is not None and adeli.strip() else None
    return ProfessionalEntry(valid_rpps, code, clean_name(given_name, "given name"),
                             clean_name(surname, "surname"), valid_adeli,
                             civility_code(civility, "civility"),
                             civility_code(exercise_civility, "civility of exercise"))


def civility_code(value: str | None, what: str) -> str | None:
    """A civility code of the RPPS nomenclature (M, MME, DR, PR...): 1 to 5 ASCII letters,
    upper-cased; None or blank: none."""
    if value is None or not value.strip():
        return None
    code = value.strip().upper()
    if not _CIVILITY.fullmatch(code):
        raise InvalidInput(f"{what} {value.strip()[:16]!r} is not a civility code (M, MME, DR, "
                           f"PR...: 1 to 5 letters)")
    return code


def structure_entry(register: str, number: str, name: str, state: str) -> StructureEntry:
    structure_id = ids.validate_structure(register, number)
    return StructureEntry(structure_id, register.upper(), clean_name(name, "name"),
                          clean_name(state, "state"))


# --- CSV --------------------------------------------------------------------------------

def decode_csv(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"CSV is not UTF-8 (byte {exc.start})") from None


def _column_key(raw: str) -> str:
    text = unicodedata.normalize("NFKD", raw.strip().lower().replace("\u2019", "'"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.replace(" ", "_").replace("-", "_")


def _delimiter(text: str) -> str:
    """The separator of the header line: ',' unless ';' or '|' (the RPPS extract) is used more."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return max((",", ";", "|"), key=first.count) if first else ","


def _header_map(header: Sequence[str]) -> dict[str, int]:
    positions: dict[str, int] = {}
    for index, raw in enumerate(header):
        if not raw.strip():
            continue                          # the RPPS extract ends each line with '|'
        key = _COLUMN_ALIASES.get(_column_key(raw))
        if key is None:
            continue
        if key in positions:
            raise InvalidInput(f"line 1: column {key!r} appears twice in the header")
        positions[key] = index
    missing = [c for c in REQUIRED_COLUMNS if c not in positions]
    if missing:
        raise InvalidInput(f"line 1: header lacks column(s) {', '.join(missing)} "
                           f"(expected {','.join(REQUIRED_COLUMNS)})")
    return positions


def parse_csv(text: str, *, progress: Callable[[int], None] | None = None) -> ParsedCsv:
    """Validate every row of a directory extract; never raises anything but PkiError.

    Row errors are collected (with the physical line number of the row), not raised; a file
    that cannot be read as CSV at all (no header, broken quoting) raises InvalidInput.
    """
    parsed = ParsedCsv()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=_delimiter(text))
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)      # leading blank lines
        if header is None:
            raise InvalidInput("CSV file is empty (no header line)")
        columns = _header_map(header)
        with_structures = any(c in columns for c in STRUCTURE_COLUMNS)
        width = max(columns.values()) + 1
        seen: dict[str, int] = {}
        first: dict[str, ProfessionalEntry] = {}
        seen_situations: dict[tuple[str, str, int], int] = {}
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if progress is not None:
                progress(1)
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < width:
                parsed.errors.append(RowError(start, f"expected at least {width} fields, "
                                                     f"got {len(row)}"))
                continue
            try:
                entry = professional_entry(
                    row[columns["rpps"]], row[columns["profession"]],
                    row[columns["given_name"]], row[columns["surname"]],
                    *(row[columns[c]] if c in columns else None
                      for c in ("adeli", "civility", "exercise_civility")))
                situation = (_row_situation(row, columns, entry) if with_structures
                             else None)
            except PkiError as exc:
                parsed.errors.append(RowError(start, exc.message))
                continue
            if entry.rpps in seen:
                earlier = first[entry.rpps]
                if not with_structures:
                    parsed.errors.append(RowError(start, f"RPPS {entry.rpps} duplicates line "
                                                         f"{seen[entry.rpps]}"))
                    continue
                if (earlier.given_name, earlier.surname) != (entry.given_name, entry.surname):
                    parsed.errors.append(RowError(
                        start, f"RPPS {entry.rpps} is named {entry.given_name} {entry.surname} "
                               f"here but {earlier.given_name} {earlier.surname} on line "
                               f"{seen[entry.rpps]}"))
                    continue
            else:
                seen[entry.rpps] = start
                first[entry.rpps] = entry
                parsed.entries.append((start, entry))
            if situation is not None:
                key = (situation.rpps, situation.structure_id, situation.profession_code)
                if key in seen_situations:
                    parsed.errors.append(RowError(
                        start, f"situation of RPPS {entry.rpps} at {situation.structure_id} "
                               f"duplicates line {seen_situations[key]}"))
                    continue
                seen_situations[key] = start
                parsed.situations.append((start, situation))
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num}: not valid CSV ({exc})") from None
    return parsed


def _row_situation(row: Sequence[str], columns: dict[str, int],
                   entry: ProfessionalEntry) -> SituationEntry | None:
    """The situation a row of an extract describes: its FINESS site if any, else its SIRET,
    else its SIREN; None for a row without any structure number."""
    def cell(name: str) -> str:
        return row[columns[name]].strip() if name in columns else ""

    register = next((r for r in STRUCTURE_COLUMNS if cell(r)), None)
    if register is None:
        return None
    flag = cell("emergency_centre").lower()
    if flag not in _TRUE | _FALSE:
        raise InvalidInput(f"emergency_centre {flag!r}: expected 1/0, oui/non or true/false")
    name = cell("structure_name") or cell("trade_name")
    if not name:
        raise InvalidInput(f"{register.upper()} {cell(register)} has no raison sociale")
    return situation_entry(entry.rpps, structure_type=register, structure_number=cell(register),
                           name=name, profession=entry.profession_code, role=cell("role"),
                           state=cell("state"), emergency_centre=flag in _TRUE)


def existing_rpps(store: Store, rpps: Iterable[str], chunk: int = 900) -> set[str]:
    wanted = list(rpps)
    found: set[str] = set()
    with store.read() as session:
        for i in range(0, len(wanted), chunk):
            part = wanted[i:i + chunk]
            found.update(session.execute(select(Professional.rpps)
                                         .where(Professional.rpps.in_(part))).scalars())
    return found


def import_csv(store: Store, data: bytes, *, skip_invalid: bool = False,
               actor: str = "cps-admin", clock: Clock = SYSTEM_CLOCK,
               progress: Callable[[int], None] | None = None,
               on_total: Callable[[int], None] | None = None) -> ImportResult:
    """Validate the whole extract, then import it in audited batches.

    ``progress(n)`` is called as rows are validated and again as they are written
    (``on_total`` announces how many rows will be written, for a second progress bar).
    """
    parsed = parse_csv(decode_csv(data), progress=progress)
    entries = parsed.entries
    errors = list(parsed.errors)
    existing = existing_rpps(store, (e.rpps for _, e in entries))
    situations = parsed.situations
    if existing:
        errors += [RowError(line, f"RPPS {e.rpps} is already in the directory")
                   for line, e in entries if e.rpps in existing]
        entries = [(line, e) for line, e in entries if e.rpps not in existing]
    kept = {e.rpps for _, e in entries}
    situations = [(line, s) for line, s in situations if s.rpps in kept]
    errors.sort(key=lambda err: err.line)
    if errors and not skip_invalid:
        raise InvalidInput(f"{len(errors)} invalid row(s), nothing imported: "
                           + "; ".join(str(e) for e in errors))
    if not entries and not errors:
        raise InvalidInput("CSV file has a header but no rows")
    if on_total is not None:
        on_total(len(entries))
    for i in range(0, len(entries), INSERT_BATCH):
        _insert_professionals(store, [e for _, e in entries[i:i + INSERT_BATCH]],
                              action="pro.import", actor=actor, clock=clock)
        if progress is not None:
            progress(len(entries[i:i + INSERT_BATCH]))
    for i in range(0, len(situations), INSERT_BATCH):
        with store.session() as session:
            write_situations(session, [s for _, s in situations[i:i + INSERT_BATCH]],
                             action="situation.import", actor=actor, clock=clock)
    return ImportResult(len(entries), tuple(errors), len(situations))


def _insert_professionals(store: Store, entries: Sequence[ProfessionalEntry], *, action: str,
                          actor: str, clock: Clock) -> None:
    now = clock.now()
    with store.session() as session:
        session.execute(insert(Professional), [
            {"rpps": e.rpps, "profession_code": e.profession_code, "given_name": e.given_name,
             "surname": e.surname, "adeli": e.adeli, "civility": e.civility,
             "exercise_civility": e.exercise_civility, "created_at": now} for e in entries])
        for e in entries:
            optional = {k: v for k, v in (("adeli", e.adeli), ("civility", e.civility),
                                          ("exercise_civility", e.exercise_civility)) if v}
            audit.append(session, action, e.rpps,
                         {"profession": e.profession_code, "given_name": e.given_name,
                          "surname": e.surname, **optional},
                         actor=actor, clock=clock)


def insert_professionals_bulk(store: Store, entries: Sequence[ProfessionalEntry], *,
                              action: str, actor: str, clock: Clock = SYSTEM_CLOCK) -> None:
    """Bulk insertion for synthetic populations: one audit record per batch, not per row."""
    now = clock.now()
    for i in range(0, len(entries), 5000):
        part = entries[i:i + 5000]
        with store.session() as session:
            session.execute(insert(Professional), [
                {"rpps": e.rpps, "profession_code": e.profession_code,
                 "given_name": e.given_name, "surname": e.surname, "adeli": e.adeli,
                 "civility": e.civility, "exercise_civility": e.exercise_civility,
                 "created_at": now} for e in part])
            audit.append(session, action, f"{part[0].rpps}..{part[-1].rpps}",
                         {"count": len(part)}, actor=actor, clock=clock)


# --- single additions and lookups -------------------------------------------------------

def add_professional(store: Store, entry: ProfessionalEntry, *, actor: str = "cps-admin",
                     clock: Clock = SYSTEM_CLOCK) -> None:
    if existing_rpps(store, [entry.rpps]):
        raise Duplicate(f"professional with RPPS {entry.rpps} already exists")
    # The unique constraint still guards a concurrent addition (mapped to Duplicate).
    _insert_professionals(store, [entry], action="pro.add", actor=actor, clock=clock)


def get_professional(store: Store, rpps: str) -> ProfessionalEntry:
    rpps = ids.validate_rpps(rpps)
    with store.read() as session:
        row = session.execute(select(Professional).where(Professional.rpps == rpps)
                              ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no professional with RPPS {rpps}")
        return ProfessionalEntry(row.rpps, row.profession_code, row.given_name, row.surname,
                                 row.adeli, row.civility, row.exercise_civility)


def iter_professionals(store: Store, *, limit: int | None = None
                       ) -> Iterator[ProfessionalEntry]:
    with store.read() as session:
        query = select(Professional).order_by(Professional.id)
        if limit is not None:
            query = query.limit(limit)
        for row in session.execute(query.execution_options(yield_per=1000)).scalars():
            yield ProfessionalEntry(row.rpps, row.profession_code, row.given_name, row.surname,
                                    row.adeli, row.civility, row.exercise_civility)


def add_structure(store: Store, entry: StructureEntry, *, actor: str = "cps-admin",
                  clock: Clock = SYSTEM_CLOCK) -> None:
    with store.read() as session:
        exists = session.execute(select(Structure.id).where(
            Structure.structure_id == entry.structure_id)).first()
    if exists is not None:
        raise Duplicate(f"structure {entry.structure_id} already exists")
    with store.session() as session:
        session.add(Structure(structure_id=entry.structure_id, register=entry.register,
                              name=entry.name, state=entry.state, created_at=clock.now()))
        session.flush()
        audit.append(session, "structure.add", entry.structure_id,
                     {"register": entry.register, "name": entry.name, "state": entry.state},
                     actor=actor, clock=clock)


def iter_structures(store: Store) -> Iterator[StructureEntry]:
    with store.read() as session:
        for row in session.execute(select(Structure).order_by(Structure.id)).scalars():
            yield StructureEntry(row.structure_id, row.register, row.name, row.state)
