"""Tables of the store. No business rules here: the CA, CRL and OCSP packages own those."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way in and out, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class CertificateAuthority(Base):
    __tablename__ = "ca"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(256))            # the CN
    range: Mapped[str] = mapped_column(String(32))            # ELEMENTAIRE | STANDARD | FORT
    role: Mapped[str] = mapped_column(String(32))             # ROOT | PERSONNES | ORGANISATIONS
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ca.id"))
    key_label: Mapped[str] = mapped_column(String(128))       # label of the key in the HSM
    key_type: Mapped[str] = mapped_column(String(16))
    cert_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # Last CRL number used by this CA (all of its CRLs share one increasing sequence).
    crl_number: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Professional(Base):
    __tablename__ = "professional"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rpps: Mapped[str] = mapped_column(String(11), unique=True)
    profession_code: Mapped[int] = mapped_column(Integer)
    given_name: Mapped[str] = mapped_column(String(128))
    surname: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    adeli: Mapped[str | None] = mapped_column(String(9), nullable=True)   # migration 0041
    # migration 0051: "Code civilité" (M, MME...) and "Code civilité d'exercice" (DR, PR...)
    civility: Mapped[str | None] = mapped_column(String(8), nullable=True)
    exercise_civility: Mapped[str | None] = mapped_column(String(8), nullable=True)


class Structure(Base):
    __tablename__ = "structure"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_id: Mapped[str] = mapped_column(String(16), unique=True)  # prefix + number
    register: Mapped[str] = mapped_column(String(16))                   # FINESS | SIREN | ...
    name: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(128))                     # ST (département/région)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Card(Base):
    __tablename__ = "card"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_number: Mapped[str] = mapped_column(String(32), unique=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"))
    backend: Mapped[str] = mapped_column(String(16))        # pcsc | pkcs11
    location: Mapped[str] = mapped_column(String(256))      # reader name or token label
    status: Mapped[str] = mapped_column(String(16))         # active | blocked | revoked
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # The chip as personalisation saw it: ATR hex (PC/SC) or "manufacturer / model" (PKCS#11
    # token); NULL for cards personalised before it was recorded (migration 0050).
    model: Mapped[str | None] = mapped_column(String(128), index=True)


class Certificate(Base):
    __tablename__ = "certificate"
    __table_args__ = (
        Index("ix_certificate_ca_status", "ca_id", "status"),
        Index("ix_certificate_professional", "professional_id"),
        Index("ix_certificate_renewed_from", "renewed_from_id"),
        Index("ix_certificate_card", "card_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Upper-case hex of the serial, as `openssl x509 -serial` prints it: unique across the store.
    serial: Mapped[str] = mapped_column(String(42), unique=True)
    ca_id: Mapped[int] = mapped_column(ForeignKey("ca.id"))
    profile: Mapped[str] = mapped_column(String(32))        # auth | sign | org | ocsp | ...
    subject: Mapped[str] = mapped_column(Text)              # RFC 4514 string
    professional_id: Mapped[int | None] = mapped_column(ForeignKey("professional.id"))
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structure.id"))
    card_id: Mapped[int | None] = mapped_column(ForeignKey("card.id"))
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))         # active | hold | revoked
    reason: Mapped[str | None] = mapped_column(String(32))  # RFC 5280 reason name
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    invalidity_date: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    shard: Mapped[int] = mapped_column(Integer, default=0)  # CRL partition
    renewed_from_id: Mapped[int | None] = mapped_column(ForeignKey("certificate.id"))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    status_changed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)


class StatusEvent(Base):
    """Append-only log of status changes: what delta CRLs and OCSP refreshes are built from."""

    __tablename__ = "status_event"
    __table_args__ = (Index("ix_status_event_ca_at", "ca_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificate.id"))
    ca_id: Mapped[int] = mapped_column(ForeignKey("ca.id"))
    event: Mapped[str] = mapped_column(String(16))          # revoke | hold | release | issue
    reason: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Crl(Base):
    __tablename__ = "crl"
    __table_args__ = (
        UniqueConstraint("ca_id", "number", name="uq_crl_ca_number"),
        Index("ix_crl_lookup", "ca_id", "kind", "shard", "number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ca_id: Mapped[int] = mapped_column(ForeignKey("ca.id"))
    number: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))            # full | delta
    shard: Mapped[int | None] = mapped_column(Integer)      # None: the unpartitioned CRL
    base_number: Mapped[int | None] = mapped_column(BigInteger)  # delta: its base full CRL
    this_update: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRecord(Base):
    """One link of the tamper-evident audit chain (see pki.audit)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256), index=True)
    details: Mapped[str] = mapped_column(Text)              # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Single row holding the chain's tip; locked by every append so links never fork."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class OcspRecord(Base):
    """A pre-signed OCSP record (pki.ocsp.records: header + signature), written by the signer
    role, read by the status replicas. One row per certificate and responder certificate: a
    renewal writes the new responder's set beside the old one, which keeps serving until the
    ``ocsp_responder`` row switches (the signer then deletes the old set).

    ``seq`` grows with every write (the signer is the only writer and commits in ``seq`` order),
    so a replica catches up with ``seq > last_seen``."""

    __tablename__ = "ocsp_record"
    # SQLite: clustered by the primary key, so a CA's set is one range scan and the key is
    # stored once (2M rows).
    __table_args__ = (Index("ix_ocsp_record_seq", "seq"), {"sqlite_with_rowid": False})

    ca_id: Mapped[int] = mapped_column(ForeignKey("ca.id"), primary_key=True)
    responder_serial: Mapped[str] = mapped_column(String(42), primary_key=True)
    serial: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)  # INTEGER content
    record: Mapped[bytes] = mapped_column(LargeBinary)
    seq: Mapped[int] = mapped_column(BigInteger)


class OcspResponder(Base):
    """The responder certificate a CA's served records are signed with (one row per issuing CA).

    Written by the signer once the responder's whole record set is in ``ocsp_record`` (not when
    the certificate is issued: that is a ``certificate`` row of profile ``ocsp`` long before the
    set is complete), so a replica switching to it finds every record signed."""

    __tablename__ = "ocsp_responder"

    ca_id: Mapped[int] = mapped_column(ForeignKey("ca.id"), primary_key=True)
    responder_serial: Mapped[str] = mapped_column(String(42))
    der: Mapped[bytes] = mapped_column(LargeBinary)            # the responder certificate
    algorithm: Mapped[bytes] = mapped_column(LargeBinary)      # signatureAlgorithm DER
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    seq: Mapped[int] = mapped_column(BigInteger)               # ocsp_record seq at the switch
