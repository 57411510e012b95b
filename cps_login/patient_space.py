"""The patient space's own content: secure messages, the patient's documents and health data,
shared summaries, documents hidden from one professional. No Flask here.

Every operation goes through ``PatientService.decide_and_record`` — the access rules of
``cps_login/data/access_actions.json`` — so each decision, granted or refused, is in the
record's access history and the audit chain with the rule that decided; a refusal is committed
before ``NotAuthorised(rule)`` is raised and nothing else is written. Bad input (an oversized or
disguised file, a measure outside its plausible range, an empty message) is refused by the
checks of ``cps_login.patient_checks`` before anything is stored.

Message subjects, bodies and attachments are sealed at rest (AES-256-GCM, ``MessageBox``) with
the key of ``LoginConfig.message_key_file``; the associated data binds each to its record and
conversation, so bytes moved to another row do not open.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cps_login.access import Actor, Decision, DocumentState
from cps_login.patient_checks import (
    CheckedFile,
    HealthInput,
    Refused,
    check_file,
    check_health,
    check_text,
    limits,
    today_in_france,
)
from cps_login.patients import PatientService, ProfessionalContext, hidden_from
from pki import audit
from pki.errors import NotAuthorised, NotFound, PkiError
from pki.store.patient_models import (
    Conversation,
    Document,
    DocumentHiddenFrom,
    HealthEntry,
    Message,
    Patient,
    PatientUpload,
    ProfileShare,
)

SHARE_DAYS_MAX = 365
_NONCE = 12
_AD = b"cps-message-v1:"


class MessageUnreadable(PkiError):
    code = "message_unreadable"
    http_status = 500


class MessageBox:
    """AES-256-GCM for messages at rest; ``where`` (record and conversation) is bound in."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the message key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, where: str, plain: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plain, _AD + where.encode())

    def open(self, where: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _AD + where.encode())
        except (InvalidTag, ValueError):
            raise MessageUnreadable("a message does not open with this key (is "
                                    "secrets/messages.key the one it was sealed with?)") from None


# --- the service ---------------------------------------------------------------------------
def _upload_state(up: PatientUpload, session: Session, ins: str) -> DocumentState:
    return DocumentState(up.id, "patient_document", ins, up.hidden_by_patient,
                         hidden_from=hidden_from("upload", up.id, session))


def upload_json(up: PatientUpload) -> dict[str, Any]:
    return {"id": up.id, "title": up.title, "filename": up.filename,
            "media_type": up.media_type, "size": up.size, "sha256": up.sha256,
            "written_by_patient": True, "written_by": up.written_by,
            "created_at": up.created_at.isoformat(), "hidden_by_patient": up.hidden_by_patient}


def health_json(e: HealthEntry) -> dict[str, Any]:
    return {"id": e.id, "kind": e.kind, "name": e.name, "value": e.value, "value2": e.value2,
            "unit": e.unit, "date": e.on_date.isoformat(), "note": e.note,
            "written_by_patient": True, "written_by": e.written_by,
            "created_at": e.created_at.isoformat()}


class PatientSpace:
    def __init__(self, records: PatientService, box: MessageBox) -> None:
        self._records = records
        self._store = records.store
        self._clock = records.clock
        self._box = box

    # --- the decision, committed before a refusal is raised ------------------------------
    def _allowed(self, ins: str, actor: Actor, action: str, **kw: Any) -> None:
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            decision = self._records.decide_and_record(session, patient, actor, action, **kw)
        if not decision.granted:
            raise NotAuthorised(decision.rule)

    def _decide(self, session: Session, patient: Patient, actor: Actor, action: str,
                **kw: Any) -> Decision:
        return self._records.decide_and_record(session, patient, actor, action, **kw)

    # --- the patient's documents ---------------------------------------------------------
    def upload(self, actor_ins: str, ins: str, title: str, filename: str, data: bytes) -> int:
        title = check_text(title, "title", 200)
        checked = check_file(filename, data, int(limits()["upload_max_bytes"]))
        actor = Actor("patient", actor_ins)
        self._allowed(ins, actor, "contribute", subject="upload")
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            count, total = session.execute(
                select(func.count(), func.coalesce(func.sum(PatientUpload.size), 0))
                .where(PatientUpload.patient_id == patient.id)).one()
            if (count >= int(limits()["uploads_max_per_record"])
                    or total + len(data) > int(limits()["uploads_max_total_bytes"])):
                raise Refused("upload_quota", count=count,
                              mb=int(limits()["uploads_max_total_bytes"]) // (1024 * 1024))
            up = PatientUpload(patient_id=patient.id, title=title, media_type=checked.media_type,
                               filename=checked.filename, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), content=data,
                               written_by=actor_ins, created_at=self._clock.now(),
                               hidden_by_patient=False)
            session.add(up)
            session.flush()
            audit.append(session, "patient.upload", patient.ins,
                         {"upload": up.id, "media_type": up.media_type, "size": up.size,
                          "sha256": up.sha256}, actor=actor_ins, clock=self._clock)
            return up.id

    def uploads(self, actor: Actor, ins: str, mode: str = "normal",
                reason: str | None = None) -> list[dict[str, Any]]:
        """The patient's documents ``actor`` may see (one recorded ``list_uploads`` decision;
        each document also passes its own hiding rules)."""
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            decision = self._decide(session, patient, actor, "list_uploads", mode=mode,
                                    reason=reason, subject="uploads")
            out = []
            if decision.granted:
                ups = session.execute(select(PatientUpload).where(
                    PatientUpload.patient_id == patient.id).order_by(PatientUpload.id)).scalars()
                for up in ups:
                    state = _upload_state(up, session, patient.ins)
                    if actor.kind == "patient" or not (
                            state.hidden_by_patient or actor.id in state.hidden_from):
                        out.append({**upload_json(up),
                                    "hidden_from": sorted(state.hidden_from)})
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return out

    def read_upload(self, actor: Actor, ins: str, upload_id: int, *, download: bool = False,
                    mode: str = "normal", reason: str | None = None
                    ) -> tuple[dict[str, Any], bytes]:
        """A document's metadata and bytes; the view or download is in the history."""
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            up = session.get(PatientUpload, upload_id)
            if up is None or up.patient_id != patient.id:
                raise NotFound(f"no document {upload_id} of the patient in this record")
            decision = self._decide(session, patient, actor, "read_upload",
                                    doc_state=_upload_state(up, session, patient.ins),
                                    mode=mode, reason=reason, subject=f"upload:{up.id}",
                                    label="download" if download else "view")
            meta, data = upload_json(up), bytes(up.content)
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return {**meta, "access_mode": decision.mode}, data

    def read_document(self, actor_ins: str, ins: str, doc_id: int, *, download: bool = False
                      ) -> dict[str, Any]:
        """A professional's document, read by the patient in the page (view or download in
        the history); the document's own rules apply (hidden until announced, ...)."""
        actor = Actor("patient", actor_ins)
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            doc = session.get(Document, doc_id)
            if doc is None or doc.patient_id != patient.id:
                raise NotFound(f"no document {doc_id} in this record")
            state = self._records._doc_state(session, doc)
            decision = self._decide(session, patient, actor, "read", doc_state=state,
                                    document_id=doc.id,
                                    label="download" if download else "view")
            out = {"id": doc.id, "title": doc.title, "category": doc.category,
                   "content": doc.content, "created_at": doc.created_at.isoformat(),
                   "author": self._records.actor_name(
                       session, Actor("professional", state.author_id))}
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return out

    # --- health data ---------------------------------------------------------------------
    def add_health(self, actor_ins: str, ins: str, entry: HealthInput) -> int:
        value, value2, unit = check_health(entry, today_in_france(self._clock.now()))
        actor = Actor("patient", actor_ins)
        self._allowed(ins, actor, "contribute", subject="health")
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            row = HealthEntry(patient_id=patient.id, kind=entry.kind, name=entry.name.strip(),
                              value=value, value2=value2, unit=unit, on_date=entry.on_date,
                              note=entry.note.strip() or None, written_by=actor_ins,
                              created_at=self._clock.now())
            session.add(row)
            session.flush()
            audit.append(session, "patient.health", patient.ins,
                         {"entry": row.id, "kind": row.kind, "name": row.name},
                         actor=actor_ins, clock=self._clock)
            return row.id

    def health(self, actor: Actor, ins: str, mode: str = "normal",
               reason: str | None = None) -> list[dict[str, Any]]:
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            decision = self._decide(session, patient, actor, "read_health", mode=mode,
                                    reason=reason, subject="health")
            rows = [] if not decision.granted else [health_json(e) for e in session.execute(
                select(HealthEntry).where(HealthEntry.patient_id == patient.id)
                .order_by(HealthEntry.on_date.desc(), HealthEntry.id.desc())).scalars()]
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return rows

    # --- messages ------------------------------------------------------------------------
    def _where(self, ins: str, conversation_id: int) -> str:
        return f"{ins}:{conversation_id}"

    def _attachment(self, attachment: tuple[str, bytes] | None) -> CheckedFile | None:
        if attachment is None:
            return None
        return check_file(attachment[0], attachment[1], int(limits()["attachment_max_bytes"]))

    def open_conversation(self, pro: ProfessionalContext, ins: str, subject: str, body: str,
                          attachment: tuple[str, bytes] | None = None) -> int:
        """Only a professional of the care team opens a conversation (``open_conversation``)."""
        subject = check_text(subject, "subject", 200)
        body = check_text(body, "message", int(limits()["message_max_chars"]))
        checked = self._attachment(attachment)
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            decision = self._decide(session, patient, pro.actor, "open_conversation",
                                    subject="conversation")
            if decision.granted:
                author = self._records.professional(session, pro.national_id)
                conv = Conversation(patient_id=patient.id, professional_id=author.id,
                                    subject=b"", created_at=self._clock.now())
                session.add(conv)
                session.flush()
                conv.subject = self._box.seal(self._where(patient.ins, conv.id) + ":subject",
                                              subject.encode())
                self._add_message(session, patient, conv, pro.actor, body, checked)
                conv_id = conv.id
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return conv_id

    def send(self, actor: Actor, ins: str, conversation_id: int, body: str,
             attachment: tuple[str, bytes] | None = None) -> int:
        """A reply in an existing conversation: the patient (or a legal representative of a
        minor), or a professional of the care team (``send_message``)."""
        body = check_text(body, "message", int(limits()["message_max_chars"]))
        checked = self._attachment(attachment)
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            conv = session.get(Conversation, conversation_id)
            if conv is None or conv.patient_id != patient.id:
                raise NotFound(f"no conversation {conversation_id} in this record")
            decision = self._decide(session, patient, actor, "send_message",
                                    subject=f"conversation:{conv.id}")
            msg_id = (self._add_message(session, patient, conv, actor, body, checked)
                      if decision.granted else 0)
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return msg_id

    def _add_message(self, session: Session, patient: Patient, conv: Conversation,
                     actor: Actor, body: str, checked: CheckedFile | None) -> int:
        where = self._where(patient.ins, conv.id)
        msg = Message(conversation_id=conv.id, author_kind=actor.kind, author_id=actor.id,
                      author_name=self._records.actor_name(session, actor),
                      body=self._box.seal(where + ":body", body.encode()),
                      created_at=self._clock.now())
        if checked is not None:
            msg.attachment_name = checked.filename
            msg.attachment_type = checked.media_type
            msg.attachment_size = len(checked.data)
            msg.attachment = self._box.seal(where + ":attachment", checked.data)
        session.add(msg)
        session.flush()
        audit.append(session, "message.sent", patient.ins,
                     {"conversation": conv.id, "message": msg.id,
                      "attachment": checked is not None}, actor=actor.id, clock=self._clock)
        return msg.id

    def conversations(self, actor: Actor, ins: str) -> list[dict[str, Any]]:
        """Every conversation of the record with its messages, opened; one recorded
        ``read_messages`` decision per conversation read (a refusal: one, then raised)."""
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            convs = list(session.execute(select(Conversation).where(
                Conversation.patient_id == patient.id).order_by(Conversation.id.desc())
            ).scalars())
            if not convs:
                decision = self._decide(session, patient, actor, "read_messages",
                                        subject="conversations")
            out = []
            for conv in convs:
                decision = self._decide(session, patient, actor, "read_messages",
                                        subject=f"conversation:{conv.id}")
                if not decision.granted:
                    break
                out.append(self._conversation_json(session, patient, conv))
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return out

    def _conversation_json(self, session: Session, patient: Patient,
                           conv: Conversation) -> dict[str, Any]:
        where = self._where(patient.ins, conv.id)
        pro = self._records.actor_name(session, Actor(
            "professional", "8" + self._rpps(session, conv.professional_id)))
        messages = session.execute(select(Message).where(Message.conversation_id == conv.id)
                                   .order_by(Message.id)).scalars()
        return {"id": conv.id, "subject": self._box.open(where + ":subject", conv.subject)
                .decode(), "professional": pro, "created_at": conv.created_at.isoformat(),
                "messages": [{"id": m.id, "author_kind": m.author_kind,
                              "author_id": m.author_id, "author": m.author_name,
                              "body": self._box.open(where + ":body", m.body).decode(),
                              "attachment": ({"name": m.attachment_name,
                                              "media_type": m.attachment_type,
                                              "size": m.attachment_size}
                                             if m.attachment is not None else None),
                              "at": m.created_at.isoformat()} for m in messages]}

    @staticmethod
    def _rpps(session: Session, professional_id: int) -> str:
        from pki.store.models import Professional

        pro = session.get(Professional, professional_id)
        return pro.rpps if pro is not None else "00000000000"

    def attachment(self, actor: Actor, ins: str, message_id: int
                   ) -> tuple[str, str, bytes]:
        """(name, media type, bytes) of a message's attachment; the download is recorded."""
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            msg = session.get(Message, message_id)
            conv = session.get(Conversation, msg.conversation_id) if msg is not None else None
            if (msg is None or conv is None or conv.patient_id != patient.id
                    or msg.attachment is None):
                raise NotFound(f"no attachment {message_id} in this record")
            decision = self._decide(session, patient, actor, "read_messages",
                                    subject=f"message:{msg.id}", label="download")
            out = ("", "", b"")
            if decision.granted:
                data = self._box.open(self._where(patient.ins, conv.id) + ":attachment",
                                      msg.attachment)
                out = (msg.attachment_name or "attachment", msg.attachment_type or "", data)
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return out

    # --- shared summaries ----------------------------------------------------------------
    def share(self, actor_ins: str, ins: str, national_id: str, days: int) -> int:
        if not 1 <= days <= SHARE_DAYS_MAX:
            raise Refused("share_days", max=SHARE_DAYS_MAX, days=days)
        actor = Actor("patient", actor_ins)
        with self._store.session() as session:
            pro = self._records.professional(session, national_id.strip())
            pro_id = pro.id
        self._allowed(ins, actor, "share", subject="share")
        now = self._clock.now()
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            share = ProfileShare(patient_id=patient.id, professional_id=pro_id,
                                 created_by=actor_ins, created_at=now,
                                 expires_at=now + dt.timedelta(days=days), revoked_at=None)
            session.add(share)
            session.flush()
            audit.append(session, "patient.share", patient.ins,
                         {"share": share.id, "professional": national_id, "days": days},
                         actor=actor_ins, clock=self._clock)
            return share.id

    def revoke_share(self, actor_ins: str, ins: str, share_id: int) -> None:
        actor = Actor("patient", actor_ins)
        self._allowed(ins, actor, "share", subject=f"share:{share_id}")
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            share = session.get(ProfileShare, share_id)
            if share is None or share.patient_id != patient.id:
                raise NotFound(f"no share {share_id} in this record")
            if share.revoked_at is None:
                share.revoked_at = self._clock.now()
            audit.append(session, "patient.share_revoked", patient.ins, {"share": share_id},
                         actor=actor_ins, clock=self._clock)

    def shares(self, actor_ins: str, ins: str) -> list[dict[str, Any]]:
        from pki.store.models import Professional

        self._allowed(ins, Actor("patient", actor_ins), "share", subject="shares")
        now = self._clock.now()
        with self._store.read() as session:
            patient = self._records.patient(session, ins)
            rows = session.execute(select(ProfileShare, Professional).join(
                Professional, Professional.id == ProfileShare.professional_id)
                .where(ProfileShare.patient_id == patient.id)
                .order_by(ProfileShare.id.desc())).all()
            return [{"id": s.id, "professional": "8" + p.rpps,
                     "name": f"{p.given_name} {p.surname}", "profession_code": p.profession_code,
                     "created_at": s.created_at.isoformat(),
                     "expires_at": s.expires_at.isoformat(),
                     "revoked_at": s.revoked_at.isoformat() if s.revoked_at else None,
                     "active": s.revoked_at is None and s.expires_at > now}
                    for s, p in rows]

    def summary(self, pro: ProfessionalContext, ins: str) -> dict[str, Any]:
        """The shared summary: identity, allergies, vaccinations, latest measures and the
        titles of the patient's documents; each use is a recorded ``read_summary``."""
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            decision = self._decide(session, patient, pro.actor, "read_summary",
                                    subject="summary")
            out: dict[str, Any] = {}
            if decision.granted:
                entries = [health_json(e) for e in session.execute(
                    select(HealthEntry).where(HealthEntry.patient_id == patient.id)
                    .order_by(HealthEntry.on_date.desc())).scalars()]
                latest: dict[str, dict[str, Any]] = {}
                for e in entries:
                    if e["kind"] == "measure":
                        latest.setdefault(e["name"], e)
                out = {"ins": patient.ins, "name": f"{patient.given_name} {patient.surname}",
                       "birth_date": patient.birth_date.isoformat(),
                       "allergies": [e for e in entries if e["kind"] == "allergy"],
                       "vaccinations": [e for e in entries if e["kind"] == "vaccination"],
                       "measures": list(latest.values()),
                       "documents": [{"id": u.id, "title": u.title} for u in session.execute(
                           select(PatientUpload).where(
                               PatientUpload.patient_id == patient.id,
                               PatientUpload.hidden_by_patient.is_(False))).scalars()
                           if pro.national_id not in hidden_from("upload", u.id, session)],
                       "written_by_patient": True}
        if not decision.granted:
            raise NotAuthorised(decision.rule)
        return out

    # --- who sees what -------------------------------------------------------------------
    def hide_from(self, actor_ins: str, ins: str, kind: str, doc_id: int, national_id: str,
                  hide: bool) -> None:
        """Hide a document (``document`` of a professional or ``upload`` of the patient) from
        one professional, or show it to them again; audited."""
        if kind not in ("document", "upload"):
            raise Refused("document_kind")
        actor = Actor("patient", actor_ins)
        self._allowed(ins, actor, "control")
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            model: Any = Document if kind == "document" else PatientUpload
            doc = session.get(model, doc_id)
            if doc is None or doc.patient_id != patient.id:
                raise NotFound(f"no {kind} {doc_id} in this record")
            pro = self._records.professional(session, national_id.strip())
            existing = session.execute(select(DocumentHiddenFrom).where(
                DocumentHiddenFrom.kind == kind, DocumentHiddenFrom.document_id == doc_id,
                DocumentHiddenFrom.professional_id == pro.id)).scalar_one_or_none()
            if hide and existing is None:
                session.add(DocumentHiddenFrom(patient_id=patient.id, kind=kind,
                                               document_id=doc_id, professional_id=pro.id,
                                               created_at=self._clock.now()))
            elif not hide and existing is not None:
                session.delete(existing)
            audit.append(session, "patient.hide_from" if hide else "patient.show_to",
                         patient.ins, {"kind": kind, "document": doc_id,
                                       "professional": national_id}, actor=actor_ins,
                         clock=self._clock)

    def set_upload_hidden(self, actor_ins: str, ins: str, upload_id: int, hidden: bool) -> None:
        actor = Actor("patient", actor_ins)
        self._allowed(ins, actor, "control")
        with self._store.session() as session:
            patient = self._records.patient(session, ins)
            up = session.get(PatientUpload, upload_id)
            if up is None or up.patient_id != patient.id:
                raise NotFound(f"no document {upload_id} of the patient in this record")
            up.hidden_by_patient = hidden
            audit.append(session, "patient.hide_upload" if hidden else "patient.show_upload",
                         patient.ins, {"upload": upload_id}, actor=actor_ins, clock=self._clock)
