"""Wiring of the patient role: the patient space's services (no Flask, no key, no PKCS#11).

The patient role holds no token and loads no PKCS#11 module: it reads and writes the store,
counts sign-in failures and records signed-out sessions (in Redis when ``redis_url`` is set,
else in memory and in the store respectively, so replicas agree), signs patient sessions with
the HMAC key in ``secrets/login-session.key`` and seals TOTP seeds with ``secrets/totp.key``,
both shared by every replica of the home, and seals secure messages with
``secrets/messages.key`` (``message_key_file``; the broker role reads it too). Clear seeds
from before migration 0007 are sealed here, before the role answers anyone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cps_login import totp
from cps_login.access import load_matrix
from cps_login.config import LoginConfig
from cps_login.patient_auth import (
    PatientAuth,
    RedisRevocations,
    SessionRevocations,
    StoreRevocations,
)
from cps_login.patient_space import MessageBox, PatientSpace
from cps_login.patients import PatientService
from cps_login.ratelimit import (
    FailureCounts,
    MemoryFailureCounts,
    RedisFailureCounts,
    SigninThrottle,
    ThrottlePolicy,
)
from pki.clock import SYSTEM_CLOCK, Clock
from pki.store.db import Store


@dataclass
class PatientServices:
    config: LoginConfig
    clock: Clock
    store: Store
    patients: PatientService
    patient_auth: PatientAuth
    space: PatientSpace
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def build_patient_services(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                           counts: FailureCounts | None = None) -> PatientServices:
    policy = _policy(config)                  # bad settings refused before anything opens
    store = Store(config.pki.effective_db_url(config.db_url))
    patients = PatientService(store, clock, matrix=load_matrix(config.matrix_file),
                              emergency_centres=config.emergency_centres)
    revocations: SessionRevocations = StoreRevocations(store, clock)
    closers: list[Callable[[], None]] = [store.dispose]
    if config.redis_url:
        client = _redis(config.redis_url)
        closers.append(client.close)
        counts = counts or RedisFailureCounts(client, prefix=config.redis_prefix + "signin:")
        revocations = RedisRevocations(client, clock, prefix=config.redis_prefix + "revoked:")
    throttle = SigninThrottle(counts or MemoryFailureCounts(clock), clock, policy)
    patient_auth = PatientAuth(store, patients, throttle, config.session_key(),
                               totp.SeedBox(config.totp_key()), revocations,
                               config.patient_session_ttl_seconds)
    patient_auth.seal_clear_seeds()
    space = PatientSpace(patients, MessageBox(config.message_key()))
    return PatientServices(config=config, clock=clock, store=store, patients=patients,
                           patient_auth=patient_auth, space=space, closers=closers)


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def _policy(config: LoginConfig) -> ThrottlePolicy:
    return ThrottlePolicy(free_failures=config.signin_max_attempts,
                          backoff_base=config.signin_backoff_base_seconds,
                          backoff_max=config.signin_backoff_max_seconds,
                          client_max_failures=config.signin_client_max_failures,
                          client_window=config.signin_window_seconds,
                          account_max_failures=config.signin_account_max_failures,
                          account_window=config.signin_account_window_seconds)
