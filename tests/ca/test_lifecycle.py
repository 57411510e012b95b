"""The certificate state machine through pki.ca.lifecycle, and the batched population path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import add_professional  # tests/conftest.py helpers
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from pki import audit
from pki.ca import batch, lifecycle
from pki.ca.authority import Authority, IssuedCertificate, IssueRequest
from pki.ca.hierarchy import init_home
from pki.cli.certs import display_status
from pki.clock import FixedClock
from pki.errors import InvalidInput, InvalidTransition, NotFound
from pki.store.models import AuditRecord, Certificate, StatusEvent

KEY = rsa.generate_private_key(65537, 2048).public_key()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("lifecycle") / "cps"
    init_home(home, key_type="p256")
    return home


@pytest.fixture(scope="module")
def auth(home: Path) -> Iterator[Authority]:
    a = Authority.open(home)
    add_professional(a, "1000111222")
    try:
        yield a
    finally:
        a.close()


RPPS = "10001112225"


def _issue(auth: Authority, profile: str = "auth") -> IssuedCertificate:
    return auth.issue(IssueRequest(profile, KEY, rpps=RPPS))


def _events(auth: Authority, serial: str) -> list[tuple[str, str | None]]:
    with auth.store.read() as s:
        cert = s.execute(select(Certificate).where(Certificate.serial == serial)).scalar_one()
        return [(e.event, e.reason) for e in s.execute(
            select(StatusEvent).where(StatusEvent.certificate_id == cert.id)
            .order_by(StatusEvent.id)).scalars()]


def _audit_actions(auth: Authority, serial: str) -> list[str]:
    with auth.store.read() as s:
        return list(s.execute(select(AuditRecord.action).where(AuditRecord.target == serial)
                              .order_by(AuditRecord.seq)).scalars())


def test_rpps_fixture_is_valid() -> None:
    from pki import ids
    assert ids.luhn_complete("1000111222") == RPPS


@pytest.mark.parametrize("reason", [r for r in lifecycle.REASONS if r != "certificateHold"])
def test_every_rfc5280_reason_revokes(auth: Authority, reason: str) -> None:
    cert = _issue(auth)
    when = auth.clock.now() - dt.timedelta(days=1)
    change = lifecycle.revoke(auth, cert.serial, reason.upper(), when)  # any case accepted
    assert (change.status, change.reason) == ("revoked", reason)
    row = lifecycle.status_of(auth, cert.serial)
    assert row.status == "revoked" and row.reason == reason and row.revoked_at is not None
    assert row.invalidity_date is not None and abs(row.invalidity_date - when) < \
        dt.timedelta(seconds=1)
    assert _events(auth, cert.serial) == [("revoke", reason)]
    assert _audit_actions(auth, cert.serial) == ["cert.issue", "cert.revoke"]
    with pytest.raises(InvalidTransition, match="already revoked"):
        lifecycle.revoke(auth, cert.serial, "keyCompromise")


def test_hold_release_then_revoke_is_final(auth: Authority) -> None:
    cert = _issue(auth, "sign")
    assert lifecycle.revoke(auth, cert.serial, "certificateHold").status == "hold"
    with pytest.raises(InvalidTransition, match="already on hold"):
        lifecycle.hold(auth, cert.serial)
    assert lifecycle.release(auth, cert.serial).status == "active"
    row = lifecycle.status_of(auth, cert.serial)
    assert (row.status, row.reason, row.revoked_at) == ("active", None, None)
    with pytest.raises(InvalidTransition, match="not on hold"):
        lifecycle.release(auth, cert.serial)          # release an active certificate
    lifecycle.hold(auth, cert.serial)
    assert lifecycle.revoke(auth, cert.serial, "keyCompromise").status == "revoked"
    with pytest.raises(InvalidTransition):
        lifecycle.release(auth, cert.serial)          # release a revoked certificate
    with pytest.raises(InvalidTransition):
        lifecycle.hold(auth, cert.serial)
    assert _events(auth, cert.serial) == [("hold", "certificateHold"), ("release", None),
                                          ("hold", "certificateHold"),
                                          ("revoke", "keyCompromise")]
    assert audit.verify(auth.store).ok


def test_bad_reason_future_invalidity_and_unknown_serial(auth: Authority) -> None:
    cert = _issue(auth)
    with pytest.raises(InvalidInput, match="unknown revocation reason"):
        lifecycle.revoke(auth, cert.serial, "removeFromCRL")
    with pytest.raises(InvalidInput, match="future"):
        lifecycle.revoke(auth, cert.serial, "keyCompromise",
                         auth.clock.now() + dt.timedelta(days=1))
    with pytest.raises(InvalidInput, match="timezone"):
        lifecycle.revoke(auth, cert.serial, "keyCompromise", dt.datetime(2024, 1, 1))
    with pytest.raises(NotFound):
        lifecycle.revoke(auth, "0123456789ABCDEF", "keyCompromise")
    assert lifecycle.status_of(auth, cert.serial).status == "active"
    assert _events(auth, cert.serial) == []


def test_renew_same_key_and_new_key(auth: Authority) -> None:
    old = _issue(auth)
    new = lifecycle.renew(auth, old.serial)
    assert new.serial != old.serial and new.profile == "auth"
    assert new.certificate.subject == old.certificate.subject
    assert new.certificate.public_key() == old.certificate.public_key()
    with auth.store.read() as s:
        row = s.execute(select(Certificate).where(Certificate.serial == new.serial)).scalar_one()
        old_row = s.execute(select(Certificate).where(Certificate.serial == old.serial)
                            ).scalar_one()
        assert row.renewed_from_id == old_row.id
    assert lifecycle.status_of(auth, old.serial).status == "active"
    other = rsa.generate_private_key(65537, 2048).public_key()
    newer = lifecycle.renew(auth, new.serial, public_key=other, revoke_old=True)
    assert newer.certificate.public_key() == other
    old_status = lifecycle.status_of(auth, new.serial)
    assert (old_status.status, old_status.reason) == ("revoked", "superseded")
    with pytest.raises(InvalidTransition, match="revoked"):
        lifecycle.renew(auth, new.serial)


def test_expiry_with_injected_clock(home: Path, auth: Authority) -> None:
    cert = _issue(auth)
    later = FixedClock(cert.certificate.not_valid_after_utc + dt.timedelta(seconds=1))
    future = Authority.open(home, clock=later)
    try:
        row = lifecycle.status_of(future, cert.serial)
        assert display_status(row.status, row.not_after, later.now()) == "expired"
        assert display_status(row.status, row.not_after, auth.clock.now()) == "active"
        with pytest.raises(InvalidTransition, match="expired"):
            lifecycle.hold(future, cert.serial)
        # An expired certificate can still be revoked (e.g. key compromise found afterwards).
        assert lifecycle.revoke(future, cert.serial, "keyCompromise").status == "revoked"
        assert display_status("revoked", row.not_after, later.now()) == "revoked"
    finally:
        future.close()
    # Certificates never outlive their issuing CA, whatever the clock.
    ca_end = auth.ca("ac-igc-sante-fort-personnes").certificate.not_valid_after_utc
    near_end = Authority.open(home, clock=FixedClock(ca_end - dt.timedelta(days=10)))
    try:
        late = near_end.issue(IssueRequest("auth", KEY, rpps=RPPS)).certificate
        assert late.not_valid_after_utc <= ca_end
    finally:
        near_end.close()


def test_batch_population_statuses_events_and_audit(auth: Authority) -> None:
    before = audit.verify(auth.store).records
    result = batch.populate(auth, 41, revoked_fraction=0.5, pool_size=2)
    assert result.certificates == 41 and result.professionals == 21
    assert result.revoked + result.held == round(41 * 0.5)
    assert result.held >= 1 and result.revoked >= 1
    with auth.store.read() as s:
        rows = s.execute(select(Certificate).where(Certificate.created_at >= auth.clock.now()
                                                   - dt.timedelta(minutes=5),
                                                   Certificate.subject.like("%CN=89%"))
                         ).scalars().all()
        assert len(rows) == 41
        assert sorted({r.profile for r in rows}) == ["auth", "sign"]
        changed = [r for r in rows if r.status != "active"]
        changed_serials = [r.serial for r in changed]
        assert len(changed) == result.revoked + result.held
        n_events = s.execute(select(func.count()).select_from(StatusEvent).where(
            StatusEvent.certificate_id.in_([r.id for r in changed]))).scalar_one()
        assert n_events == len(changed)
        assert all(r.reason for r in changed)
        assert {r.status for r in changed if r.reason == "certificateHold"} <= {"hold"}
        for r in rows[:4]:
            assert x509.load_der_x509_certificate(r.der).serial_number == int(r.serial, 16)
    report = audit.verify(auth.store)
    assert report.ok, report.problems
    # One audit link per certificate issued, one per batch of status changes (the mix is
    # applied one reason at a time, each well under a batch), plus the directory batch.
    assert report.records - before == 41 + len({r.reason for r in changed}) + 1
    # The batched revocations obey the state machine: a second pass changes nothing.
    assert batch.revoke_batch(auth, changed_serials) == (0, 0)


def test_batch_population_parallel_workers(auth: Authority) -> None:
    result = batch.populate(auth, 10, revoked_fraction=0.2, workers=2, pool_size=2)
    assert (result.certificates, result.professionals, result.workers) == (10, 5, 2)
    assert result.revoked + result.held == 2
    assert result.rate > 0
    assert audit.verify(auth.store).ok
    with auth.store.read() as s:
        serials = s.execute(select(Certificate.serial)).scalars().all()
        assert len(serials) == len(set(serials))


def test_batch_rejects_bad_arguments(auth: Authority) -> None:
    with pytest.raises(InvalidInput):
        batch.populate(auth, 0)
    with pytest.raises(InvalidInput):
        batch.populate(auth, 2, revoked_fraction=1.5)
