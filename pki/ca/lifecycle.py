"""The certificate state machine: hold, release, revoke, renew — and nothing impossible.

    active ──hold──► hold ──release──► active
      │                │
      └──revoke──► revoked ◄──revoke──┘      (revoked is final)

Each change is one transaction: the row (locked), a ``status_event`` for the publishers, and an
audit link. Listeners registered on the Authority (OCSP, CRL) hear of it after the commit.

Many certificates at once (an incident: ``change_many``) go through the same transition rules,
one transaction per batch — the rows, one ``status_event`` per certificate and ONE audit record
naming the selection and the SHA-256 of the batch's serial list — and the listeners hear of each
batch after its commit. A certificate already in the wanted state is skipped, so a run killed
half-way and started again finishes the job without a second event or audit record for what
was done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from sqlalchemy import String, insert, literal, select, update
from sqlalchemy.orm import Session

from pki import audit
from pki.ca.authority import Authority, IssuedCertificate, IssueRequest, parse_serial
from pki.ca.profiles import KeyStorage, key_storage_of
from pki.errors import InvalidInput, InvalidTransition, NotFound
from pki.store.models import Certificate, Professional, StatusEvent, Structure

# RFC 5280 §5.3.1 CRLReason names (removeFromCRL only ever appears in delta CRLs).
REASONS = ("unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
           "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise")
REASON_CODES = {"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
                "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6,
                "removeFromCRL": 8, "privilegeWithdrawn": 9, "aACompromise": 10}
# Certificates changed per transaction (and per audit record) by ``change_many``.
BATCH = 5000
SQLITE_YIELD = 0.1      # seconds between two batches on SQLite: the other writers' turn

StatusListener = Callable[[list[str]], object]
_STATUS_EVENT = StatusEvent.metadata.tables[StatusEvent.__tablename__]
_CERTIFICATE = Certificate.metadata.tables[Certificate.__tablename__]


def add_listener(auth: Authority, listener: StatusListener) -> None:
    """Call ``listener(serials)`` after every committed status change made through ``auth``."""
    auth.status_listeners.append(listener)


def _notify(auth: Authority, serials: list[str]) -> None:
    for listener in list(auth.status_listeners):
        listener(serials)


def parse_reason(name: str) -> str:
    for reason in REASONS:
        if reason.lower() == name.strip().lower():
            return reason
    raise InvalidInput(f"unknown revocation reason {name!r}; expected one of {', '.join(REASONS)}")


@dataclass(frozen=True)
class StatusChange:
    serial: str
    status: str
    reason: str | None
    at: dt.datetime


def revoke(auth: Authority, serial: str, reason: str = "unspecified",
           invalidity_date: dt.datetime | None = None, *, actor: str = "cps-admin"
           ) -> StatusChange:
    reason = parse_reason(reason)
    if reason == "certificateHold":
        return hold(auth, serial, actor=actor)
    if invalidity_date is not None and invalidity_date.tzinfo is None:
        raise InvalidInput("invalidity date needs a timezone (use UTC)")
    return _change(auth, serial, "revoke", reason, invalidity_date, actor)


def hold(auth: Authority, serial: str, *, actor: str = "cps-admin") -> StatusChange:
    return _change(auth, serial, "hold", "certificateHold", None, actor)


def release(auth: Authority, serial: str, *, actor: str = "cps-admin") -> StatusChange:
    return _change(auth, serial, "release", None, None, actor)


def _change(auth: Authority, serial: str, event: str, reason: str | None,
            invalidity_date: dt.datetime | None, actor: str) -> StatusChange:
    with auth.store.session() as session:
        change = change_in(session, auth, serial, event, reason, invalidity_date, actor)
    _notify(auth, [change.serial])
    return change


def change_in(session: Session, auth: Authority, serial: str, event: str, reason: str | None,
              invalidity_date: dt.datetime | None = None, actor: str = "cps-admin"
              ) -> StatusChange:
    """One status change inside the caller's transaction (a card's certificates change with
    the card row); the caller calls :func:`notify_changed` after its commit."""
    canonical = parse_serial(serial)
    now = auth.clock.now()
    cert = session.execute(select(Certificate).where(Certificate.serial == canonical)
                           .with_for_update()).scalar_one_or_none()
    if cert is None:
        raise NotFound(f"no certificate with serial {canonical}")
    _check_transition(cert, event, now)
    if invalidity_date is not None and invalidity_date > now:
        raise InvalidInput("invalidity date is in the future")
    if event == "release":
        cert.status, cert.reason, cert.revoked_at, cert.invalidity_date = (
            "active", None, None, None)
    else:
        cert.status = "hold" if event == "hold" else "revoked"
        cert.reason = reason
        # A hold turned into a revocation keeps no hold date: the revocation is now.
        cert.revoked_at = now
        cert.invalidity_date = invalidity_date
    cert.status_changed_at = now
    session.add(StatusEvent(certificate_id=cert.id, ca_id=cert.ca_id, event=event,
                            reason=reason, at=now))
    details: dict[str, object] = {"event": event, "reason": reason, "profile": cert.profile}
    if invalidity_date is not None:
        details["invalidity_date"] = invalidity_date.isoformat()
    audit.append(session, f"cert.{event}", canonical, details, actor=actor, clock=auth.clock)
    return StatusChange(canonical, cert.status, cert.reason, now)


def notify_changed(auth: Authority, serials: list[str]) -> None:
    """Tell the listeners (OCSP, CRL) of changes committed through :func:`change_in`."""
    if serials:
        _notify(auth, serials)


def _check_transition(cert: Certificate, event: str, now: dt.datetime) -> None:
    problem = transition_problem(cert.serial, cert.status, cert.reason, cert.not_after,
                                 event, now)
    if problem is not None:
        raise InvalidTransition(problem)


def transition_problem(serial: str, status: str, reason: str | None, not_after: dt.datetime,
                       event: str, now: dt.datetime) -> str | None:
    """Why ``event`` (hold | release | revoke) cannot happen to this certificate, or None."""
    if status == "revoked":
        return (f"certificate {serial} is already revoked ({reason}); revocation is final")
    if event == "hold" and status == "hold":
        return f"certificate {serial} is already on hold"
    if event == "release" and status != "hold":
        return (f"certificate {serial} is not on hold (status {status}); "
                f"only a hold can be released")
    if event in ("hold", "release") and not_after <= now:
        return (f"certificate {serial} expired on {not_after.isoformat()}; "
                f"it can only be revoked")
    return None


# --- many at once (an incident) -------------------------------------------------------------

def event_of(reason: str) -> tuple[str, str]:
    """(event, reason) of a revocation reason: certificateHold suspends, the rest revoke."""
    reason = parse_reason(reason)
    return ("hold" if reason == "certificateHold" else "revoke"), reason


def _target(event: str, reason: str | None) -> tuple[str, str | None]:
    return {"hold": ("hold", "certificateHold"), "release": ("active", None)}.get(
        event, ("revoked", reason))


def serials_sha256(serials: Iterable[str]) -> str:
    """SHA-256 of a serial list: canonical hex serials, one per line, each line ended."""
    digest = hashlib.sha256()
    for serial in serials:
        digest.update(serial.encode("ascii") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What ``change_many`` would do with a serial list, read before anything is applied."""

    event: str
    reason: str | None
    to_change: list[str]          # canonical serials, in the order given, duplicates dropped
    already: int                  # already in the wanted state (a run started again)
    problems: list[str]           # unknown serials, impossible transitions: apply nothing
    sha256: str                   # of the whole list (canonical, duplicates dropped)


def plan(auth: Authority, serials: Iterable[str], event: str, reason: str | None = None,
         *, batch_size: int = BATCH) -> Plan:
    """Check every serial against the store and the state machine (read-only)."""
    canonical = list(dict.fromkeys(parse_serial(s) for s in serials))
    target = _target(event, reason)
    now = auth.clock.now()
    to_change: list[str] = []
    problems: list[str] = []
    already = 0
    for start in range(0, len(canonical), batch_size):
        part = canonical[start:start + batch_size]
        with auth.store.read() as session:
            rows = {r.serial: r for r in session.execute(
                select(Certificate.serial, Certificate.status, Certificate.reason,
                       Certificate.not_after).where(Certificate.serial.in_(part)))}
        for serial in part:
            row = rows.get(serial)
            if row is None:
                problems.append(f"no certificate with serial {serial}")
            elif (row.status, row.reason if event != "hold" else "certificateHold") == target \
                    or (event == "hold" and row.status == "hold"):
                already += 1
            else:
                problem = transition_problem(serial, row.status, row.reason, row.not_after,
                                             event, now)
                if problem is None:
                    to_change.append(serial)
                else:
                    problems.append(problem)
    return Plan(event, reason, to_change, already, problems, serials_sha256(canonical))


@dataclass
class BatchOutcome:
    changed: int = 0
    already: int = 0              # skipped: in the wanted state already
    skipped: int = 0              # skipped: unknown or not eligible (``skip_ineligible``)
    batches: int = 0              # transactions that changed something (one audit record each)
    by_reason: dict[str, int] = field(default_factory=dict)


def change_many(auth: Authority, serials: Sequence[str], event: str, reason: str | None = None,
                *, selection: Mapping[str, Any], actor: str = "cps-admin",
                invalidity_date: dt.datetime | None = None, batch_size: int = BATCH,
                skip_ineligible: bool = False,
                progress: Callable[[int], object] | None = None) -> BatchOutcome:
    """Apply ``event`` (hold | revoke | release) to many certificates, ``batch_size`` per
    transaction, through the same transition rules as one ``revoke``/``hold``/``release``.

    Each batch that changes something is one transaction: the rows, a ``status_event`` per
    certificate, one ``cert.<event>.batch`` audit record (``selection``, the SHA-256 of the
    batch's serial list and of the whole list, counts); listeners hear of it after the commit.
    A certificate already in the wanted state is skipped (a rerun after a kill adds nothing).
    An unknown serial or an impossible transition raises — the batches before it stay applied,
    which is why callers ``plan`` first — unless ``skip_ineligible`` (bench-populate's mix).
    """
    if event not in ("hold", "revoke", "release"):
        raise InvalidInput(f"unknown status event {event!r}")
    if event == "hold":
        reason = "certificateHold"
    elif event == "release":
        reason = None
    elif reason is None or parse_reason(reason) == "certificateHold":
        raise InvalidInput("a revocation needs a reason other than certificateHold")
    if invalidity_date is not None and (invalidity_date.tzinfo is None
                                        or invalidity_date > auth.clock.now()):
        raise InvalidInput("invalidity date needs a timezone and may not be in the future")
    whole = serials_sha256(serials)
    batches = max(1, -(-len(serials) // batch_size))
    outcome = BatchOutcome()
    for index, start in enumerate(range(0, len(serials), batch_size)):
        part = list(serials[start:start + batch_size])
        changed = _apply_batch(auth, part, event, reason, invalidity_date, outcome,
                               skip_ineligible, {
                                   "selection": dict(selection), "batch": index + 1,
                                   "batches": batches, "selection_sha256": whole,
                                   "selection_count": len(serials)}, actor)
        if changed:
            _notify(auth, changed)
            if auth.store.dialect == "sqlite":
                # SQLite has one write lock for the whole store, and a writer that found it
                # taken retries after sleeps growing to 100 ms: without a pause the next batch
                # takes the lock again at once and the signer, writing the OCSP answers of
                # these very certificates, starves until the end.
                time.sleep(SQLITE_YIELD)
        if progress is not None:
            progress(len(part))
    return outcome


def _apply_batch(auth: Authority, part: list[str], event: str, reason: str | None,
                 invalidity_date: dt.datetime | None, outcome: BatchOutcome,
                 skip_ineligible: bool, details: dict[str, Any], actor: str) -> list[str]:
    status, target_reason = _target(event, reason)
    now = auth.clock.now()
    cert = _CERTIFICATE.c
    with auth.store.session() as session:
        # Core columns of the table, not ORM entities: no per-row ORM loading at 600,000 rows.
        rows = {r.serial: r for r in session.connection().execute(
            select(cert.id, cert.serial, cert.ca_id, cert.status, cert.reason, cert.not_after)
            .where(cert.serial.in_(part)).with_for_update())}
        todo = []
        for serial in part:
            row = rows.get(serial)
            if row is None:
                if not skip_ineligible:
                    raise NotFound(f"no certificate with serial {serial}")
                outcome.skipped += 1
            elif row.status == status and (event == "hold" or row.reason == target_reason):
                outcome.already += 1
            elif (problem := transition_problem(serial, row.status, row.reason, row.not_after,
                                                event, now)) is not None:
                if not skip_ineligible:
                    raise InvalidTransition(problem)
                outcome.skipped += 1
            else:
                todo.append(row)
        if not todo:
            return []
        ids = [r.id for r in todo]
        changing = {"status": status, "reason": target_reason, "status_changed_at": now,
                    "revoked_at": None if event == "release" else now,
                    "invalidity_date": invalidity_date}
        for i in range(0, len(ids), 900):        # bound the IN list (SQLite variables)
            chunk = ids[i:i + 900]
            session.execute(update(_CERTIFICATE).where(cert.id.in_(chunk)).values(**changing))
            # The events straight from the rows (INSERT ... SELECT): one statement, no
            # per-row parameters (a third of the time of an executemany at 600,000 rows).
            session.execute(insert(_STATUS_EVENT).from_select(
                ["certificate_id", "ca_id", "event", "reason", "at"],
                select(cert.id, cert.ca_id, literal(event, String), literal(reason, String),
                       literal(now, _STATUS_EVENT.c.at.type))
                .where(cert.id.in_(chunk)).order_by(cert.id)))
        changed = [r.serial for r in todo]
        batch_sha = serials_sha256(changed)
        audit.append(session, f"cert.{event}.batch", f"sha256:{batch_sha}",
                     {**details, "event": event, "reason": reason, "count": len(changed),
                      "already": len(part) - len(changed), "serials_sha256": batch_sha,
                      "first": changed[0], "last": changed[-1],
                      **({"invalidity_date": invalidity_date.isoformat()}
                         if invalidity_date is not None else {})},
                     actor=actor, clock=auth.clock)
    outcome.changed += len(changed)
    outcome.batches += 1
    if reason is not None:
        outcome.by_reason[reason] = outcome.by_reason.get(reason, 0) + len(changed)
    return changed


@dataclass(frozen=True)
class Selection:
    """What an incident knows: the chip model, an issuance date, the issuing CA."""

    card_model: str | None = None
    issued_before: dt.datetime | None = None
    issuer: str | None = None           # CA slug

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.card_model is not None:
            out["card_model"] = self.card_model
        if self.issued_before is not None:
            out["issued_before"] = self.issued_before.isoformat()
        if self.issuer is not None:
            out["issuer"] = self.issuer
        return out


def select_serials(auth: Authority, selection: Selection, event: str) -> list[str]:
    """Serials the selection names that ``event`` would still change (in id order).

    Never the OCSP responder certificates (the CA's own infrastructure); already-changed
    certificates drop out, so the same selection run again picks up what is left."""
    from pki.store.models import Card

    if not selection.describe():
        raise InvalidInput("an incident selection needs at least one of --card-model, "
                           "--issued-before, --issuer")
    now = auth.clock.now()
    query = select(Certificate.serial).where(Certificate.profile != "ocsp")
    if selection.card_model is not None:
        query = query.join(Card, Certificate.card_id == Card.id).where(
            Card.model == selection.card_model)
    if selection.issued_before is not None:
        if selection.issued_before.tzinfo is None:
            raise InvalidInput("--issued-before needs a timezone (use UTC)")
        query = query.where(Certificate.not_before < selection.issued_before)
    if selection.issuer is not None:
        query = query.where(Certificate.ca_id == auth.ca(selection.issuer).id)
    if event == "hold":
        query = query.where(Certificate.status == "active", Certificate.not_after > now)
    elif event == "release":
        query = query.where(Certificate.status == "hold", Certificate.not_after > now)
    else:
        query = query.where(Certificate.status != "revoked")
    with auth.store.read() as session:
        return list(session.execute(query.order_by(Certificate.id)).scalars())


def renew(auth: Authority, serial: str, *, public_key: object | None = None,
          revoke_old: bool = False, actor: str = "cps-admin",
          key_storage: KeyStorage | None = None) -> IssuedCertificate:
    """A new certificate for the same holder and profile (same key unless one is given).

    The same key stays where it was (the old certificate's product category); a new key is
    "software" unless ``key_storage`` says otherwise (a card renewal writing onto the card).
    """
    canonical = parse_serial(serial)
    with auth.store.read() as session:
        old = session.execute(select(Certificate).where(Certificate.serial == canonical)
                              ).scalar_one_or_none()
        if old is None:
            raise NotFound(f"no certificate with serial {canonical}")
        if old.status == "revoked":
            raise InvalidTransition(f"certificate {canonical} is revoked; issue a new one "
                                    f"instead of renewing it")
        rpps = structure_id = None
        if old.professional_id is not None:
            pro = session.get(Professional, old.professional_id)
            rpps = pro.rpps if pro else None
        if old.structure_id is not None:
            st = session.get(Structure, old.structure_id)
            structure_id = st.structure_id if st else None
        old_cert = x509.load_der_x509_certificate(old.der)
        profile, card_id, old_id = old.profile, old.card_id, old.id
    key = public_key if public_key is not None else old_cert.public_key()
    dns: tuple[str, ...] = ()
    try:
        san = old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    if key_storage is None:
        key_storage = key_storage_of(old_cert) if public_key is None else "software"
    issued = auth.issue(IssueRequest(profile=profile, public_key=key, rpps=rpps,  # type: ignore[arg-type]
                                     structure_id=structure_id, dns_names=dns, card_id=card_id,
                                     renewed_from_id=old_id, key_storage=key_storage),
                        actor=actor)
    if revoke_old:
        revoke(auth, canonical, "superseded", actor=actor)
    return issued


def status_of(auth: Authority, serial: str) -> Certificate:
    canonical = parse_serial(serial)
    with auth.store.read() as session:
        cert = session.execute(select(Certificate).where(Certificate.serial == canonical)
                               ).scalar_one_or_none()
        if cert is None:
            raise NotFound(f"no certificate with serial {canonical}")
        session.expunge(cert)
        return cert
