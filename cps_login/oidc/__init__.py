"""The broker as an OpenID Connect provider (issue 14): see docs/oidc.md.

``install(app, services, clock)`` adds the provider to the broker app. It is built at the
first OpenID Connect request (an app whose services are stand-ins, as some tests make, never
builds it): its state in Redis when the broker has ``redis_url`` (replicas), else in the
broker's memory (one worker, like its challenges), or in the store with
``"extra": {"oidc_state": "store"}`` (cps_login.oidc.state).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pki.clock import Clock

if TYPE_CHECKING:
    from flask import Flask

    from cps_login.oidc.provider import Provider
    from cps_login.services import BrokerServices

TX_PER_CLIENT = 100
# The provider's state in the one broker process (no Redis): what a login leaves for the
# 8 hours its session may last is ~5 KB (its refresh session with the certificate that logged
# in, its nonce), so ~50,000 logins an 8-hour day; a larger service sets Redis.
STATE_MB = 256
TX_WINDOW = 300


@functools.cache
def _never_waits() -> Callable[[str, str], bool]:
    """``front.never_waits``, imported once (an import statement runs the import machinery
    at every call: asked at every request)."""
    from cps_login.oidc.front import never_waits

    return never_waits


class LazyProvider:
    """Builds the ``Provider`` once, at first use, under a lock."""

    def __init__(self, services: BrokerServices, clock: Clock) -> None:
        self._services = services
        self._clock = clock
        self._provider: Provider | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self.get(), name)      # the provider's attributes, built if need be

    def answers_without_waiting(self, method: str, path: str) -> bool:
        """The requests of the browser login and the token endpoint, once the provider is
        built and everything they touch is in this process (``Provider.local_only``): the
        HTTP server answers them on its event loop (pki.http.server)."""
        provider = self._provider
        if provider is None or not provider.local_only:
            return False
        return _never_waits()(method, path)

    def get(self) -> Provider:
        provider = self._provider
        if provider is None:
            with self._lock:
                if self._provider is None:
                    self._provider = build(self._services, self._clock)
                provider = self._provider
        return provider


def install(app: Flask, services: BrokerServices, clock: Clock) -> LazyProvider:
    """The provider's Flask routes, and its WSGI front (the browser login and the token
    endpoint: ``cps_login.oidc.front``) before them."""
    from cps_login.oidc import web
    from cps_login.oidc.front import OidcFront

    lazy = LazyProvider(services, clock)
    app.extensions[web.EXTENSION] = lazy
    app.register_blueprint(web.bp)
    app.wsgi_app = OidcFront(app.wsgi_app, lazy.get)  # type: ignore[method-assign]
    app.answers_without_waiting = lazy.answers_without_waiting  # type: ignore[attr-defined]
    return lazy


def build(services: BrokerServices, clock: Clock) -> Provider:
    from cps_login.oidc.provider import Provider
    from cps_login.oidc.state import MemoryState, RedisState, SharedState, StoreState
    from cps_login.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter

    config = services.config
    state: SharedState
    if config.redis_url:
        from cps_login.services import redis_client

        state = RedisState(redis_client(config.redis_url), config.redis_prefix)
    elif config.extra.get("oidc_state") == "store":
        state = StoreState(services.store, clock)
    else:
        # one process: bounded (then 503), ``extra.oidc_state_mb`` MiB as the objects take it
        mib = int(config.extra.get("oidc_state_mb", STATE_MB))
        state = MemoryState(clock, max_bytes=mib * 1024 * 1024)
    # Login transactions are made for anonymous browsers: each address may open
    # ``extra.oidc_tx_per_client`` (TX_PER_CLIENT) of them per window (beyond: 429 for that
    # address only), as challenges are bounded per address (issue 13).
    per_client = int(config.extra.get("oidc_tx_per_client", TX_PER_CLIENT))
    limiter: RateLimiter
    if config.redis_url:
        from cps_login.services import redis_client

        limiter = RedisRateLimiter(redis_client(config.redis_url), clock, per_client,
                                   TX_WINDOW, prefix=config.redis_prefix + "oidc-tx:")
    else:
        limiter = MemoryRateLimiter(clock, per_client, TX_WINDOW)
    return Provider(services, state, clock, tx_limiter=limiter)
