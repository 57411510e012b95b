"""The broker as an OpenID Connect provider (issue 14): see docs/oidc.md.

``install(app, services, clock)`` adds the provider to the broker app: its state in Redis when
the broker has ``redis_url`` (replicas), else in the broker's memory (one worker, like its
challenges), or in the store with ``"extra": {"oidc_state": "store"}`` (cps_login.oidc.state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pki.clock import Clock

if TYPE_CHECKING:
    from flask import Flask

    from cps_login.oidc.provider import Provider
    from cps_login.services import BrokerServices


TX_PER_CLIENT = 100
TX_WINDOW = 300


def install(app: Flask, services: BrokerServices, clock: Clock) -> Provider:
    from cps_login.oidc import web
    from cps_login.oidc.provider import Provider
    from cps_login.oidc.state import MemoryState, RedisState, SharedState, StoreState

    config = services.config
    state: SharedState
    if config.redis_url:
        from cps_login.services import redis_client

        state = RedisState(redis_client(config.redis_url), config.redis_prefix)
    elif config.extra.get("oidc_state") == "store":
        state = StoreState(services.store, clock)
    else:
        state = MemoryState(clock)
    from cps_login.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter

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
    provider = Provider(services, state, clock, tx_limiter=limiter)
    app.extensions[web.EXTENSION] = provider
    app.register_blueprint(web.bp)
    return provider
