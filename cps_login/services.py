"""Wiring: build the broker's services from a LoginConfig (no Flask here).

Trust anchors are the home's root CAs; the issuing CAs are candidate intermediates. Everything
that keeps state lives in the ``Services`` object that ``create_app`` receives: nothing at
module level, so two apps (two homes) can run in one process.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cps_login.access import load_matrix
from cps_login.auditsink import AuditSink, GroupCommitAuditSink
from cps_login.broker import LoginService
from cps_login.challenges import ChallengeStore, MemoryChallengeStore, RedisChallengeStore
from cps_login.config import LoginConfig
from cps_login.errors import CredentialRefused
from cps_login.pathcheck import PathValidator, check_usage
from cps_login.patient_auth import PatientAuth
from cps_login.patients import PatientService
from cps_login.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from cps_login.revocation import Fetcher, RevocationChecker
from cps_login.tokens import TokenIssuer, TokenValidator
from pki.ca.authority import Authority
from pki.ca.token_key import token_key
from pki.clock import SYSTEM_CLOCK, Clock
from pki.keytypes import KeyType
from pki.store.db import Store


class OrgClientChecker:
    """Is this TLS client certificate an organisation certificate of our ORGANISATIONS CA,
    valid and not revoked? Positive answers are cached ``cache_seconds`` (revocation of a
    relying service's certificate takes effect within that delay)."""

    def __init__(self, paths: PathValidator, revocation: RevocationChecker,
                 org_cas: list[x509.Certificate], policy_oid: str, clock: Clock,
                 cache_seconds: int = 30) -> None:
        self._paths = paths
        self._revocation = revocation
        self._org_cas = {c.fingerprint(hashes.SHA256()) for c in org_cas}
        self._policy = policy_oid
        self._clock = clock
        self._ttl = dt.timedelta(seconds=cache_seconds)
        self._cache: dict[bytes, dt.datetime] = {}
        self._lock = threading.Lock()

    def check(self, der: bytes) -> x509.Certificate:
        cert = x509.load_der_x509_certificate(der)
        now = self._clock.now()
        key = cert.fingerprint(hashes.SHA256())
        with self._lock:
            until = self._cache.get(key)
        if until is not None and now < until:
            return cert
        path = self._paths.validate(cert, [], now)
        if path.issuer.fingerprint(hashes.SHA256()) not in self._org_cas:
            raise CredentialRefused("not_organisation", "not issued by an ORGANISATIONS CA")
        check_usage(cert, self._policy)
        status = self._revocation.status(cert, path.issuer)
        if status.status != "good":
            raise CredentialRefused(status.status)
        with self._lock:
            self._cache[key] = now + self._ttl
        return cert


@dataclass
class Services:
    config: LoginConfig
    clock: Clock
    store: Store
    authority: Authority
    login: LoginService
    tokens: TokenIssuer
    validator: TokenValidator
    audit: AuditSink
    org_clients: OrgClientChecker
    patients: PatientService
    patient_auth: PatientAuth
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def build_services(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                   authority: Authority | None = None, fetcher: Fetcher | None = None,
                   challenges: ChallengeStore | None = None) -> Services:
    owns_authority = authority is None
    if authority is None:
        authority = Authority.open(config.home, config.db_url, clock=clock)
    pki_config = authority.config
    cas = authority.cas()
    anchors = [c.certificate for c in cas if c.role == "ROOT"]
    intermediates = [c.certificate for c in cas if c.role != "ROOT"]
    paths = PathValidator(anchors, intermediates)
    revocation = RevocationChecker(
        clock, fetcher=fetcher, ocsp_url=config.ocsp_url,
        timeout=config.revocation_timeout_seconds,
        max_age=dt.timedelta(seconds=config.ocsp_max_age_seconds),
        skew=dt.timedelta(seconds=config.clock_skew_seconds))
    if challenges is None:
        challenges = (RedisChallengeStore.from_url(config.redis_url, clock,
                                                   config.challenge_ttl_seconds)
                      if config.redis_url else
                      MemoryChallengeStore(clock, config.challenge_ttl_seconds))
    key = token_key(authority, config.token_key_label, KeyType.parse(config.token_key_type))
    tokens = TokenIssuer(key, issuer=config.issuer, clock=clock,
                         ttl_seconds=config.token_ttl_seconds, client_id=config.client_id,
                         scope=config.scope)
    validator = TokenValidator(tokens.jwks(), issuer=config.issuer, audience=config.audience,
                               clock=clock)
    audit = GroupCommitAuditSink(authority.store, clock)
    login = LoginService(store=authority.store, clock=clock, challenges=challenges, paths=paths,
                         revocation=revocation, tokens=tokens, audit=audit,
                         issuer=config.issuer, audience=config.audience,
                         auth_policy_oid=pki_config.profiles.auth_policy_oid)
    org_cas = [c.certificate for c in cas if c.role == "ORGANISATIONS"]
    org_clients = OrgClientChecker(paths, revocation, org_cas,
                                   pki_config.profiles.org_policy_oid, clock)
    patients = PatientService(authority.store, clock, matrix=load_matrix(config.matrix_file),
                              emergency_centres=config.emergency_centres)
    limiter: RateLimiter
    if config.redis_url:
        import redis

        limiter = RedisRateLimiter(redis.Redis.from_url(config.redis_url), clock,
                                   config.signin_max_attempts, config.signin_window_seconds)
    else:
        limiter = MemoryRateLimiter(clock, config.signin_max_attempts,
                                    config.signin_window_seconds)
    patient_auth = PatientAuth(authority.store, patients, limiter, config.session_key(),
                               config.patient_session_ttl_seconds)
    services = Services(config=config, clock=clock, store=authority.store, authority=authority,
                        login=login, tokens=tokens, validator=validator, audit=audit,
                        org_clients=org_clients, patients=patients,
                        patient_auth=patient_auth)
    if owns_authority:
        services.closers.append(authority.close)
    services.closers.append(audit.close)      # closed first: its connection, then the store
    return services
