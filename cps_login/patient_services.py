"""Wiring of the patient role: the patient space's services (no Flask, no key, no PKCS#11).

The patient role holds no token and loads no PKCS#11 module: it reads and writes the store,
counts sign-in failures (in Redis when ``redis_url`` is set, so the limit holds across
replicas), and signs patient sessions with the HMAC key in ``secrets/login-session.key``,
shared by every replica of the home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cps_login.access import load_matrix
from cps_login.config import LoginConfig
from cps_login.patient_auth import PatientAuth
from cps_login.patients import PatientService
from cps_login.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from pki.clock import SYSTEM_CLOCK, Clock
from pki.store.db import Store


@dataclass
class PatientServices:
    config: LoginConfig
    clock: Clock
    store: Store
    patients: PatientService
    patient_auth: PatientAuth
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def build_patient_services(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                           limiter: RateLimiter | None = None) -> PatientServices:
    store = Store(config.pki.effective_db_url(config.db_url))
    patients = PatientService(store, clock, matrix=load_matrix(config.matrix_file),
                              emergency_centres=config.emergency_centres)
    if limiter is None:
        if config.redis_url:
            import redis

            limiter = RedisRateLimiter(
                redis.Redis.from_url(config.redis_url, socket_timeout=2.0,
                                     socket_connect_timeout=2.0),
                clock, config.signin_max_attempts, config.signin_window_seconds,
                prefix=config.redis_prefix + "signin:")
        else:
            limiter = MemoryRateLimiter(clock, config.signin_max_attempts,
                                        config.signin_window_seconds)
    patient_auth = PatientAuth(store, patients, limiter, config.session_key(),
                               config.patient_session_ttl_seconds)
    return PatientServices(config=config, clock=clock, store=store, patients=patients,
                           patient_auth=patient_auth, closers=[store.dispose])
