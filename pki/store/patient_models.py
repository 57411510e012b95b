"""Tables of the login broker and the patient record (migrations 0004_patient_access, 0007,
0030_patient_space).

Professionals' practices (which structure they work for), patients, their legal
representatives, care teams, consents, blocks, documents with their visibility flags, and the
per-patient access history. No rules here: cps_login.access decides.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pki.store.models import Base, UtcDateTime


class ProfessionalActivity(Base):
    """A professional practising for a structure (gives the token's SubjectOrganizationID)."""

    __tablename__ = "professional_activity"
    __table_args__ = (UniqueConstraint("professional_id", "structure_id",
                                       name="uq_activity_pro_structure"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Patient(Base):
    __tablename__ = "patient"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ins: Mapped[str] = mapped_column(String(15), unique=True)
    given_name: Mapped[str] = mapped_column(String(128))
    surname: Mapped[str] = mapped_column(String(128))
    birth_date: Mapped[dt.date] = mapped_column(Date)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    # Clear base32 seeds from before migration 0007, sealed into totp_seed (and cleared) when
    # the patient role starts; new seeds are only ever written sealed.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_seed: Mapped[bytes | None] = mapped_column(LargeBinary)   # cps_login.totp.SeedBox
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)  # no code used twice
    activation_hash: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of the code
    activation_expires: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    emergency_opposed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class PatientSessionRevoked(Base):
    """A patient session ended before its expiry (sign-out); pruned once it would have expired."""

    __tablename__ = "patient_session_revoked"
    __table_args__ = (Index("ix_patient_session_revoked_expires", "expires_at"),)

    sid: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)   # unix seconds


class LegalRepresentative(Base):
    __tablename__ = "legal_representative"
    __table_args__ = (UniqueConstraint("child_id", "representative_id",
                                       name="uq_representative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    representative_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class CareTeamMember(Base):
    __tablename__ = "care_team"
    __table_args__ = (UniqueConstraint("patient_id", "professional_id", name="uq_care_team"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    added_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Consent(Base):
    __tablename__ = "consent"
    __table_args__ = (UniqueConstraint("patient_id", "professional_id", name="uq_consent"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    granted_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class PatientBlock(Base):
    __tablename__ = "patient_block"
    __table_args__ = (UniqueConstraint("patient_id", "professional_id", name="uq_block"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Document(Base):
    __tablename__ = "document"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    category: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(256))
    content: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    hidden_by_patient: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden_from_patient_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    hidden_from_representatives: Mapped[bool] = mapped_column(Boolean, default=False)


class AccessEvent(Base):
    """One access decision on one record, granted or refused: the patient's access history."""

    __tablename__ = "access_event"
    __table_args__ = (Index("ix_access_event_patient_at", "patient_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    actor_kind: Mapped[str] = mapped_column(String(16))      # professional | patient
    actor_id: Mapped[str] = mapped_column(String(32))        # 8+RPPS or INS
    actor_name: Mapped[str] = mapped_column(String(256))
    profession_code: Mapped[int | None] = mapped_column(Integer)
    organisation_id: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))          # 16 before 0030
    document_id: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))            # normal | break_glass | emergency
    granted: Mapped[bool] = mapped_column(Boolean)
    rule: Mapped[str] = mapped_column(String(48))
    reason: Mapped[str | None] = mapped_column(Text)         # the stated emergency
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    audit_seq: Mapped[int] = mapped_column(BigInteger)       # the link in the audit chain
    # what else was reached (0030): "upload:5", "health", "message:3", "share:2", "summary"
    subject: Mapped[str | None] = mapped_column(String(32))


# --- the patient space's own content (migration 0030_patient_space) ---------------------------
class DocumentHiddenFrom(Base):
    """A document (a professional's or the patient's own) hidden from one professional."""

    __tablename__ = "document_hidden_from"
    __table_args__ = (UniqueConstraint("kind", "document_id", "professional_id",
                                       name="uq_document_hidden_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))            # document | upload
    document_id: Mapped[int] = mapped_column(Integer)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class PatientUpload(Base):
    """A document the patient (or a legal representative) added: PDF or image, checked."""

    __tablename__ = "patient_upload"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    title: Mapped[str] = mapped_column(String(256))
    media_type: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    written_by: Mapped[str] = mapped_column(String(32))      # INS of the patient or representative
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    hidden_by_patient: Mapped[bool] = mapped_column(Boolean, default=False)


class HealthEntry(Base):
    """Structured data written by the patient: an allergy, a vaccination or a measure."""

    __tablename__ = "health_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))            # allergy | vaccination | measure
    name: Mapped[str] = mapped_column(String(128))           # substance, vaccine, measure code
    value: Mapped[float | None] = mapped_column(Float)
    value2: Mapped[float | None] = mapped_column(Float)       # diastolic pressure
    unit: Mapped[str | None] = mapped_column(String(16))
    on_date: Mapped[dt.date] = mapped_column(Date)
    note: Mapped[str | None] = mapped_column(String(512))
    written_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Conversation(Base):
    """A secure conversation, opened by a professional of the care team."""

    __tablename__ = "conversation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    subject: Mapped[bytes] = mapped_column(LargeBinary)      # sealed (cps_login.patient_space)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Message(Base):
    __tablename__ = "message"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    author_kind: Mapped[str] = mapped_column(String(16))     # professional | patient
    author_id: Mapped[str] = mapped_column(String(32))
    author_name: Mapped[str] = mapped_column(String(256))
    body: Mapped[bytes] = mapped_column(LargeBinary)         # sealed
    attachment_name: Mapped[str | None] = mapped_column(String(128))
    attachment_type: Mapped[str | None] = mapped_column(String(64))
    attachment_size: Mapped[int | None] = mapped_column(Integer)
    attachment: Mapped[bytes | None] = mapped_column(LargeBinary)   # sealed
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class ProfileShare(Base):
    """The patient's summary shared with one professional until ``expires_at`` (or revoked)."""

    __tablename__ = "profile_share"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
