"""The signer's CRL tick never signs a root CA's CRL: the root key is offline (its own token,
opened only by the `cps-admin root crl` ceremony), even when that CRL is due."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pki import urls
from pki.crl.cache import PublicationCache
from pki.crl.service import CrlService

from .conftest import CrlEnv


def test_tick_leaves_a_due_root_crl_to_the_ceremony(make_env: Callable[..., CrlEnv]) -> None:
    env = make_env()
    service = CrlService(env.auth, PublicationCache())
    service.load()
    root_path = urls.crl_path(env.root_slug)
    stored = service.cache.snapshot[root_path]          # signed at init, served from the store
    env.clock.advance(dt.timedelta(days=env.auth.config.crl.root_validity_days + 1))
    published = service.tick()
    assert published and env.root_slug not in {p.ca_slug for p in published}
    assert {p.ca_slug for p in published} == {c.slug for c in env.auth.issuing_cas()}
    assert service.last_errors == []                     # not tried, so no HSM error either
    assert service.cache.snapshot[root_path] == stored
    assert service.ready()
