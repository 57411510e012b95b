"""With ``--crl-shards N`` the CA still publishes (and the status side still serves) its complete
CRL at ``/crl/<slug>.crl`` beside the partition CRLs, with its own delta."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from cryptography import x509

from pki import urls
from pki.ca import lifecycle
from pki.ca.authority import serial_hex
from pki.ca.lint import lint_crl
from pki.crl import publisher
from pki.crl.cache import PublicationCache
from pki.crl.reader import CrlReader
from pki.http import Request

from .conftest import CrlEnv

HOUR = dt.timedelta(hours=1)


def listed(der: bytes) -> set[str]:
    return {serial_hex(r.serial_number) for r in x509.load_der_x509_crl(der)}


def test_complete_crl_beside_the_shards(make_env: Callable[..., CrlEnv]) -> None:
    env = make_env(crl_shards=3)
    certs = env.issue(9)
    revoked = {c.serial for c in certs[::2]}
    for serial in revoked:
        lifecycle.revoke(env.auth, serial, "keyCompromise")
    env.clock.advance(HOUR)
    published = [p for p in publisher.publish(env.auth) if p.ca_slug == env.personnes]
    assert sorted(p.shard for p in published if p.shard is not None) == [0, 1, 2]
    (complete,) = [p for p in published if p.shard is None]
    assert complete.path == urls.crl_path(env.personnes, None, delta=False)
    assert complete.path == f"/crl/{env.personnes}.crl"
    assert listed(complete.der) == revoked == set().union(
        *(listed(p.der) for p in published if p.shard is not None))
    parsed = x509.load_der_x509_crl(complete.der)
    assert not any(isinstance(e.value, x509.IssuingDistributionPoint) for e in parsed.extensions)
    assert lint_crl(complete.der) == []
    assert len({p.number for p in published}) == 4

    # its delta lists a change of any partition
    env.clock.advance(HOUR)
    lifecycle.revoke(env.auth, certs[1].serial, "affiliationChanged")
    deltas = [p for p in publisher.publish(env.auth, delta=True) if p.ca_slug == env.personnes]
    (complete_delta,) = [d for d in deltas if d.shard is None]
    assert complete_delta.base_number == complete.number
    assert certs[1].serial in listed(complete_delta.der)
    assert lint_crl(complete_delta.der) == []

    # the status side serves it, and is ready only once it can
    reader = CrlReader(env.auth, PublicationCache())
    reader.load()
    assert reader.ready()
    answer = reader.handler(Request(method="GET", path=f"/crl/{env.personnes}.crl",
                                      query="", headers={}, body=b""))
    assert answer is not None and answer.status == 200
    assert listed(answer.body) == revoked
