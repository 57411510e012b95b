"""Access tokens: JWT profile of RFC 9068, signed in the HSM; and their validation.

Issuing (broker side) goes through ``TokenIssuer`` and the HSM token key. Validating (relying
service side) goes through ``TokenValidator``: signature with a key of the broker's JWKS, then
``typ`` (``at+jwt``), ``iss``, ``aud``, ``exp``/``iat``/``nbf`` against an injected clock. Every
refusal is a ``TokenInvalid`` with its own reason: ``token_malformed``, ``token_wrong_type``,
``token_unknown_key``, ``token_bad_signature``, ``token_wrong_issuer``,
``token_wrong_audience``, ``token_expired``, ``token_not_yet_valid``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    encode_dss_signature,
)

from cps_login.errors import TokenInvalid
from cps_login.token_key import TokenKey, b64url
from pki.clock import Clock
from pki.sigcheck import verify_signature

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type
PALIER = "APPPRIP3"
ACR_EIDAS_HIGH = "eidas3"
PALIER_LOW = "APPPRIP1"
ACR_EIDAS_LOW = "eidas1"


@dataclass(frozen=True)
class Assurance:
    """How the holder authenticated, as a token says it (``acr``, ``amr`` of RFC 8176,
    ``Palier_Authentification``). Decided by where the certificate's key lives (its product
    category), never by the request: see cps_login/README.md, "Assurance"."""

    acr: str
    amr: tuple[str, ...]
    palier: str


# A card: a key that never leaves the card, used after the holder's PIN.
CARD_ASSURANCE = Assurance(ACR_EIDAS_HIGH, ("hwk", "pin"), PALIER)
# A key in a security module: hardware-held, but nothing says the holder typed a PIN.
HSM_ASSURANCE = Assurance(ACR_EIDAS_LOW, ("hwk",), PALIER_LOW)
# A software key (a CSR made with openssl): a file anyone who copies it can use.
SOFTWARE_ASSURANCE = Assurance(ACR_EIDAS_LOW, ("swk",), PALIER_LOW)
ASSURANCE_BY_KEY_STORAGE = {"card": CARD_ASSURANCE, "hsm": HSM_ASSURANCE,
                            "software": SOFTWARE_ASSURANCE}
_ALGS = ("ES256", "RS256")


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenInvalid("token_malformed", "bad base64url") from None


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):     # RecursionError: a thousand nested '['
        raise TokenInvalid("token_malformed", "not JSON") from None
    if not isinstance(value, dict):
        raise TokenInvalid("token_malformed", "not a JSON object")
    return value


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: dict[str, Any]
    expires_in: int


class TokenIssuer:
    def __init__(self, key: TokenKey, *, issuer: str, clock: Clock, ttl_seconds: int = 120,
                 client_id: str = "cps-login", scope: str = "openid") -> None:
        if not 1 <= ttl_seconds <= 120:
            raise ValueError("access tokens live at most 120 s (SPEC §7)")
        self._key = key
        self._issuer = issuer
        self._clock = clock
        self._ttl = ttl_seconds
        self._client_id = client_id
        self._scope = scope
        header = {"alg": key.alg, "typ": TOKEN_TYPE, "kid": key.kid}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode())

    @property
    def key(self) -> TokenKey:
        return self._key

    def issue(self, *, subject: str, audience: str, profession_code: int | None,
              organisation_id: str | None, assurance: Assurance = SOFTWARE_ASSURANCE,
              extra: Mapping[str, Any] | None = None) -> IssuedToken:
        """A signed access token. ``assurance`` defaults to the lowest: a caller that forgets
        it never overstates how the holder authenticated."""
        now = int(self._clock.now().timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer, "sub": subject, "aud": audience, "exp": now + self._ttl,
            "iat": now, "nbf": now, "auth_time": now, "jti": secrets.token_urlsafe(16),
            "client_id": self._client_id, "scope": self._scope,
            "SubjectNameID": subject,
            "SubjectRole": [str(profession_code)] if profession_code is not None else [],
            "Palier_Authentification": assurance.palier, "acr": assurance.acr,
            "amr": list(assurance.amr),
        }
        if organisation_id:
            claims["SubjectOrganizationID"] = organisation_id
        if extra:
            claims.update(extra)
        payload = b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        signing_input = f"{self._header}.{payload}".encode("ascii")
        signature = self._key.signer.sign_jws(signing_input)
        return IssuedToken(f"{self._header}.{payload}.{b64url(signature)}", claims, self._ttl)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.jwk()]}


def _int(b64: str) -> int:
    return int.from_bytes(_b64decode(b64), "big")


def key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        return ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]),
                                             ec.SECP256R1()).public_key()
    raise ValueError(f"unsupported JWK kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}")


def _check_signature(alg: str, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
                     signing_input: bytes, signature: bytes) -> bool:
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        return verify_signature(key, signature, signing_input)
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        return verify_signature(key, der, signing_input)
    return False


def _finite(value: object) -> bool:
    """A NumericDate: JSON's NaN/Infinity (which Python's json accepts) would never expire."""
    return isinstance(value, int | float) and math.isfinite(value)


class TokenValidator:
    """For relying services: validate a broker access token locally with the broker's JWKS."""

    def __init__(self, jwks: Mapping[str, Any], *, issuer: str, audience: str, clock: Clock,
                 leeway_seconds: int = 5) -> None:
        self._keys: dict[str, tuple[str, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]] = {}
        for jwk in jwks.get("keys", []):
            alg = jwk.get("alg")
            if alg in _ALGS and "kid" in jwk:
                self._keys[jwk["kid"]] = (alg, key_from_jwk(jwk))
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._leeway = leeway_seconds

    @classmethod
    def from_jwks_url(cls, url: str, *, issuer: str, audience: str, clock: Clock,
                      timeout: float = 5.0) -> TokenValidator:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"JWKS URL must be http(s): {url!r}")
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - checked above
            jwks = json.loads(resp.read())
        return cls(jwks, issuer=issuer, audience=audience, clock=clock)

    def validate(self, token: str) -> dict[str, Any]:
        if not token.isascii():     # a JWS compact serialisation is base64url and dots only
            raise TokenInvalid("token_malformed", "not ASCII")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenInvalid("token_malformed", "not three dot-separated parts")
        header = _json(_b64decode(parts[0]))
        if header.get("typ") not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):
            raise TokenInvalid("token_wrong_type", f"typ {header.get('typ')!r}")
        entry = self._keys.get(str(header.get("kid")))
        if entry is None:
            raise TokenInvalid("token_unknown_key", f"kid {header.get('kid')!r}")
        alg, key = entry
        if header.get("alg") != alg:
            raise TokenInvalid("token_bad_signature", f"alg {header.get('alg')!r}")
        signature = _b64decode(parts[2])
        if not _check_signature(alg, key, f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
            raise TokenInvalid("token_bad_signature")
        claims = _json(_b64decode(parts[1]))
        if claims.get("iss") != self._issuer:
            raise TokenInvalid("token_wrong_issuer", f"iss {claims.get('iss')!r}")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self._audience not in audiences:
            raise TokenInvalid("token_wrong_audience", f"aud {aud!r}")
        now = self._clock.now().timestamp()
        for name in ("exp", "iat", "sub", "jti"):
            if name not in claims:
                raise TokenInvalid("token_malformed", f"claim {name} missing")
        if not _finite(claims["exp"]) or now > claims["exp"] + self._leeway:
            raise TokenInvalid("token_expired")
        nbf = claims.get("nbf", claims["iat"])
        if not _finite(nbf) or now < nbf - self._leeway:
            raise TokenInvalid("token_not_yet_valid")
        return claims


class CachedJwksValidator:
    """A TokenValidator that refetches the JWKS (at most every ``refresh`` s) on an unknown kid,
    so that a key rotation at the broker needs no restart of relying services."""

    def __init__(self, url: str, *, issuer: str, audience: str, clock: Clock,
                 refresh_seconds: float = 60.0) -> None:
        self._url, self._issuer, self._audience, self._clock = url, issuer, audience, clock
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._validator: TokenValidator | None = None
        self._fetched = 0.0

    def validate(self, token: str) -> dict[str, Any]:
        validator = self._current(force=False)
        try:
            return validator.validate(token)
        except TokenInvalid as exc:
            if exc.reason != "token_unknown_key":
                raise
        return self._current(force=True).validate(token)

    def _current(self, force: bool) -> TokenValidator:
        with self._lock:
            stale = time.monotonic() - self._fetched > self._refresh
            if self._validator is None or (force and stale):
                self._validator = TokenValidator.from_jwks_url(
                    self._url, issuer=self._issuer, audience=self._audience, clock=self._clock)
                self._fetched = time.monotonic()
            return self._validator

