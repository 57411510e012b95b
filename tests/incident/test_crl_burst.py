"""After a mass suspension settles, the signer's CRL side publishes a new full CRL and its delta."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.clock import FixedClock
from pki.crl import service as crl_service
from pki.crl.cache import PublicationCache
from pki.crl.publisher import PublishedCrl
from pki.crl.service import CrlService

from .conftest import WEAK, add_cards


def _kinds(published: list[PublishedCrl]) -> list[tuple[str, str]]:
    return [(p.ca_slug, p.kind) for p in published]


def test_settled_burst_gets_a_new_full_crl_and_delta(auth: Authority,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crl_service, "FULL_AFTER_CHANGES", 20)
    clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    auth.clock = clock
    service = CrlService(auth, PublicationCache())
    service.load()
    slug = auth.issuing_ca("PERSONNES").slug
    first = service.tick()
    assert (slug, "full") in _kinds(first)
    full_number = max(p.number for p in first if p.ca_slug == slug and p.kind == "full")
    serials = [s for _, pair in add_cards(auth, WEAK, 15) for s in pair]
    clock.advance(dt.timedelta(seconds=1))
    lifecycle.change_many(auth, serials[:20], "hold", selection={"card_model": WEAK},
                          batch_size=7)
    clock.advance(dt.timedelta(seconds=4))
    lifecycle.change_many(auth, serials[20:], "hold", selection={"card_model": WEAK})
    # Still bursting (changes 6 s and 2 s ago): neither a new base nor a growing delta yet.
    clock.advance(dt.timedelta(seconds=2))
    assert _kinds(service.tick()) == []
    clock.advance(dt.timedelta(seconds=30))
    after = service.tick()
    mine = [p for p in after if p.ca_slug == slug]
    assert [p.kind for p in mine] == ["full", "delta"]
    full, delta = mine
    assert full.number > full_number and delta.base_number == full.number
    listed = x509.load_der_x509_crl(full.der)
    held = {f"{e.serial_number:X}".zfill(32) for e in listed}
    assert set(serials) <= held and full.entries >= 30
    assert all(e.extensions.get_extension_for_class(x509.CRLReason).value.reason
               == x509.ReasonFlags.certificate_hold for e in listed
               if f"{e.serial_number:X}".zfill(32) in set(serials))
    # Settled and published: the next tick has nothing due.
    clock.advance(dt.timedelta(seconds=10))
    assert [p for p in service.tick() if p.ca_slug == slug] == []


def test_few_changes_make_no_new_full_crl(auth: Authority) -> None:
    service = CrlService(auth, PublicationCache())
    service.load()
    slug = auth.issuing_ca("PERSONNES").slug
    service.tick()
    serials = [s for _, pair in add_cards(auth, WEAK, 3) for s in pair]
    lifecycle.change_many(auth, serials, "hold", selection={"card_model": WEAK})
    later = service.tick(auth.clock.now() + dt.timedelta(seconds=30))
    assert [p.kind for p in later if p.ca_slug == slug] == ["delta"]


@pytest.mark.parametrize("search_up_to", [0, 10_000])
def test_delta_floor_indexed_or_searched_alike(auth: Authority, monkeypatch: pytest.MonkeyPatch,
                                               search_up_to: int) -> None:
    """A delta's many candidates are checked against an index of the published CRLs (one
    pass) instead of a byte search each: the same entries either way — holds listed,
    released holds as removeFromCRL, a permanent revocation kept."""
    from pki.crl import publisher

    monkeypatch.setattr(publisher, "_SEARCH_UP_TO", search_up_to)
    clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    auth.clock = clock
    service = CrlService(auth, PublicationCache())
    service.load()
    service.tick()
    serials = [s for _, pair in add_cards(auth, WEAK, 10) for s in pair]
    clock.advance(dt.timedelta(seconds=1))
    lifecycle.change_many(auth, serials, "hold", selection={})
    lifecycle.revoke(auth, serials[0], "keyCompromise")
    clock.advance(dt.timedelta(seconds=10))
    service.tick()                                   # a delta listing the holds
    lifecycle.change_many(auth, serials[1:6], "release", selection={})
    clock.advance(dt.timedelta(seconds=10))
    slug = auth.issuing_ca("PERSONNES").slug
    delta = next(p for p in service.tick() if p.ca_slug == slug and p.kind == "delta")
    reasons = {f"{e.serial_number:X}".zfill(32): e.extensions.get_extension_for_class(
        x509.CRLReason).value.reason for e in x509.load_der_x509_crl(delta.der)}
    assert reasons[serials[0]] == x509.ReasonFlags.key_compromise
    assert {reasons[s] for s in serials[1:6]} == {x509.ReasonFlags.remove_from_crl}
    assert {reasons[s] for s in serials[6:]} == {x509.ReasonFlags.certificate_hold}


def test_crl_read_outside_the_write_lock_misses_no_late_change(
        auth: Authority, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publication reads its entries before taking the write lock; a revocation committed in
    between is still listed (the entries are read again inside the write transaction)."""
    from pki.crl import publisher

    serials = [s for _, pair in add_cards(auth, WEAK, 3) for s in pair]
    slug = auth.issuing_ca("PERSONNES").slug
    real = publisher._collect_full
    late = iter([serials[0], None])

    def collect_then_revoke(*args: object, **kwargs: object) -> list[str]:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        serial = next(late)
        if serial is not None:          # after the first (unlocked) read only
            lifecycle.revoke(auth, serial, "keyCompromise")
        return out

    monkeypatch.setattr(publisher, "_collect_full", collect_then_revoke)
    (full,) = publisher.publish_full(auth, slug)
    listed = {f"{e.serial_number:X}".zfill(32) for e in x509.load_der_x509_crl(full.der)}
    assert serials[0] in listed and full.entries == 1
    # Nothing changed meanwhile: one read, and the numbers still increase.
    monkeypatch.setattr(publisher, "_collect_full", real)
    lifecycle.change_many(auth, serials[1:], "hold", selection={})
    (again,) = publisher.publish_full(auth, slug)
    assert again.number > full.number and again.entries == 6
    delta = publisher.publish_delta(auth, slug)
    assert [d.base_number for d in delta] == [again.number]
