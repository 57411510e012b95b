"""Wiring of the broker role: its services built from a LoginConfig (no Flask here).

The broker holds no ``Authority`` and can reach no CA key: trust anchors and intermediates are
read from the store's ``ca`` table, revocation is asked of the status tier over HTTP OCSP (CRL
as fallback, from the same tier), and access tokens are signed with ``token:broker`` in the
broker's own token ``CPS-BROKER``. Everything that keeps state lives in the returned
``BrokerServices``: nothing at module level, so two apps can run in one process. With
``redis_url`` set, challenges (and the patient rate limits, see ``patient_services``) live in
Redis, so any replica accepts a challenge another one issued, once.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cps_login.access import load_matrix
from cps_login.auditsink import AuditSink, GroupCommitAuditSink
from cps_login.broker import LoginService
from cps_login.challenges import ChallengeStore, MemoryChallengeStore, RedisChallengeStore
from cps_login.config import LoginConfig
from cps_login.errors import CredentialRefused
from cps_login.pathcheck import PathValidator, check_usage
from cps_login.patients import PatientService
from cps_login.revocation import Fetcher, RevocationChecker
from cps_login.token_key import open_broker_token, token_key
from cps_login.tokens import TokenIssuer, TokenValidator
from cps_login.trust import Trust, load_trust
from pki.clock import SYSTEM_CLOCK, Clock
from pki.keytypes import KeyType
from pki.store.db import Store

if TYPE_CHECKING:
    from pki.hsm import Hsm


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
class BrokerServices:
    config: LoginConfig
    clock: Clock
    store: Store
    trust: Trust
    login: LoginService
    tokens: TokenIssuer
    validator: TokenValidator
    revocation: RevocationChecker
    audit: AuditSink
    org_clients: OrgClientChecker
    patients: PatientService          # the professionals' record API (/api/...)
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def open_store(config: LoginConfig) -> Store:
    return Store(config.pki.effective_db_url(config.db_url))


def build_broker_services(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                          fetcher: Fetcher | None = None,
                          challenges: ChallengeStore | None = None,
                          token_hsm: Hsm | None = None) -> BrokerServices:
    """The broker's services. ``token_hsm``: an open session on the broker token to share
    (tests); by default the broker token is opened here and closed with the services."""
    pki_config = config.pki
    store = open_store(config)
    closers: list[Callable[[], None]] = [store.dispose]
    try:
        trust = load_trust(store)
        hsm = token_hsm
        if hsm is None:
            hsm = open_broker_token(pki_config)
            closers.append(hsm.close)
        key = token_key(hsm, clock, config.token_key_label,
                        KeyType.parse(config.token_key_type), lock_dir=config.home)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    paths = PathValidator(trust.anchors, trust.intermediates, cache_bytes=config.cache_max_bytes)
    revocation = RevocationChecker(
        clock, fetcher=fetcher, ocsp_url=config.ocsp_url,
        timeout=config.revocation_timeout_seconds,
        max_age=dt.timedelta(seconds=config.ocsp_max_age_seconds),
        skew=dt.timedelta(seconds=config.clock_skew_seconds))
    if challenges is None:
        challenges = (RedisChallengeStore(redis_client(config.redis_url), clock,
                                          config.challenge_ttl_seconds,
                                          prefix=config.redis_prefix + "challenge:",
                                          per_client=config.challenge_max_per_client)
                      if config.redis_url else
                      MemoryChallengeStore(clock, config.challenge_ttl_seconds,
                                           max_bytes=config.challenge_store_max_bytes,
                                           per_client=config.challenge_max_per_client))
    tokens = TokenIssuer(key, issuer=config.issuer, clock=clock,
                         ttl_seconds=config.token_ttl_seconds, client_id=config.client_id,
                         scope=config.scope)
    validator = TokenValidator(tokens.jwks(), issuer=config.issuer, audience=config.audience,
                               clock=clock)
    audit = GroupCommitAuditSink(store, clock)
    closers.append(audit.close)      # closed first: its connection, then the store
    login = LoginService(store=store, clock=clock, challenges=challenges, paths=paths,
                         revocation=revocation, tokens=tokens, audit=audit,
                         issuer=config.issuer, audience=config.audience,
                         auth_policy_oid=pki_config.profiles.auth_policy_oid,
                         accept_software_keys=config.accept_software_keys,
                         cache_max_bytes=config.cache_max_bytes)
    org_clients = OrgClientChecker(paths, revocation, trust.organisation_cas,
                                   pki_config.profiles.org_policy_oid, clock)
    patients = PatientService(store, clock, matrix=load_matrix(config.matrix_file),
                              emergency_centres=config.emergency_centres)
    return BrokerServices(config=config, clock=clock, store=store, trust=trust, login=login,
                          tokens=tokens, validator=validator, revocation=revocation,
                          audit=audit, org_clients=org_clients, patients=patients,
                          closers=closers)
