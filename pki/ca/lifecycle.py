"""The certificate state machine: hold, release, revoke, renew — and nothing impossible.

    active ──hold──► hold ──release──► active
      │                │
      └──revoke──► revoked ◄──revoke──┘      (revoked is final)

Each change is one transaction: the row (locked), a ``status_event`` for the publishers, and an
audit link. Listeners registered on the Authority (OCSP, CRL) hear of it after the commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import select

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

StatusListener = Callable[[list[str]], object]
_LISTENERS: dict[int, list[StatusListener]] = {}


def add_listener(auth: Authority, listener: StatusListener) -> None:
    """Call ``listener(serials)`` after every committed status change made through ``auth``."""
    _LISTENERS.setdefault(id(auth), []).append(listener)


def _notify(auth: Authority, serials: list[str]) -> None:
    for listener in _LISTENERS.get(id(auth), []):
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
    canonical = parse_serial(serial)
    now = auth.clock.now()
    with auth.store.session() as session:
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
        change = StatusChange(canonical, cert.status, cert.reason, now)
    _notify(auth, [canonical])
    return change


def _check_transition(cert: Certificate, event: str, now: dt.datetime) -> None:
    status = cert.status
    if status == "revoked":
        raise InvalidTransition(f"certificate {cert.serial} is already revoked "
                                f"({cert.reason}); revocation is final")
    if event == "hold" and status == "hold":
        raise InvalidTransition(f"certificate {cert.serial} is already on hold")
    if event == "release" and status != "hold":
        raise InvalidTransition(f"certificate {cert.serial} is not on hold (status {status}); "
                                f"only a hold can be released")
    if event in ("hold", "release") and cert.not_after <= now:
        raise InvalidTransition(f"certificate {cert.serial} expired on "
                                f"{cert.not_after.isoformat()}; it can only be revoked")


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
