"""The claims the provider gives about a professional (ID token, userinfo): Pro Santé
Connect's (``cps_login.claims_psc.psc_claims``: exercise situations from the directory), with
``acr``/``amr``/``auth_time`` from the authenticator the card proof established.

The directory part is cached ``ttl`` seconds per (professional, organisation), as the broker
caches practices: a change in the directory shows within that delay; how the holder
authenticated is never cached (it is the login's own)."""

from __future__ import annotations

import threading
import time
from typing import Any

from cps_login.claims_psc import AuthContext, psc_claims
from cps_login.oidc.subject import Subject
from pki.store.db import Store

_MAX_ENTRIES = 50_000


class Claims:
    def __init__(self, store: Store, ttl: float = 60.0) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, subject: Subject) -> dict[str, Any]:
        auth = AuthContext.for_key_location(subject.key_storage, subject.auth_time)
        key = (subject.rpps, subject.organisation)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            claims = dict(hit[1])
        else:
            with self._store.read() as session:
                claims = psc_claims(session, subject.rpps, organisation=subject.organisation,
                                    auth=auth)
            with self._lock:
                if len(self._cache) >= _MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key] = (now + self._ttl, dict(claims))
        claims.update(sub=subject.sub, acr=auth.acr, amr=list(auth.amr),
                      Palier_Authentification=auth.palier, auth_time=auth.auth_time)
        return claims
