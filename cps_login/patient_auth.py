"""Patient sign-in: password (argon2id) + TOTP code, then a short HMAC-signed session.

Unknown INS, wrong password, wrong or reused TOTP code: one outward answer
(``PatientAuthFailed``, 401 ``invalid_credentials``), the precise reason in the audit chain,
and the same work done (an argon2 verification against a dummy hash when the INS is unknown).
Failures are throttled by ``cps_login.ratelimit.SigninThrottle`` (per account and client,
backoff; 429). TOTP seeds are stored sealed (``totp.SeedBox``); one that does not open refuses
the sign-in with an error in the log, like a wrong code outside.

A session token carries a random ``sid``; sign-out records it as revoked until the token would
have expired (``patient_session_revoked`` in the store, or Redis), and every request checks it,
so a signed-out token is refused by every worker and replica.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select

from cps_login import totp
from cps_login.challenges import redis_guard
from cps_login.errors import PatientAuthFailed
from cps_login.patients import PatientService
from cps_login.ratelimit import SigninThrottle
from pki import audit, ids
from pki.clock import Clock
from pki.errors import InvalidInput
from pki.store.db import Store
from pki.store.patient_models import Patient, PatientSessionRevoked

log = logging.getLogger(__name__)

MIN_PASSWORD = 12
_SESSION_PREFIX = "pt1"
_MAX_SID = 32


@dataclass(frozen=True)
class PatientSession:
    ins: str
    expires: int
    token: str


@dataclass(frozen=True)
class Activation:
    totp_secret: str
    provisioning_uri: str


class SessionRevocations(Protocol):
    def revoke(self, sid: str, expires: int) -> None:
        """Refuse session ``sid`` from now until ``expires`` (unix seconds)."""

    def revoked(self, sid: str) -> bool: ...


class StoreRevocations:
    """Revocations in the store every replica reads; expired ones pruned at each sign-out."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def revoke(self, sid: str, expires: int) -> None:
        now = int(self._clock.now().timestamp())
        with self._store.session() as session:
            session.execute(delete(PatientSessionRevoked)
                            .where(PatientSessionRevoked.expires_at <= now))
            session.merge(PatientSessionRevoked(sid=sid, expires_at=expires))

    def revoked(self, sid: str) -> bool:
        with self._store.read() as session:
            return session.get(PatientSessionRevoked, sid) is not None


class RedisRevocations:
    """Revocations in Redis: one key per session, expiring with the session itself."""

    def __init__(self, client: Any, clock: Clock, prefix: str = "cps:login:revoked:") -> None:
        self._redis = client
        self._clock = clock
        self._prefix = prefix

    def revoke(self, sid: str, expires: int) -> None:
        ttl = expires - int(self._clock.now().timestamp()) + 1
        if ttl > 0:
            with redis_guard("session revocation"):
                self._redis.set(self._prefix + sid, b"1", ex=ttl)

    def revoked(self, sid: str) -> bool:
        with redis_guard("session revocation"):
            return bool(self._redis.exists(self._prefix + sid))


class PatientAuth:
    def __init__(self, store: Store, patients: PatientService, throttle: SigninThrottle,
                 session_key: bytes, seeds: totp.SeedBox, revocations: SessionRevocations,
                 session_ttl_seconds: int = 900, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._patients = patients
        self._clock = patients.clock
        self._throttle = throttle
        self._key = session_key
        self._seeds = seeds
        self._revocations = revocations
        self._ttl = session_ttl_seconds
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def seal_clear_seeds(self) -> int:
        """Seal the clear seeds written before migration 0007; the number sealed. Safe to run
        in several replicas at once: a row is only changed while its clear seed is still there."""
        with self._store.session() as session:
            rows = session.execute(select(Patient.id, Patient.ins, Patient.totp_secret)
                                   .where(Patient.totp_secret.is_not(None))).all()
        for pid, ins, clear in rows:
            with self._store.session() as session:
                patient = session.get(Patient, pid)
                if patient is not None and clear is not None and patient.totp_secret == clear:
                    patient.totp_seed = self._seeds.seal(ins, clear)
                    patient.totp_secret = None
        if rows:
            log.warning("sealed %d clear TOTP seeds from before migration 0007", len(rows))
        return len(rows)

    # --- activation ---------------------------------------------------------------------
    def activate(self, ins: str, code: str, password: str, client: str = "") -> Activation:
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password must have at least {MIN_PASSWORD} characters")
        account = f"activate:{_canonical(ins)}"
        self._throttle.check(account, client)
        with self._store.session() as session:
            patient = self._patients.check_activation(session, ins, code)
            if patient is None:
                self._throttle.failed(account, client)
                raise PatientAuthFailed("activation_refused")
            secret = totp.new_secret()
            patient.password_hash = self._hasher.hash(password)
            patient.totp_seed = self._seeds.seal(patient.ins, secret)
            patient.totp_secret = None
            patient.activation_hash = None
            patient.activation_expires = None
            audit.append(session, "patient.activate", patient.ins, {}, actor=patient.ins,
                         clock=self._clock)
            ins = patient.ins
        return Activation(secret, totp.provisioning_uri(secret, ins))

    # --- sign-in ------------------------------------------------------------------------
    def sign_in(self, ins: str, password: str, code: str, client: str = "") -> PatientSession:
        canonical = _canonical(ins)
        self._throttle.check(canonical, client)
        reason = None
        with self._store.session() as session:
            patient = (session.execute(select(Patient).where(Patient.ins == canonical))
                       .scalar_one_or_none() if canonical else None)
            stored = patient.password_hash if patient is not None else None
            password_ok = self._verify(stored or self._dummy, password) and stored is not None
            if patient is None:
                reason = "unknown_patient"
            elif not password_ok:
                reason = "wrong_password"
            else:
                now = self._clock.now().timestamp()
                seed = self._seed(patient)
                step = None if seed is None else totp.matching_step(seed, code, now)
                if seed is None:
                    reason = "totp_seed_unreadable"
                elif step is None:
                    reason = "wrong_totp"
                elif step <= patient.totp_last_step:
                    reason = "totp_replayed"
                else:
                    patient.totp_last_step = step
            audit.append(session, "patient.signin" if reason is None else "patient.signin_refused",
                         canonical or ins[:32], {"reason": reason, "client": client},
                         actor=canonical or "anonymous", clock=self._clock)
        if reason is not None:
            self._throttle.failed(canonical, client)
            raise PatientAuthFailed(reason)
        self._throttle.succeeded(canonical, client)
        return self._issue(canonical)

    def _seed(self, patient: Patient) -> str | None:
        """The patient's TOTP seed, or None (logged) when the sealed seed does not open."""
        if patient.totp_secret is not None:   # written clear by a replica older than 0007
            patient.totp_seed = self._seeds.seal(patient.ins, patient.totp_secret)
            patient.totp_secret = None
        if patient.totp_seed is None:
            log.error("patient %s: no TOTP seed stored; sign-in refused", patient.ins)
            return None
        try:
            return self._seeds.open(patient.ins, patient.totp_seed)
        except totp.SeedUnreadable as exc:
            log.error("patient %s: TOTP seed cannot be decrypted (%s; is secrets/totp.key the "
                      "one it was sealed with?); sign-in refused", patient.ins, exc)
            return None

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # --- sessions -----------------------------------------------------------------------
    def _issue(self, ins: str) -> PatientSession:
        expires = int(self._clock.now().timestamp()) + self._ttl
        payload = _b64(json.dumps({"ins": ins, "exp": expires,
                                   "sid": secrets.token_urlsafe(9)}).encode())
        mac = _b64(hmac.new(self._key, f"{_SESSION_PREFIX}.{payload}".encode(),
                            hashlib.sha256).digest())
        return PatientSession(ins, expires, f"{_SESSION_PREFIX}.{payload}.{mac}")

    def sign_out(self, token: str) -> None:
        """End the session of ``token`` on every replica; an invalid token ends nothing."""
        try:
            session, sid = self._verified(token)
        except PatientAuthFailed:
            return
        self._revocations.revoke(sid, session.expires)

    def session(self, token: str) -> PatientSession:
        session, sid = self._verified(token)
        if self._revocations.revoked(sid):
            raise PatientAuthFailed("session_revoked")
        return session

    def _verified(self, token: str) -> tuple[PatientSession, str]:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _SESSION_PREFIX:
            raise PatientAuthFailed("session_malformed")
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(),
                                 hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise PatientAuthFailed("session_bad_mac")
        try:
            data = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            ins, expires, sid = str(data["ins"]), int(data["exp"]), data["sid"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise PatientAuthFailed("session_malformed") from None
        if not isinstance(sid, str) or not 0 < len(sid) <= _MAX_SID:
            raise PatientAuthFailed("session_malformed")
        if self._clock.now().timestamp() >= expires:
            raise PatientAuthFailed("session_expired")
        return PatientSession(ins, expires, token), sid


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _canonical(ins: str) -> str:
    try:
        return ids.validate_ins(ins)
    except InvalidInput:
        return ""
