"""``issue_many``'s batched path changes nothing: same rows, audit links and errors.

It reads the directory ahead (one query per chunk of requests), keeps one builder view per CA,
draws serials in blocks and stores each batch with bulk INSERTs; each is checked here against
what the request-by-request path stored and refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import add_professional, add_structure  # tests/conftest.py helpers
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import event, func, select, update

from pki import audit, ids, urls
from pki.ca import profiles
from pki.ca.authority import HOLDER_PREFETCH, Authority, IssueRequest, serial_hex
from pki.errors import InvalidInput, NotFound, UnknownProfession
from pki.store.models import AuditRecord, Certificate, Professional, Structure

RSA_SUBJECT = rsa.generate_private_key(65537, 2048).public_key()
EC_SUBJECT = ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.fixture
def counted(authority: Authority) -> Iterator[list[str]]:
    """The SQL statements the authority's engine runs, as they run."""
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(authority.store.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(authority.store.engine, "before_cursor_execute", before)


def _professionals(auth: Authority, n: int, start: int = 2000100000) -> list[str]:
    return [add_professional(auth, str(start + i * 10), profession=(10, 40, 21)[i % 3],
                             given=f"Prénom{i}", surname=f"Nom{i}") for i in range(n)]


def test_prefetch_reads_the_directory_once_per_chunk(authority: Authority,
                                                     counted: list[str]) -> None:
    people = _professionals(authority, 12)
    requests = [IssueRequest(p, RSA_SUBJECT, rpps=r) for r in people for p in ("auth", "sign")]
    counted.clear()
    issued = list(authority.issue_many(requests, batch_size=10))
    assert len(issued) == 24
    lookups = [s for s in counted if "FROM professional" in s]
    assert len(lookups) == 1, lookups
    # Every certificate names its own holder, with the holder's profession.
    with authority.store.read() as s:
        by_id = {p.id: p for p in s.execute(select(Professional)).scalars()}
        rows = {c.serial: c for c in s.execute(select(Certificate)).scalars()}
    for req, out in zip(requests, issued, strict=True):
        cert = out.certificate
        pro = by_id[rows[out.serial].professional_id]  # type: ignore[index]
        assert pro.rpps == req.rpps
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == ids.national_id(pro.rpps)
        code = cert.extensions.get_extension_for_oid(profiles.PROFESSION_CODE_OID).value
        assert code.value == profiles.der_integer(pro.profession_code)  # type: ignore[attr-defined]


def test_prefetch_reads_ahead_chunk_by_chunk(authority: Authority, counted: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert HOLDER_PREFETCH >= 64
    monkeypatch.setattr("pki.ca.authority.HOLDER_PREFETCH", 3)
    people = _professionals(authority, 5, start=2100100000)
    # Chunks: p0 p0 p1 | p1 p2 p2 | p3 p3 p4 | p4 -- p1 and p4 are cached when their second
    # request comes, so three reads, none for the last chunk.
    requests = (IssueRequest(p, EC_SUBJECT, rpps=r) for r in people for p in ("auth", "sign"))
    counted.clear()
    issued = list(authority.issue_many(requests))
    assert len(issued) == 10
    lookups = [s for s in counted if "FROM professional" in s]
    assert len(lookups) == 3, lookups


def _counts(auth: Authority) -> tuple[int, int]:
    with auth.store.read() as s:
        return (s.execute(select(func.count()).select_from(Certificate)).scalar_one(),
                s.execute(select(func.count()).select_from(AuditRecord)).scalar_one())


@pytest.mark.parametrize("bad, error", [
    (ids.luhn_complete("2999999999"), NotFound),      # well-formed, not in the directory
    ("12345678901", InvalidInput),                    # wrong check digit
    ("123", InvalidInput),                            # malformed
])
def test_prefetch_still_refuses_a_bad_rpps_and_stores_nothing(
        authority: Authority, bad: str, error: type[Exception]) -> None:
    people = _professionals(authority, 4, start=2200100000)
    before = _counts(authority)
    requests = [IssueRequest("auth", RSA_SUBJECT, rpps=r) for r in people[:2]]
    requests += [IssueRequest("sign", RSA_SUBJECT, rpps=bad)]
    requests += [IssueRequest("auth", RSA_SUBJECT, rpps=r) for r in people[2:]]
    with pytest.raises(error) as raised:
        list(authority.issue_many(requests))
    assert bad in str(raised.value)
    assert _counts(authority) == before
    # The same request alone fails the same way (prefetch or not).
    with pytest.raises(error):
        authority.issue(IssueRequest("sign", RSA_SUBJECT, rpps=bad))
    assert _counts(authority) == before


def test_prefetch_leaves_an_unknown_profession_to_the_usual_error(authority: Authority) -> None:
    (rpps,) = _professionals(authority, 1, start=2300100000)
    with authority.store.session() as s:
        s.execute(update(Professional).where(Professional.rpps == rpps)
                  .values(profession_code=9999))
    before = _counts(authority)
    with pytest.raises(UnknownProfession):
        list(authority.issue_many([IssueRequest("auth", RSA_SUBJECT, rpps=rpps)]))
    assert _counts(authority) == before


def test_missing_rpps_or_structure_refused(authority: Authority) -> None:
    before = _counts(authority)
    with pytest.raises(InvalidInput, match="needs --rpps"):
        list(authority.issue_many([IssueRequest("auth", RSA_SUBJECT)]))
    with pytest.raises(InvalidInput, match="needs a structure"):
        list(authority.issue_many([IssueRequest("org", RSA_SUBJECT)]))
    assert _counts(authority) == before


def test_batch_rows_and_audit_links(authority: Authority) -> None:
    people = _professionals(authority, 3, start=2400100000)
    structure_id = add_structure(authority)
    requests = [IssueRequest(p, RSA_SUBJECT, rpps=r) for r in people for p in ("auth", "sign")]
    requests.append(IssueRequest("org", EC_SUBJECT, structure_id=structure_id,
                                 dns_names=("dmp.chu-test.fr",)))
    with authority.store.read() as s:
        last_seq = s.execute(select(func.max(AuditRecord.seq))).scalar_one() or 0
    issued = list(authority.issue_many(requests, actor="batch-test", batch_size=4))
    assert [c.profile for c in issued] == [r.profile for r in requests]
    with authority.store.read() as s:
        rows = {c.id: c for c in s.execute(select(Certificate)).scalars()}
        pros = {p.id: p for p in s.execute(select(Professional)).scalars()}
        st = s.execute(select(Structure)).scalar_one()
        links = s.execute(select(AuditRecord).where(AuditRecord.seq > last_seq)
                          .order_by(AuditRecord.seq)).scalars().all()
    assert [link.target for link in links] == [c.serial for c in issued]
    for out, link in zip(issued, links, strict=True):
        row = rows[out.id]
        cert = out.certificate
        assert row.serial == out.serial == serial_hex(cert.serial_number)
        assert row.der == out.der
        assert row.profile == out.profile
        assert row.ca_id == authority.ca(out.ca_slug).id
        # The subject text is made from the Name given to the builder (as before the batch
        # path): a multi-valued RDN keeps its given order, not the DER SET OF order.
        if row.professional_id is not None:
            pro = pros[row.professional_id]
            subject = profiles.professional_subject(ids.profession(pro.profession_code).label,
                                                    pro.given_name, pro.surname,
                                                    ids.national_id(pro.rpps))
        else:
            subject = profiles.structure_subject(st.state, st.name, st.structure_id,
                                                 "dmp.chu-test.fr")
        assert cert.subject == subject
        assert row.subject == profiles.name_text(subject)
        assert row.status == "active" and row.reason is None and row.revoked_at is None
        assert row.shard == (urls.shard_of(cert.serial_number, authority.config.crl.shards)
                             or 0)
        assert row.not_before == cert.not_valid_before_utc
        assert row.not_after == cert.not_valid_after_utc
        assert row.created_at.tzinfo is not None
        assert (row.professional_id is None) == (out.profile == "org")
        assert (row.structure_id is None) != (out.profile == "org")
        assert link.action == "cert.issue" and link.actor == "batch-test"
        assert link.details == audit.canonical(
            {"profile": row.profile, "ca": out.ca_slug, "subject": row.subject})
    report = audit.verify(authority.store)
    assert report.ok, report.problems


def test_duplicate_serial_in_a_batch_stores_nothing(authority: Authority,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pki.errors import Duplicate
    (rpps,) = _professionals(authority, 1, start=2500100000)
    before = _counts(authority)
    monkeypatch.setattr(profiles, "random_serials", lambda block=64: iter([1 << 100] * 4))
    with pytest.raises(Duplicate):
        list(authority.issue_many([IssueRequest("auth", RSA_SUBJECT, rpps=rpps)] * 2))
    assert _counts(authority) == before
    assert audit.verify(authority.store).ok


def test_one_builder_view_per_ca_until_the_cache_is_dropped(authority: Authority) -> None:
    ca = authority.issuing_ca("PERSONNES")
    assert authority.issuing_ca("PERSONNES").view is ca.view      # its templates are reused
    assert (ca.view.slug, ca.view.certificate) == (ca.slug, ca.certificate)
    authority.invalidate_cache()
    assert authority.issuing_ca("PERSONNES").view is not ca.view
