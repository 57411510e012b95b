"""Publication on a real home: HSM signing, numbers, deltas, partitions, and what relying parties
(openssl, pyhanko-certvalidator) conclude from the CRLs."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import InsufficientRevinfoError, RevokedError
from sqlalchemy import func, select

from pki import urls
from pki.ca import lifecycle
from pki.ca.authority import IssuedCertificate, serial_hex
from pki.ca.lint import lint_crl
from pki.crl import publisher
from pki.crl.publisher import PublishedCrl
from pki.errors import LintFailed, NotFound
from pki.store.models import CertificateAuthority, Crl

from .conftest import CrlEnv, openssl

HOUR = dt.timedelta(hours=1)


def crl_of(published: list[PublishedCrl], slug: str, kind: str = "full",
           shard: int | None = None) -> PublishedCrl:
    return next(p for p in published if p.ca_slug == slug and p.kind == kind
                and p.shard == shard)


def entries(crl: PublishedCrl) -> dict[str, x509.RevokedCertificate]:
    return {serial_hex(r.serial_number): r for r in x509.load_der_x509_crl(crl.der)}


def reason(entry: x509.RevokedCertificate) -> str | None:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except x509.ExtensionNotFound:
        return None


def pyhanko_status(env: CrlEnv, cert: IssuedCertificate, crls: list[PublishedCrl]) -> str:
    root = next(c for c in env.auth.cas() if c.role == "ROOT")
    ca = env.auth.ca(cert.ca_slug)
    vc = ValidationContext(trust_roots=[asn1_x509.Certificate.load(root.der)],
                           crls=[c.der for c in crls], revocation_mode="hard-fail",
                           moment=env.clock.now())
    validator = CertificateValidator(asn1_x509.Certificate.load(cert.der),
                                     intermediate_certs=[asn1_x509.Certificate.load(ca.der)],
                                     validation_context=vc)
    try:
        asyncio.run(validator.async_validate_usage(set()))
    except RevokedError:
        return "revoked"
    return "good"


@pytest.fixture
def env(make_env: Callable[..., CrlEnv]) -> CrlEnv:
    return make_env()


def test_full_crls_signed_in_hsm_verify_and_lint_clean(env: CrlEnv) -> None:
    _good, compromised, unspecified, held = env.issue(4)
    when = env.clock.now() - HOUR
    lifecycle.revoke(env.auth, compromised.serial, "keyCompromise", invalidity_date=when)
    lifecycle.revoke(env.auth, unspecified.serial, "unspecified")
    lifecycle.hold(env.auth, held.serial)
    signs = env.auth.hsm.sign_count
    published = publisher.publish(env.auth)
    # The officer's publication leaves the roots to the ceremony (their keys are offline).
    assert {p.ca_slug for p in published} == {c.slug for c in env.auth.issuing_cas()}
    assert env.auth.hsm.sign_count == signs + len(published)       # one HSM signature each
    published += env.publish_roots()
    assert env.auth.hsm.sign_count == signs + len(published) - 1   # not in the CA token
    cfg = env.auth.config.crl
    for crl in published:
        parsed = x509.load_der_x509_crl(crl.der)
        ca = env.auth.ca(crl.ca_slug)
        assert parsed.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
        assert lint_crl(crl.der) == []
        assert parsed.last_update_utc == env.clock.now()
        hours = cfg.root_validity_days * 24 if ca.role == "ROOT" else cfg.validity_hours
        assert parsed.next_update_utc == env.clock.now() + hours * HOUR
        aki = parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert aki.key_identifier == ski.value.digest
        res = openssl("crl", "-in", str(env.crl_file(crl)), "-noout", "-CAfile",
                      str(env.ca_pem(crl.ca_slug)), "-verify")
        assert res.returncode == 0 and "verify OK" in res.stderr + res.stdout
    full = crl_of(published, env.personnes)
    got = entries(full)
    assert set(got) == {compromised.serial, unspecified.serial, held.serial}
    assert reason(got[compromised.serial]) == "keyCompromise"
    assert got[compromised.serial].extensions.get_extension_for_class(
        x509.InvalidityDate).value.invalidity_date_utc == when
    assert reason(got[unspecified.serial]) is None
    assert reason(got[held.serial]) == "certificateHold"
    freshest = x509.load_der_x509_crl(full.der).extensions.get_extension_for_class(
        x509.FreshestCRL).value
    assert freshest[0].full_name == [x509.UniformResourceIdentifier(
        urls.crl_url(env.auth.config.base_url, env.personnes, delta=True))]
    root_crl = crl_of(published, env.root_slug)
    assert not any(isinstance(e.value, x509.FreshestCRL)
                   for e in x509.load_der_x509_crl(root_crl.der).extensions)
    with env.auth.store.read() as s:   # and the root's first CRL, signed at init
        assert s.execute(select(func.count()).select_from(Crl)).scalar_one() == \
            len(published) + 1


def test_relying_parties_see_revoked_and_good(env: CrlEnv) -> None:
    good, revoked, held = env.issue(3)
    lifecycle.revoke(env.auth, revoked.serial, "keyCompromise")
    lifecycle.hold(env.auth, held.serial)
    published = publisher.publish(env.auth) + env.publish_roots()
    env.clock.advance(dt.timedelta(minutes=1))
    published += publisher.publish(env.auth, delta=True)
    full = [crl_of(published, env.personnes), crl_of(published, env.root_slug)]
    ok = env.verify(good, full)
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    for cert in (revoked, held):
        res = env.verify(cert, full)
        assert res.returncode != 0 and "certificate revoked" in res.stdout + res.stderr
    # pyhanko in hard-fail mode follows freshestCRL: it wants the delta next to the base.
    with_delta = [*full, crl_of(published, env.personnes, "delta")]
    assert pyhanko_status(env, good, with_delta) == "good"
    assert pyhanko_status(env, revoked, with_delta) == "revoked"
    assert pyhanko_status(env, held, with_delta) == "revoked"
    with pytest.raises(InsufficientRevinfoError, match="Delta CRL"):
        pyhanko_status(env, good, full)
    with pytest.raises(InsufficientRevinfoError):   # no CRL of the issuing CA at all
        pyhanko_status(env, good, [crl_of(published, env.root_slug)])


def test_crl_numbers_strictly_increase_across_full_and_delta(env: CrlEnv) -> None:
    numbers: list[int] = []
    for delta in (False, True, True, False, True):
        env.clock.advance(HOUR)
        out = (publisher.publish_delta(env.auth, env.personnes) if delta
               else publisher.publish_full(env.auth, env.personnes))
        numbers += [p.number for p in out]
        for p in out:
            assert x509.load_der_x509_crl(p.der).extensions.get_extension_for_class(
                x509.CRLNumber).value.crl_number == p.number
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers == list(range(1, 6))
    with env.auth.store.read() as s:
        assert s.execute(select(CertificateAuthority.crl_number).where(
            CertificateAuthority.slug == env.personnes)).scalar_one() == 5
    delta = x509.load_der_x509_crl(
        publisher.publish_delta(env.auth, env.personnes)[0].der)
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value \
        .crl_number == 4        # the newest full CRL is the base
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).critical


def test_delta_needs_a_base(env: CrlEnv) -> None:
    with pytest.raises(NotFound, match="publish the full CRL first"):
        publisher.publish_delta(env.auth, env.personnes)
    with pytest.raises(Exception, match="root CA"):
        publisher.publish_delta(env.auth, env.root_slug)


def test_delta_lists_changes_since_base_including_remove_from_crl(env: CrlEnv) -> None:
    old, held_before, fresh, held_after, bystander = env.issue(5)
    lifecycle.revoke(env.auth, old.serial, "superseded")
    lifecycle.hold(env.auth, held_before.serial)
    env.clock.advance(HOUR)
    base = publisher.publish(env.auth) + env.publish_roots()
    base_full = crl_of(base, env.personnes)
    assert set(entries(base_full)) == {old.serial, held_before.serial}
    # Past the safety margin: changes from now on are the delta's business.
    env.clock.advance(HOUR)
    lifecycle.revoke(env.auth, fresh.serial, "keyCompromise")
    lifecycle.hold(env.auth, held_after.serial)
    lifecycle.release(env.auth, held_before.serial)
    env.clock.advance(dt.timedelta(minutes=1))
    delta = crl_of(publisher.publish(env.auth, delta=True), env.personnes, "delta")
    got = entries(delta)
    assert set(got) == {fresh.serial, held_after.serial, held_before.serial}
    assert reason(got[fresh.serial]) == "keyCompromise"
    assert reason(got[held_after.serial]) == "certificateHold"
    assert reason(got[held_before.serial]) == "removeFromCRL"
    assert delta.base_number == base_full.number and delta.number > base_full.number
    assert lint_crl(delta.der) == []
    parsed = x509.load_der_x509_crl(delta.der)
    assert parsed.next_update_utc == env.clock.now() + \
        env.auth.config.crl.delta_validity_hours * HOUR
    # openssl with deltas: the released card is good again, the new revocation is seen.
    root = crl_of(base, env.root_slug)
    both = [base_full, delta, root]
    assert env.verify(held_before, both, "-use_deltas").returncode == 0
    assert env.verify(held_before, [base_full, root]).returncode != 0
    res = env.verify(fresh, both, "-use_deltas")
    assert res.returncode != 0 and "certificate revoked" in res.stdout + res.stderr
    assert env.verify(bystander, both, "-use_deltas").returncode == 0
    # Hold then revoke: the next delta carries the final reason.
    lifecycle.revoke(env.auth, held_after.serial, "cessationOfOperation")
    env.clock.advance(dt.timedelta(minutes=1))
    delta2 = crl_of(publisher.publish(env.auth, delta=True), env.personnes, "delta")
    assert reason(entries(delta2)[held_after.serial]) == "cessationOfOperation"
    assert set(entries(delta2)) == set(got)          # still everything since the same base
    # A new base absorbs the changes: the delta on it is empty.
    env.clock.advance(HOUR)
    new_full = crl_of(publisher.publish(env.auth), env.personnes)
    assert set(entries(new_full)) == {old.serial, fresh.serial, held_after.serial}
    env.clock.advance(HOUR)
    empty = crl_of(publisher.publish(env.auth, delta=True), env.personnes, "delta")
    assert empty.entries == 0 and empty.base_number == new_full.number


def test_delta_cost_follows_changes_not_list_size(env: CrlEnv,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    certs = env.issue(3)
    bulk_revoked(env, 5000, at=env.clock.now() - 48 * HOUR)
    env.clock.advance(HOUR)
    full = crl_of(publisher.publish(env.auth), env.personnes)
    assert full.entries == 5000
    env.clock.advance(HOUR)
    lifecycle.revoke(env.auth, certs[0].serial, "keyCompromise")
    fetched: list[int] = []
    real = publisher.source.changed_since

    def spy(*a, **k):
        groups, ids = real(*a, **k)
        fetched.append(sum(len(v) for v in groups.values()))
        return groups, ids

    def no_full_scan(*a, **k):
        raise AssertionError("a delta must not stream the whole revoked list")

    monkeypatch.setattr(publisher.source, "changed_since", spy)
    monkeypatch.setattr(publisher.source, "revoked_batches", no_full_scan)
    delta = crl_of(publisher.publish(env.auth, delta=True), env.personnes, "delta")
    assert delta.entries == 1 and fetched == [1, 0]     # PERSONNES, then ORGANISATIONS
    assert set(entries(delta)) == {certs[0].serial}


def bulk_revoked(env: CrlEnv, n: int, *, at: dt.datetime) -> None:
    """Revoked rows inserted directly (a population, not the lifecycle): for size tests."""
    from sqlalchemy import insert

    from pki.store.models import Certificate

    ca = env.auth.ca(env.personnes)
    shards = env.auth.config.crl.shards
    with env.auth.store.session() as s:
        s.execute(insert(Certificate), [
            {"serial": f"{0x7A000000 + i:08X}", "ca_id": ca.id, "profile": "auth",
             "subject": "CN=bulk", "not_before": at, "not_after": at + 1000 * 24 * HOUR,
             "status": "revoked", "reason": "keyCompromise", "revoked_at": at,
             "shard": (0x7A000000 + i) % shards if shards > 1 else 0, "der": b"",
             "created_at": at, "status_changed_at": at} for i in range(n)])


def test_partitioned_crls_match_certificate_distribution_points(
        make_env: Callable[..., CrlEnv]) -> None:
    env = make_env(crl_shards=3)
    certs = env.issue(12)
    revoked = certs[::2]
    for c in revoked:
        lifecycle.revoke(env.auth, c.serial, "keyCompromise")
    env.clock.advance(HOUR)
    published = publisher.publish(env.auth) + env.publish_roots()
    first_deltas = publisher.publish(env.auth, delta=True)
    shards = [p for p in published if p.ca_slug == env.personnes and p.shard is not None]
    assert sorted(p.shard for p in shards) == [0, 1, 2]   # and the complete CRL: test_complete_crl
    assert len({p.number for p in shards}) == 3
    by_url: dict[str, PublishedCrl] = {}
    for crl in shards:
        parsed = x509.load_der_x509_crl(crl.der)
        idp = parsed.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical and idp.value.only_contains_user_certs
        (uri,) = idp.value.full_name
        by_url[uri.value] = crl
        assert lint_crl(crl.der) == []
        fresh = parsed.extensions.get_extension_for_class(x509.FreshestCRL).value
        assert fresh[0].full_name[0].value == urls.crl_url(env.auth.config.base_url,
                                                           env.personnes, crl.shard, delta=True)
    seen: set[str] = set()
    root = crl_of(published, env.root_slug)
    for cert in certs:
        dp = cert.certificate.extensions.get_extension_for_class(
            x509.CRLDistributionPoints).value[0].full_name[0].value
        crl = by_url[dp]                       # the URL in the certificate names its shard
        listed = cert.serial in entries(crl)
        assert listed == (cert in revoked)
        seen |= set(entries(crl)) if listed else set()
        res = env.verify(cert, [crl, root])
        assert (res.returncode == 0) == (cert not in revoked), res.stdout + res.stderr
        delta = next(d for d in first_deltas if d.ca_slug == env.personnes
                     and d.shard == crl.shard)
        assert pyhanko_status(env, cert, [crl, delta, root]) == ("revoked" if cert in revoked
                                                                 else "good")
    assert seen == {c.serial for c in revoked}
    # Each shard's delta carries the same IDP as its base (RFC 5280 §5.2.4).
    env.clock.advance(HOUR)
    lifecycle.revoke(env.auth, certs[1].serial, "affiliationChanged")
    deltas = [p for p in publisher.publish(env.auth, delta=True)
              if p.ca_slug == env.personnes and p.shard is not None]
    assert sorted(d.shard for d in deltas) == [0, 1, 2]
    for d in deltas:
        base = next(s for s in shards if s.shard == d.shard)
        assert d.base_number == base.number
        assert x509.load_der_x509_crl(d.der).extensions.get_extension_for_class(
            x509.IssuingDistributionPoint).value == x509.load_der_x509_crl(
            base.der).extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        assert lint_crl(d.der) == []
        assert (certs[1].serial in entries(d)) == (d.path.endswith(
            f"-p{int(certs[1].serial, 16) % 3}-delta.crl"))
        res = env.verify(certs[1], [base, d, root], "-use_deltas")
        if certs[1].serial in entries(d):
            assert "certificate revoked" in res.stdout + res.stderr


def test_lint_failure_signs_nothing_stores_nothing(env: CrlEnv) -> None:
    env.issue(1)
    # A base URL pkilint rejects (no dot in the host) ends up in the shards' IDP.
    env.auth.config = dataclasses.replace(env.auth.config,
        base_url="http://x", crl=dataclasses.replace(env.auth.config.crl, shards=2))
    signs = env.auth.hsm.sign_count
    with pytest.raises(LintFailed, match="invalid_uri_syntax"):
        publisher.publish_full(env.auth, env.personnes)
    assert env.auth.hsm.sign_count == signs
    with env.auth.store.read() as s:   # (the root's first CRL was signed at init)
        assert s.execute(select(func.count()).select_from(Crl).where(
            Crl.ca_id == env.auth.ca(env.personnes).id)).scalar_one() == 0
        assert s.execute(select(CertificateAuthority.crl_number).where(
            CertificateAuthority.slug == env.personnes)).scalar_one() == 0


def test_publish_audits_each_crl(env: CrlEnv) -> None:
    from pki import audit
    from pki.store.models import AuditRecord

    published = publisher.publish(env.auth)
    with env.auth.store.read() as s:
        records = s.execute(select(AuditRecord.target, AuditRecord.details)
                            .where(AuditRecord.action == "crl.publish")).all()
    assert len(records) == len(published) + 1      # and the root's, signed at init
    for p in published:
        assert any(target == p.ca_slug and f'"number":{p.number},' in details
                   and hashlib.sha256(p.der).hexdigest() in details
                   for target, details in records)
    assert audit.verify(env.auth.store).ok


@pytest.mark.postgres
def test_postgresql_store(make_env: Callable[..., CrlEnv], pg_url: str) -> None:
    env = make_env(db_url=pg_url)
    good, bad, held = env.issue(3)
    lifecycle.revoke(env.auth, bad.serial, "keyCompromise",
                     invalidity_date=env.clock.now() - HOUR)
    lifecycle.hold(env.auth, held.serial)
    published = publisher.publish(env.auth) + env.publish_roots()
    full = crl_of(published, env.personnes)
    got = entries(full)
    assert set(got) == {bad.serial, held.serial}
    assert got[bad.serial].revocation_date_utc == env.clock.now()
    assert lint_crl(full.der) == []
    env.clock.advance(HOUR)
    lifecycle.release(env.auth, held.serial)
    delta = crl_of(publisher.publish(env.auth, delta=True), env.personnes, "delta")
    assert reason(entries(delta)[held.serial]) == "removeFromCRL"
    assert env.verify(bad, [full, crl_of(published, env.root_slug)]).returncode != 0
    assert env.verify(good, [full, crl_of(published, env.root_slug)]).returncode == 0


def test_big_crl_is_stored_byte_for_byte(env: CrlEnv) -> None:
    # Over 1 MiB: SQLite gets it through incremental blob I/O (see publisher._store).
    bulk_revoked(env, 30_000, at=env.clock.now() - 48 * HOUR)
    full = crl_of(publisher.publish(env.auth), env.personnes)
    assert len(full.der) > 1 << 20
    with env.auth.store.read() as s:
        stored = s.execute(select(Crl.der).where(Crl.number == full.number,
                                                 Crl.ca_id == env.auth.ca(env.personnes).id)
                           ).scalar_one()
    assert stored == full.der and len(x509.load_der_x509_crl(stored)) == 30_000


def test_full_publication_scan_leaves_sqlite_cache_size_as_it_was(env: CrlEnv) -> None:
    from sqlalchemy import text

    from pki.crl import source

    certs = env.issue(3)
    lifecycle.revoke(env.auth, certs[0].serial, "keyCompromise")
    ca_id = env.auth.ca(env.personnes).id
    with env.auth.store.session() as s:
        if s.connection().dialect.name != "sqlite":
            pytest.skip("SQLite only")
        s.execute(text("PRAGMA cache_size = -3000"))
        batches = list(source.revoked_batches(s, ca_id, sharded=False))
        assert sum(len(rows) for b in batches for rows in b.values()) == 1
        assert s.execute(text("PRAGMA cache_size")).scalar_one() == -3000
