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
                              for an emergency call centre (SAMU/SAS: configured, or a
                              structure the directory's exercise situations flag, the token's
                              SubjectOrganizationID being one of the professional's own
                              situations); grants as ``emergency_centre`` (flagged, notified).
  4. ``profession_matrix``    the profession may read (or write) the document's category.
Authors (``set_visibility``): ``author`` grants, ``not_author`` refuses.

Patient actors (``read``, ``list``, ``history``, ``control``):
  ``patient_self`` grants on one's own record; acting on another record needs to be its
  ``legal_representative`` (refused ``not_representative``), and only while the patient is a
  minor (refused ``not_minor``). Documents: ``hidden_from_patient`` until the announced date,
  ``hidden_from_representatives`` when the document is withheld from the legal
  representatives (e.g. at a minor's request). Patients never ``write``: ``patient_cannot_write``.

The patient space's actions (messages, the patient's own documents and health data, shared
summaries) are data: ``cps_login/data/access_actions.json`` says, per action and kind of actor,
which modes are allowed (``mode_not_allowed``), which relationships grant (``care_team``,
``consent``, ``shared_summary`` for an active shared summary), which rule refuses otherwise
(``not_care_team``, ``no_care_relationship``, ``not_shared``), which matrix category the
profession must reach, or the rule that refuses outright (``professional_only``,
``patient_only``). ``patient_blocked`` and the hiding rules (``hidden_by_patient``,
``hidden_from_professional`` — a document hidden from one professional) come first, as above.
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
Action = str   # one of ACTIONS, or an action of access_actions.json
MODES: tuple[Mode, ...] = ("normal", "break_glass", "emergency")
ACTIONS: tuple[str, ...] = ("read", "list", "write", "set_visibility", "history", "control")

RULES = (
    "unknown_action", "patient_blocked", "hidden_by_patient", "author", "not_author",
    "reason_required", "emergency_opposed", "not_emergency_centre", "no_care_relationship",
    "care_team", "consent", "break_glass", "emergency_centre", "profession_matrix",
    "patient_self", "legal_representative", "not_representative", "not_minor",
    "hidden_from_patient", "hidden_from_representatives", "patient_cannot_write",
    "professional_only", "hidden_from_professional", "mode_not_allowed", "not_care_team",
    "shared_summary", "not_shared", "patient_only",
)
RELATIONSHIPS = {"care_team": "care_team", "consent": "consent", "shared": "shared_summary"}


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
    hidden_from: frozenset[str] = frozenset()  # national ids it is hidden from, one by one


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
    shares: Mapping[str, dt.datetime] = field(default_factory=dict)  # id -> end of the share


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


@dataclass(frozen=True)
class ActorRule:
    """How one kind of actor is decided for one patient-space action (access_actions.json)."""

    refuse: str | None = None
    allow: bool = False
    modes: frozenset[str] = frozenset()
    relationships: tuple[str, ...] = ()
    otherwise: str = "no_care_relationship"
    category: str | None = None
    write: bool = False

    @classmethod
    def from_json(cls, action: str, kind: str, raw: Mapping[str, object]) -> ActorRule:
        where = f"access actions: {action}.{kind}"
        unknown = set(raw) - {"refuse", "allow", "modes", "relationships", "otherwise",
                              "category", "write"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        refuse = raw.get("refuse")
        if refuse is not None and refuse not in RULES:
            raise ValueError(f"{where}: refuses with unknown rule {refuse!r}")
        modes = frozenset(str(m) for m in raw.get("modes", []))  # type: ignore[attr-defined]
        if modes - set(MODES):
            raise ValueError(f"{where}: unknown modes {sorted(modes - set(MODES))}")
        relationships = tuple(str(r) for r in raw.get("relationships", []))  # type: ignore[attr-defined]
        if set(relationships) - set(RELATIONSHIPS):
            raise ValueError(f"{where}: unknown relationships {relationships}")
        otherwise = str(raw.get("otherwise", "no_care_relationship"))
        if otherwise not in RULES:
            raise ValueError(f"{where}: otherwise names unknown rule {otherwise!r}")
        if kind == "professional" and refuse is None and not relationships:
            raise ValueError(f"{where}: needs 'refuse' or 'relationships'")
        category = raw.get("category")
        return cls(str(refuse) if refuse is not None else None, bool(raw.get("allow")), modes,
                   relationships, otherwise, str(category) if category else None,
                   bool(raw.get("write")))


@dataclass(frozen=True)
class SpaceActions:
    rules: Mapping[tuple[str, str], ActorRule]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(action for action, _ in self.rules)

    @classmethod
    def from_json(cls, raw: Mapping[str, object], matrix: Matrix | None = None) -> SpaceActions:
        actions = raw.get("actions")
        if not isinstance(actions, dict):
            raise ValueError("access actions need an 'actions' object")
        rules: dict[tuple[str, str], ActorRule] = {}
        for action, spec in actions.items():
            if action in ACTIONS:
                raise ValueError(f"access actions: {action!r} is a built-in action")
            for kind in ("professional", "patient"):
                if kind not in spec:
                    raise ValueError(f"access actions: {action} says nothing of {kind}s")
                rule = ActorRule.from_json(action, kind, spec[kind])
                if (matrix is not None and rule.category is not None
                        and rule.category not in matrix.categories):
                    raise ValueError(f"access actions: {action}.{kind} names category "
                                     f"{rule.category!r}, unknown to the matrix")
                rules[(action, kind)] = rule
        return cls(rules)


@functools.cache
def default_actions() -> SpaceActions:
    text = resources.files("cps_login.data").joinpath("access_actions.json").read_text("utf-8")
    return SpaceActions.from_json(json.loads(text), default_matrix())


def _refuse(rule: str, mode: Mode = "normal") -> Decision:
    return Decision(False, rule, mode)


def decide(request: AccessRequest, record: RecordState,
           matrix: Matrix | None = None, actions: SpaceActions | None = None) -> Decision:
    """The access decision for ``request`` on the record described by ``record``."""
    if request.mode not in MODES:
        return _refuse("unknown_action")
    if request.action not in ACTIONS:
        rule = (actions or default_actions()).rules.get((request.action, request.actor.kind))
        if rule is None:
            return _refuse("unknown_action")
        return _space(request, record, matrix or default_matrix(), rule)
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
    hidden = _hidden(actor, doc, mode)
    if hidden is not None:
        return hidden
    if mode == "normal":
        granting = _care_relationship(actor.id, record, req.at)
        if granting is None:
            return _refuse("no_care_relationship")
    else:
        emergency = _emergency(req, record)
        if not emergency.granted:
            return emergency
        granting = emergency.rule
    if doc is not None and not matrix.allows(actor.profession_code, doc.category,
                                             write=req.action == "write"):
        return _refuse("profession_matrix", mode)
    return Decision(True, granting, mode)


def _hidden(actor: Actor, doc: DocumentState | None, mode: Mode) -> Decision | None:
    if doc is not None and doc.author_id != actor.id:
        if doc.hidden_by_patient:
            return _refuse("hidden_by_patient", mode)
        if actor.id in doc.hidden_from:
            return _refuse("hidden_from_professional", mode)
    return None


def _emergency(req: AccessRequest, record: RecordState) -> Decision:
    mode = req.mode
    if not (req.reason or "").strip():
        return _refuse("reason_required", mode)
    if record.emergency_opposed:
        return _refuse("emergency_opposed", mode)
    if mode == "emergency" and req.actor.organisation_id not in record.emergency_centres:
        return _refuse("not_emergency_centre", mode)
    return Decision(True, "break_glass" if mode == "break_glass" else "emergency_centre", mode)


def _space(req: AccessRequest, record: RecordState, matrix: Matrix, rule: ActorRule) -> Decision:
    """A patient-space action, decided by its rule from access_actions.json."""
    if rule.refuse is not None:
        return _refuse(rule.refuse)
    if req.actor.kind == "patient":
        if req.mode != "normal":
            return _refuse("professional_only")
        if not rule.allow:
            return _refuse("professional_only")
        return _patient_reach(req.actor, record)
    actor, mode = req.actor, req.mode
    if actor.id in record.blocked:
        return _refuse("patient_blocked", mode)
    hidden = _hidden(actor, req.document, mode)
    if hidden is not None:
        return hidden
    if mode not in rule.modes:
        return _refuse("mode_not_allowed", mode)
    if mode == "normal":
        granting = next((RELATIONSHIPS[r] for r in rule.relationships
                         if _has_relationship(r, actor.id, record, req.at)), None)
        if granting is None:
            return _refuse(rule.otherwise)
    else:
        emergency = _emergency(req, record)
        if not emergency.granted:
            return emergency
        granting = emergency.rule
    if rule.category is not None and not matrix.allows(actor.profession_code, rule.category,
                                                       write=rule.write):
        return _refuse("profession_matrix", mode)
    return Decision(True, granting, mode)


def _has_relationship(name: str, actor_id: str, record: RecordState, at: dt.datetime) -> bool:
    if name == "care_team":
        return actor_id in record.care_team
    if name == "consent":
        if actor_id not in record.consents:
            return False
        expiry = record.consents[actor_id]
        return expiry is None or at < expiry
    if name == "shared":
        end = record.shares.get(actor_id)
        return end is not None and at < end
    return False


def _patient_reach(actor: Actor, record: RecordState) -> Decision:
    """A patient acts on their own record, or as the legal representative of a minor."""
    if actor.id == record.patient_id:
        return Decision(True, "patient_self")
    if actor.id in record.representatives:
        if not record.is_minor:
            return _refuse("not_minor")
        return Decision(True, "legal_representative")
    return _refuse("not_representative")


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
    reach = _patient_reach(actor, record)
    if not reach.granted:
        return reach
    granting = reach.rule
    if doc is not None:
        until = doc.hidden_from_patient_until
        if until is not None and req.at < until:
            return _refuse("hidden_from_patient")
        if granting == "legal_representative" and doc.hidden_from_representatives:
            return _refuse("hidden_from_representatives")
    return Decision(True, granting)
