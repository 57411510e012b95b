"""The patient record service: load a record's state, ask ``access.decide``, record the decision.

Every decision — granted or refused, with the rule that decided — is written in one transaction
to the hash-chained audit log and to the patient's access history (``access_event``); a refusal
is committed before ``NotAuthorised(rule)`` is raised. No Flask here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cps_login import access
from cps_login.access import (
    AccessRequest,
    Actor,
    Decision,
    DocumentState,
    Matrix,
    RecordState,
    SpaceActions,
)
from cps_login.patient_checks import today_in_france
from pki import audit, ids
from pki.clock import Clock
from pki.errors import Duplicate, InvalidInput, NotAuthorised, NotFound
from pki.situations import emergency_centre_ids
from pki.store.db import Store
from pki.store.models import Professional
from pki.store.patient_models import (
    AccessEvent,
    CareTeamMember,
    Consent,
    Document,
    DocumentHiddenFrom,
    LegalRepresentative,
    Patient,
    PatientBlock,
    PatientUpload,
    ProfileShare,
)

ACTIVATION_DAYS = 30
MAJORITY_YEARS = 18


@dataclass(frozen=True)
class ProfessionalContext:
    """Who calls, from a validated access token."""

    national_id: str
    profession_code: int | None
    organisation_id: str | None = None

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> ProfessionalContext:
        roles = claims.get("SubjectRole") or []
        code = int(roles[0]) if roles and str(roles[0]).isdigit() else None
        return cls(str(claims["SubjectNameID"]), code, claims.get("SubjectOrganizationID"))

    @property
    def actor(self) -> Actor:
        return Actor("professional", self.national_id, self.profession_code,
                     self.organisation_id)


@dataclass(frozen=True)
class Enrolment:
    ins: str
    activation_code: str


def _age_years(birth: dt.date, at: dt.date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def hidden_from(kind: str, doc_id: int, session: Session) -> frozenset[str]:
    """The national ids a document (``document`` or ``upload``) is hidden from, one by one."""
    rows = session.execute(select(Professional.rpps).join(
        DocumentHiddenFrom, DocumentHiddenFrom.professional_id == Professional.id)
        .where(DocumentHiddenFrom.kind == kind, DocumentHiddenFrom.document_id == doc_id))
    return frozenset("8" + r for r in rows.scalars())


def document_json(doc: Document, author: str, with_content: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": doc.id, "category": doc.category, "title": doc.title, "author": author,
        "created_at": doc.created_at.isoformat(), "hidden_by_patient": doc.hidden_by_patient,
        "hidden_from_patient_until": (doc.hidden_from_patient_until.isoformat()
                                      if doc.hidden_from_patient_until else None),
        "hidden_from_representatives": doc.hidden_from_representatives,
    }
    if with_content:
        out["content"] = doc.content
    return out


class PatientService:
    def __init__(self, store: Store, clock: Clock, *, matrix: Matrix | None = None,
                 emergency_centres: Sequence[str] = (),
                 actions: SpaceActions | None = None) -> None:
        self._store = store
        self._clock = clock
        self._matrix = matrix or access.default_matrix()
        self._actions = actions or access.default_actions()
        self._centres = frozenset(emergency_centres)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def store(self) -> Store:
        return self._store

    @property
    def matrix(self) -> Matrix:
        return self._matrix

    def patient(self, session: Session, ins: str) -> Patient:
        """The record of ``ins`` (NotFound if none; InvalidInput if not an INS)."""
        return self._patient(session, ins)

    def professional(self, session: Session, national_id: str) -> Professional:
        return self._professional(session, national_id)

    def actor_name(self, session: Session, actor: Actor) -> str:
        return self._actor_name(session, actor)

    # --- loading ------------------------------------------------------------------------
    @staticmethod
    def _patient(session: Session, ins: str) -> Patient:
        canonical = ids.validate_ins(ins)
        patient = session.execute(select(Patient).where(Patient.ins == canonical)
                                  ).scalar_one_or_none()
        if patient is None:
            raise NotFound(f"no patient record for INS {canonical}")
        return patient

    @staticmethod
    def _professional(session: Session, national_id: str) -> Professional:
        if len(national_id) != 12 or not national_id.startswith("8"):
            raise InvalidInput(f"professional must be a national id 8+RPPS, got {national_id!r}")
        pro = session.execute(select(Professional).where(Professional.rpps == national_id[1:])
                              ).scalar_one_or_none()
        if pro is None:
            raise NotFound(f"no professional {national_id}")
        return pro

    def _state(self, session: Session, patient: Patient, at: dt.datetime,
               actor: Actor | None = None) -> RecordState:
        def national_ids(model: Any) -> frozenset[str]:
            rows = session.execute(select(Professional.rpps).join(
                model, model.professional_id == Professional.id)
                .where(model.patient_id == patient.id)).scalars()
            return frozenset("8" + r for r in rows)

        consents = {"8" + rpps: exp for rpps, exp in session.execute(
            select(Professional.rpps, Consent.expires_at).join(
                Consent, Consent.professional_id == Professional.id)
            .where(Consent.patient_id == patient.id))}
        reps = frozenset(session.execute(select(Patient.ins).join(
            LegalRepresentative, LegalRepresentative.representative_id == Patient.id)
            .where(LegalRepresentative.child_id == patient.id)).scalars())
        shares: dict[str, dt.datetime] = {}
        for rpps, end in session.execute(
                select(Professional.rpps, ProfileShare.expires_at).join(
                    ProfileShare, ProfileShare.professional_id == Professional.id)
                .where(ProfileShare.patient_id == patient.id,
                       ProfileShare.revoked_at.is_(None), ProfileShare.expires_at > at)):
            shares["8" + rpps] = max(end, shares.get("8" + rpps, end))
        return RecordState(
            shares=shares,
            patient_id=patient.ins,
            is_minor=_age_years(patient.birth_date, at.date()) < MAJORITY_YEARS,
            care_team=national_ids(CareTeamMember), consents=consents,
            blocked=national_ids(PatientBlock), emergency_opposed=patient.emergency_opposed,
            representatives=reps,
            # configured centres, and the structures where the acting professional's own
            # exercise situation is flagged as emergency centre (a flag belongs to one
            # professional's situation, not to everyone working at that structure)
            emergency_centres=self._centres | _own_centres(session, actor))

    @staticmethod
    def _doc_state(session: Session, doc: Document) -> DocumentState:
        author = session.get(Professional, doc.author_id)
        assert author is not None
        return DocumentState(doc.id, doc.category, "8" + author.rpps, doc.hidden_by_patient,
                             doc.hidden_from_patient_until, doc.hidden_from_representatives,
                             hidden_from("document", doc.id, session))

    @staticmethod
    def _document(session: Session, patient: Patient, doc_id: int) -> Document:
        doc = session.get(Document, doc_id)
        if doc is None or doc.patient_id != patient.id:
            raise NotFound(f"no document {doc_id} in this record")
        return doc

    # --- the one decision path ----------------------------------------------------------
    def _decide(self, session: Session, patient: Patient, actor: Actor, action: str,
                doc: Document | None = None, mode: str = "normal",
                reason: str | None = None) -> Decision:
        doc_state = self._doc_state(session, doc) if doc is not None else None
        return self.decide_and_record(session, patient, actor, action, doc_state=doc_state,
                                      document_id=doc.id if doc is not None else None,
                                      mode=mode, reason=reason)

    def decide_and_record(self, session: Session, patient: Patient, actor: Actor, action: str,
                          *, doc_state: DocumentState | None = None,
                          document_id: int | None = None, mode: str = "normal",
                          reason: str | None = None, subject: str | None = None,
                          label: str | None = None) -> Decision:
        """The one decision path: ask the rules, then record the decision (audit chain and
        access history) in ``session``. ``subject`` names what else was reached
        (``upload:5``, ``message:3``, ...); ``label`` the action as the history shows it
        (``view``, ``download``) when it differs from the rule's action."""
        at = self._clock.now()
        state = self._state(session, patient, at, actor)
        request = AccessRequest(actor, action, at, doc_state, mode, reason)  # type: ignore[arg-type]
        decision = access.decide(request, state, self._matrix, self._actions)
        self._record(session, patient, actor, label or action, document_id, decision, reason,
                     at, subject)
        return decision

    def _record(self, session: Session, patient: Patient, actor: Actor, action: str,
                document_id: int | None, decision: Decision, reason: str | None,
                at: dt.datetime, subject: str | None = None) -> None:
        details: dict[str, Any] = {"patient": patient.ins, "action": action,
                                   "granted": decision.granted, "rule": decision.rule,
                                   "mode": decision.mode}
        if document_id is not None:
            details["document"] = document_id
        if subject is not None:
            details["subject"] = subject
        if reason:
            details["reason"] = reason[:500]
        if decision.flagged:
            details["flagged"] = True
        record = audit.append(session, "record.access" if decision.granted else "record.refused",
                              patient.ins, details, actor=actor.id, clock=self._clock)
        session.add(AccessEvent(
            patient_id=patient.id, at=at, actor_kind=actor.kind, actor_id=actor.id,
            actor_name=self._actor_name(session, actor), profession_code=actor.profession_code,
            organisation_id=actor.organisation_id, action=action,
            document_id=document_id, mode=decision.mode,
            granted=decision.granted, rule=decision.rule, reason=(reason or None),
            flagged=decision.flagged, audit_seq=record.seq, subject=subject))

    @staticmethod
    def _actor_name(session: Session, actor: Actor) -> str:
        if actor.kind == "professional" and len(actor.id) == 12:
            pro = session.execute(select(Professional).where(
                Professional.rpps == actor.id[1:])).scalar_one_or_none()
            if pro is not None:
                return f"{pro.given_name} {pro.surname}"
        elif actor.kind == "patient":
            pat = session.execute(select(Patient).where(Patient.ins == actor.id)
                                  ).scalar_one_or_none()
            if pat is not None:
                return f"{pat.given_name} {pat.surname}"
        return actor.id

    def _enforce(self, ins: str, actor: Actor, action: str, doc_id: int | None = None,
                 mode: str = "normal", reason: str | None = None) -> None:
        """Decide and record in its own transaction; raise NotAuthorised when refused."""
        with self._store.session() as session:
            patient = self._patient(session, ins)
            doc = self._document(session, patient, doc_id) if doc_id is not None else None
            decision = self._decide(session, patient, actor, action, doc, mode, reason)
        if not decision.granted:
            raise NotAuthorised(decision.rule)

    # --- professionals ------------------------------------------------------------------
    def enrol(self, pro: ProfessionalContext, ins: str, given_name: str, surname: str,
              birth_date: dt.date, representatives: Sequence[str] = ()) -> Enrolment:
        """Create a record (the enrolling professional joins the care team) and a one-time
        activation code the patient uses to set a password and a TOTP authenticator."""
        canonical = ids.validate_ins(ins)
        if not given_name.strip() or not surname.strip():
            raise InvalidInput("given_name and surname are required")
        now = self._clock.now()
        code = secrets.token_urlsafe(12)
        with self._store.session() as session:
            if session.execute(select(Patient.id).where(Patient.ins == canonical)).first():
                raise Duplicate(f"a record already exists for INS {canonical}")
            author = self._professional(session, pro.national_id)
            patient = Patient(ins=canonical, given_name=given_name.strip(),
                              surname=surname.strip(), birth_date=birth_date,
                              activation_hash=_hash_code(code),
                              activation_expires=now + dt.timedelta(days=ACTIVATION_DAYS),
                              emergency_opposed=False, totp_last_step=0, created_at=now)
            session.add(patient)
            session.flush()
            session.add(CareTeamMember(patient_id=patient.id, professional_id=author.id,
                                       added_by=pro.national_id, created_at=now))
            for rep_ins in representatives:
                rep = self._patient(session, rep_ins)
                session.add(LegalRepresentative(child_id=patient.id, representative_id=rep.id,
                                                created_at=now))
            audit.append(session, "patient.enrol", canonical,
                         {"representatives": list(representatives)}, actor=pro.national_id,
                         clock=self._clock)
        return Enrolment(canonical, code)

    def list_documents(self, pro: ProfessionalContext, ins: str, mode: str = "normal",
                       reason: str | None = None) -> list[dict[str, Any]]:
        actor = pro.actor
        with self._store.session() as session:
            patient = self._patient(session, ins)
            decision = self._decide(session, patient, actor, "list", None, mode, reason)
            visible: list[dict[str, Any]] = []
            if decision.granted:
                at = self._clock.now()
                state = self._state(session, patient, at, actor)
                for doc in self._documents(session, patient):
                    doc_state = self._doc_state(session, doc)
                    read = access.decide(AccessRequest(actor, "read", at, doc_state, decision.mode,
                                                       reason), state, self._matrix)
                    if read.granted:
                        visible.append(document_json(doc, doc_state.author_id, False))
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return visible

    def read_document(self, pro: ProfessionalContext, ins: str, doc_id: int,
                      mode: str = "normal", reason: str | None = None) -> dict[str, Any]:
        with self._store.session() as session:
            patient = self._patient(session, ins)
            doc = self._document(session, patient, doc_id)
            decision = self._decide(session, patient, pro.actor, "read", doc, mode, reason)
            out = document_json(doc, self._doc_state(session, doc).author_id, True)
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return {**out, "access_mode": decision.mode}

    def write_document(self, pro: ProfessionalContext, ins: str, category: str, title: str,
                       content: str, *, hidden_from_patient_until: dt.datetime | None = None,
                       hidden_from_representatives: bool = False, mode: str = "normal",
                       reason: str | None = None) -> int:
        if category not in self._matrix.categories:
            raise InvalidInput(f"unknown document category {category!r}; known: "
                               f"{', '.join(sorted(self._matrix.categories))}")
        if not title.strip():
            raise InvalidInput("title is required")
        now = self._clock.now()
        with self._store.session() as session:
            patient = self._patient(session, ins)
            author = self._professional(session, pro.national_id)
            doc = Document(patient_id=patient.id, category=category, title=title.strip(),
                           content=content, author_id=author.id, created_at=now,
                           hidden_by_patient=False,
                           hidden_from_patient_until=hidden_from_patient_until,
                           hidden_from_representatives=hidden_from_representatives)
            session.add(doc)
            session.flush()
            decision = self._decide(session, patient, pro.actor, "write", doc, mode, reason)
            doc_id = doc.id
            if not decision.granted:
                session.delete(doc)   # the refusal stays recorded; the document does not
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return doc_id

    def set_visibility(self, pro: ProfessionalContext, ins: str, doc_id: int, *,
                       hidden_from_patient_until: dt.datetime | None,
                       hidden_from_representatives: bool) -> None:
        self._enforce(ins, pro.actor, "set_visibility", doc_id)
        with self._store.session() as session:
            patient = self._patient(session, ins)
            doc = self._document(session, patient, doc_id)
            doc.hidden_from_patient_until = hidden_from_patient_until
            doc.hidden_from_representatives = hidden_from_representatives

    @staticmethod
    def _documents(session: Session, patient: Patient) -> list[Document]:
        return list(session.execute(select(Document).where(Document.patient_id == patient.id)
                                    .order_by(Document.id)).scalars())

    # --- patients (and legal representatives) -------------------------------------------
    def patient_documents(self, actor_ins: str, ins: str) -> list[dict[str, Any]]:
        actor = Actor("patient", actor_ins)
        with self._store.session() as session:
            patient = self._patient(session, ins)
            decision = self._decide(session, patient, actor, "list")
            visible = []
            if decision.granted:
                at = self._clock.now()
                state = self._state(session, patient, at, actor)
                for doc in self._documents(session, patient):
                    ds = self._doc_state(session, doc)
                    if access.decide(AccessRequest(actor, "read", at, ds), state).granted:
                        visible.append(document_json(doc, ds.author_id, True))
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return visible

    def history(self, actor_ins: str, ins: str, limit: int = 200) -> list[dict[str, Any]]:
        self._enforce(ins, Actor("patient", actor_ins), "history")
        with self._store.read() as session:
            patient = self._patient(session, ins)
            rows = session.execute(select(AccessEvent).where(AccessEvent.patient_id == patient.id)
                                   .order_by(AccessEvent.id.desc()).limit(limit)).scalars()
            return [{"at": e.at.isoformat(), "who": e.actor_name, "actor_id": e.actor_id,
                     "actor_kind": e.actor_kind,
                     "profession": (ids.professions()[e.profession_code].label_en
                                    if e.profession_code in ids.professions() else None),
                     "profession_code": e.profession_code, "organisation": e.organisation_id,
                     "action": e.action, "document": e.document_id, "mode": e.mode,
                     "granted": e.granted, "rule": e.rule, "reason": e.reason,
                     "flagged": e.flagged, "subject": e.subject} for e in rows]

    def patient_overview(self, actor_ins: str, ins: str, limit: int = 500) -> dict[str, Any]:
        """What the patient pages show, behind one recorded ``history`` decision: the access
        history, the documents the actor may see (their titles name the history's documents),
        the emergency opposition and the professionals blocked, consented or in the care team.
        """
        actor = Actor("patient", actor_ins)
        events = self.history(actor_ins, ins, limit)        # enforces and records "history"
        with self._store.read() as session:
            patient = self._patient(session, ins)
            at = self._clock.now()
            state = self._state(session, patient, at)
            documents = []
            for doc in self._documents(session, patient):
                ds = self._doc_state(session, doc)
                if access.decide(AccessRequest(actor, "read", at, ds), state).granted:
                    documents.append(document_json(doc, ds.author_id, False))

            def pros(model: Any) -> list[dict[str, Any]]:
                rows = session.execute(select(Professional).join(
                    model, model.professional_id == Professional.id)
                    .where(model.patient_id == patient.id).order_by(Professional.surname))
                return [{"national_id": "8" + p.rpps, "name": f"{p.given_name} {p.surname}",
                         "profession_code": p.profession_code} for p in rows.scalars()]

            uploads = {u.id: u.title for u in session.execute(select(PatientUpload).where(
                PatientUpload.patient_id == patient.id)).scalars()}
            return {"ins": patient.ins, "name": f"{patient.given_name} {patient.surname}",
                    "is_minor": state.is_minor, "events": events, "documents": documents,
                    "upload_titles": uploads,
                    "hidden_from": {d["id"]: sorted(hidden_from("document", d["id"], session))
                                    for d in documents},
                    "emergency_opposed": patient.emergency_opposed,
                    "blocked": pros(PatientBlock), "consents": pros(Consent),
                    "care_team": pros(CareTeamMember)}

    def profiles(self, actor_ins: str) -> list[dict[str, Any]]:
        """The records a signed-in patient may open: their own, then the minors they are a
        legal representative of (an adult child's record is the child's alone)."""
        with self._store.read() as session:
            me = self._patient(session, actor_ins)
            children = session.execute(select(Patient).join(
                LegalRepresentative, LegalRepresentative.child_id == Patient.id)
                .where(LegalRepresentative.representative_id == me.id)
                .order_by(Patient.birth_date)).scalars()
            today = today_in_france(self._clock.now())
            return [{"ins": p.ins, "name": f"{p.given_name} {p.surname}", "self": p is me}
                    for p in [me, *children]
                    if p is me or _age_years(p.birth_date, today) < MAJORITY_YEARS]

    def control(self, actor_ins: str, ins: str, change: str, target: str | None = None) -> None:
        """Patient controls: block/unblock a professional, hide/show a document,
        oppose/allow emergency access, grant/withdraw consent for a professional."""
        actor = Actor("patient", actor_ins)
        self._enforce(ins, actor, "control")
        now = self._clock.now()
        with self._store.session() as session:
            patient = self._patient(session, ins)
            if change in ("oppose_emergency", "allow_emergency"):
                patient.emergency_opposed = change == "oppose_emergency"
            elif change in ("hide_document", "show_document"):
                doc = self._document(session, patient, int(target or 0))
                doc.hidden_by_patient = change == "hide_document"
            elif change in ("block", "unblock", "consent", "withdraw_consent"):
                pro = self._professional(session, target or "")
                model: Any = PatientBlock if change in ("block", "unblock") else Consent
                session.execute(delete(model).where(model.patient_id == patient.id,
                                                    model.professional_id == pro.id))
                if change == "block":
                    session.add(PatientBlock(patient_id=patient.id, professional_id=pro.id,
                                             created_at=now))
                elif change == "consent":
                    session.add(Consent(patient_id=patient.id, professional_id=pro.id,
                                        granted_at=now, expires_at=None))
            else:
                raise InvalidInput(f"unknown control {change!r}")
            audit.append(session, f"patient.{change}", patient.ins, {"target": target},
                         actor=actor_ins, clock=self._clock)

    # --- activation (patient sets password and TOTP) ------------------------------------
    def check_activation(self, session: Session, ins: str, code: str) -> Patient | None:
        try:
            canonical = ids.validate_ins(ins)
        except InvalidInput:
            return None
        patient = session.execute(select(Patient).where(Patient.ins == canonical)
                                  ).scalar_one_or_none()
        if (patient is None or patient.activation_hash is None
                or patient.activation_expires is None
                or patient.activation_expires < self._clock.now()):
            return None
        if not hmac.compare_digest(patient.activation_hash, _hash_code(code)):
            return None
        return patient

    def add_representative(self, pro: ProfessionalContext, child_ins: str,
                           parent_ins: str) -> None:
        # The declaring professional must have (non-emergency) access to the child's record.
        self._enforce(child_ins, pro.actor, "list")
        with self._store.session() as session:
            child = self._patient(session, child_ins)
            parent = self._patient(session, parent_ins)
            session.add(LegalRepresentative(child_id=child.id, representative_id=parent.id,
                                            created_at=self._clock.now()))
            audit.append(session, "patient.representative", child.ins,
                         {"representative": parent.ins}, actor=pro.national_id,
                         clock=self._clock)


def _own_centres(session: Session, actor: Actor | None) -> frozenset[str]:
    """Structures where ``actor`` (a professional, ``8``+RPPS) works as an emergency centre."""
    if actor is None or actor.kind != "professional" or not actor.id.startswith("8"):
        return frozenset()
    return emergency_centre_ids(session, actor.id[1:])
