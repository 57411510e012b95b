"""A public role writing the store must not be able to undo a revocation (issue 13, pen test).

On SQLite every role shares one file, so the broker or patient process can run
``UPDATE certificate SET status='active' ...`` and insert a ``release`` status event. The signer
must keep answering revoked (OCSP), keep the serial on every full CRL and never publish a
removeFromCRL for it, and record the refusal in the audit chain. A real hold, released by an
officer, still goes through end to end.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text

from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.crl import publisher
from pki.ocsp import records as rec
from pki.ocsp import response as resp
from pki.ocsp.service import OcspService
from pki.store.models import AuditRecord, Certificate
from tests.conftest import add_professional

KEY_COMPROMISE = resp.REASON_CODES["keyCompromise"]


@dataclass
class Env:
    auth: Authority
    service: OcspService
    slug: str

    def issue(self, body: str) -> str:
        rpps = add_professional(self.auth, body=body)
        key = ec.generate_private_key(ec.SECP256R1())
        return self.auth.issue(IssueRequest(profile="auth", public_key=key.public_key(),
                                            rpps=rpps)).serial

    def ocsp(self, serial: str) -> tuple[int, int, int]:
        with self.auth.store.read() as session:
            ca_id = session.execute(select(Certificate.ca_id).where(
                Certificate.serial == serial)).scalar_one()
        return rec.status_of(self.service.states[ca_id].records[rec.serial_content(serial)])

    def tamper(self, serial: str, event: str = "release", status: str = "active") -> None:
        """What the pen test ran from the patient role: raw SQL on the shared store."""
        with self.auth.store.engine.begin() as conn:
            cert_id, ca_id = conn.execute(text("SELECT id, ca_id FROM certificate "
                                               "WHERE serial = :s"), {"s": serial}).one()
            reason = "certificateHold" if status == "hold" else None
            conn.execute(text("UPDATE certificate SET status = :st, reason = :r, "
                              "revoked_at = NULL WHERE id = :i"),
                         {"st": status, "r": reason, "i": cert_id})
            conn.execute(text("INSERT INTO status_event (certificate_id, ca_id, event, at) "
                              "VALUES (:c, :a, :e, :t)"),
                         {"c": cert_id, "a": ca_id, "e": event,
                          "t": dt.datetime.now(dt.UTC).replace(tzinfo=None)})

    def audits(self, action: str) -> list[dict[str, object]]:
        with self.auth.store.read() as session:
            rows = session.execute(select(AuditRecord.target, AuditRecord.details)
                                   .where(AuditRecord.action == action)).all()
        return [{"target": t, **json.loads(d)} for t, d in rows]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home: Path = tmp_path_factory.mktemp("integrity") / "home"
    init_home(home, key_type="p256")
    auth = Authority.open(home)
    slug = next(c for c in auth.issuing_cas() if c.role == "PERSONNES").slug
    service = OcspService(auth, poll_interval=3600)     # the test drives poll() itself
    service.load()
    lifecycle.add_listener(auth, service.on_status_change)
    try:
        yield Env(auth, service, slug)
    finally:
        auth.close()


def _delta_entries(env: Env, serial: str) -> list[x509.RevokedCertificate]:
    delta = next(p for p in publisher.publish_delta(env.auth, env.slug))
    crl = x509.load_der_x509_crl(delta.der)
    return [e for e in crl if e.serial_number == int(serial, 16)]


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def test_released_keycompromise_stays_revoked(env: Env) -> None:
    serial = env.issue("1000000101")
    publisher.publish_full(env.auth, env.slug)
    lifecycle.revoke(env.auth, serial, "keyCompromise")
    revoked = env.ocsp(serial)
    assert revoked[:2] == (resp.CertStatus.REVOKED, KEY_COMPROMISE)
    assert [_reason(e) for e in _delta_entries(env, serial)] == [x509.ReasonFlags.key_compromise]

    env.tamper(serial)
    env.service.poll()
    assert env.ocsp(serial) == revoked, "the signer signed the store's 'active' claim"
    refusals = [a for a in env.audits("ocsp.status_refused") if a["target"] == serial]
    assert len(refusals) == 1 and refusals[0]["claimed"]["status"] == "good"  # type: ignore[index]
    env.service.poll()      # the same claim seen again: no second record
    assert len([a for a in env.audits("ocsp.status_refused") if a["target"] == serial]) == 1

    entries = _delta_entries(env, serial)
    assert all(_reason(e) != x509.ReasonFlags.remove_from_crl for e in entries), \
        "removeFromCRL published for a key-compromised certificate"
    full = publisher.publish_full(env.auth, env.slug)[0]
    listed = [e for e in x509.load_der_x509_crl(full.der) if e.serial_number == int(serial, 16)]
    assert [_reason(e) for e in listed] == [x509.ReasonFlags.key_compromise]
    assert any(a["target"] == serial for a in env.audits("crl.status_refused"))


def test_tampered_hold_and_restart(env: Env) -> None:
    """A permanent revocation turned into a hold is refused too, and a signer starting again
    takes its floor from the records it stored (ocsp_record)."""
    serial = env.issue("1000000102")
    lifecycle.revoke(env.auth, serial, "superseded")
    revoked = env.ocsp(serial)
    env.tamper(serial, event="hold", status="hold")
    env.service.poll()
    assert env.ocsp(serial) == revoked
    fresh = OcspService(env.auth, poll_interval=3600)
    fresh.load()
    ca_id = next(iter(fresh.states))
    ca_id = next(i for i, s in fresh.states.items() if rec.serial_content(serial) in s.records)
    assert rec.status_of(fresh.states[ca_id].records[rec.serial_content(serial)]) == revoked


def test_legit_hold_release_end_to_end(env: Env) -> None:
    serial = env.issue("1000000103")
    publisher.publish_full(env.auth, env.slug)
    lifecycle.hold(env.auth, serial)
    assert env.ocsp(serial)[:2] == (resp.CertStatus.REVOKED, resp.REASON_CODES["certificateHold"])
    assert [_reason(e) for e in _delta_entries(env, serial)] == \
        [x509.ReasonFlags.certificate_hold]
    publisher.publish_full(env.auth, env.slug)       # the hold is now on the base
    lifecycle.release(env.auth, serial)
    assert env.ocsp(serial)[0] == resp.CertStatus.GOOD
    assert [_reason(e) for e in _delta_entries(env, serial)] == \
        [x509.ReasonFlags.remove_from_crl]
    full = publisher.publish_full(env.auth, env.slug)[0]
    assert all(e.serial_number != int(serial, 16) for e in x509.load_der_x509_crl(full.der))


def test_floor_walk_reads_every_entry_shape(env: Env) -> None:
    """The fast DER walk the floor uses agrees with cryptography's parse: reasons present or
    absent, invalidity dates, holds left out, a serial needing a leading zero octet."""
    from pki.crl import builder, source
    from pki.crl.builder import CrlFields, EntryBuffer

    when = "2026-01-02 03:04:05.000000"
    rows: list[builder.Row] = [
        ("7F01", when, None, None, "revoked"), ("80FF", when, "keyCompromise", when, "revoked"),
        ("0102", when, "certificateHold", None, "hold"), ("55AA", when, "superseded", None,
                                                          "revoked"),
        ("3C3C", when, "unspecified", None, "revoked")]
    entries = EntryBuffer()
    entries.extend(rows)
    ca = next(c for c in env.auth.issuing_cas() if c.slug == env.slug)
    start = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    der = builder.sign(CrlFields(ca.certificate, start, start + dt.timedelta(days=1), 9),
                       entries, env.auth.signer(env.slug))
    walked = {serial: source.find_entry(der, serial) for serial, *_ in
              source.permanent_entries(der)}
    parsed = {f"{e.serial_number:02X}": _reason(e) for e in x509.load_der_x509_crl(der)
              if _reason(e) != x509.ReasonFlags.certificate_hold}
    assert set(walked) == set(parsed) == {"7F01", "80FF", "55AA", "3C3C"}
    key_compromise = walked["80FF"]
    assert key_compromise is not None and key_compromise.code == KEY_COMPROMISE
    assert key_compromise.revoked_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
