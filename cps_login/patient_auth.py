"""Patient sign-in: password (argon2id) + TOTP code, then a short HMAC-signed session.

Unknown INS, wrong password, wrong or reused TOTP code: one outward answer
(``PatientAuthFailed``, 401 ``invalid_credentials``), the precise reason in the audit chain,
and the same work done (an argon2 verification against a dummy hash when the INS is unknown).
Failed attempts are counted per INS and per client address; over the limit: 429.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from cps_login import totp
from cps_login.errors import PatientAuthFailed
from cps_login.patients import PatientService
from cps_login.ratelimit import RateLimiter
from pki import audit, ids
from pki.errors import InvalidInput
from pki.store.db import Store
from pki.store.patient_models import Patient

MIN_PASSWORD = 12
_SESSION_PREFIX = "pt1"


@dataclass(frozen=True)
class PatientSession:
    ins: str
    expires: int
    token: str


@dataclass(frozen=True)
class Activation:
    totp_secret: str
    provisioning_uri: str


class PatientAuth:
    def __init__(self, store: Store, patients: PatientService, limiter: RateLimiter,
                 session_key: bytes, session_ttl_seconds: int = 900,
                 hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._patients = patients
        self._clock = patients.clock
        self._limiter = limiter
        self._key = session_key
        self._ttl = session_ttl_seconds
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    # --- activation ---------------------------------------------------------------------
    def activate(self, ins: str, code: str, password: str) -> Activation:
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password must have at least {MIN_PASSWORD} characters")
        self._limiter.check(f"activate:{ins}")
        with self._store.session() as session:
            patient = self._patients.check_activation(session, ins, code)
            if patient is None:
                self._limiter.fail(f"activate:{ins}")
                raise PatientAuthFailed("activation_refused")
            secret = totp.new_secret()
            patient.password_hash = self._hasher.hash(password)
            patient.totp_secret = secret
            patient.activation_hash = None
            patient.activation_expires = None
            audit.append(session, "patient.activate", patient.ins, {}, actor=patient.ins,
                         clock=self._clock)
            ins = patient.ins
        return Activation(secret, totp.provisioning_uri(secret, ins))

    # --- sign-in ------------------------------------------------------------------------
    def sign_in(self, ins: str, password: str, code: str, client: str = "") -> PatientSession:
        canonical = _canonical(ins)
        for key in (f"ins:{canonical}", f"ip:{client}"):
            self._limiter.check(key)
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
                step = totp.matching_step(patient.totp_secret or "", code, now)
                if step is None:
                    reason = "wrong_totp"
                elif step <= patient.totp_last_step:
                    reason = "totp_replayed"
                else:
                    patient.totp_last_step = step
            audit.append(session, "patient.signin" if reason is None else "patient.signin_refused",
                         canonical or ins[:32], {"reason": reason, "client": client},
                         actor=canonical or "anonymous", clock=self._clock)
        if reason is not None:
            for key in (f"ins:{canonical}", f"ip:{client}"):
                self._limiter.fail(key)
            raise PatientAuthFailed(reason)
        self._limiter.reset(f"ins:{canonical}")
        return self._issue(canonical)

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

    def session(self, token: str) -> PatientSession:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _SESSION_PREFIX:
            raise PatientAuthFailed("session_malformed")
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(),
                                 hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise PatientAuthFailed("session_bad_mac")
        try:
            data = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            ins, expires = str(data["ins"]), int(data["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise PatientAuthFailed("session_malformed") from None
        if self._clock.now().timestamp() >= expires:
            raise PatientAuthFailed("session_expired")
        return PatientSession(ins, expires, token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _canonical(ins: str) -> str:
    try:
        return ids.validate_ins(ins)
    except InvalidInput:
        return ""
