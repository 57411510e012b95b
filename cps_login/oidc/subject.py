"""Who logged in and how: what a code, a refresh token or a CIBA approval carries (as JSON)
from the card proof to the tokens, and the claims the provider gives about it."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from cps_login.token_key import TokenKey, b64url
from cps_login.tokens import Assurance


@dataclass(frozen=True)
class Subject:
    sub: str                    # "8" + RPPS
    given_name: str
    family_name: str
    profession_code: int | None
    acr: str
    amr: tuple[str, ...]
    palier: str
    auth_time: int
    organisation: str | None
    key_storage: str            # card | hsm | software: from the certificate, never the request
    sid: str                    # the login session: the tokens of one login share it
    # the certificate that logged in (base64 DER), checked again at each refresh of the
    # session; "" when it is not known (then the session gets no refresh token)
    cert: str = ""

    @property
    def rpps(self) -> str:
        return self.sub[1:]

    @property
    def certificate(self) -> bytes:
        return base64.b64decode(self.cert) if self.cert else b""

    @property
    def assurance(self) -> Assurance:
        return Assurance(self.acr, self.amr, self.palier)

    def to_json(self) -> dict[str, Any]:
        return {"sub": self.sub, "given_name": self.given_name,
                "family_name": self.family_name, "profession_code": self.profession_code,
                "acr": self.acr, "amr": list(self.amr), "palier": self.palier,
                "auth_time": self.auth_time, "organisation": self.organisation,
                "key_storage": self.key_storage, "sid": self.sid, "cert": self.cert}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Subject:
        """Tolerant both ways for a rolling upgrade: a field a newer replica added is left
        out, one an older replica did not write takes its default (``cert``: no refresh)."""
        known = {k: v for k, v in data.items() if k in _FIELDS}
        return cls(**{**known, "amr": tuple(data["amr"])})


_FIELDS = frozenset(f.name for f in fields(Subject))


def digest(value: str) -> str:
    """How secrets (codes, refresh tokens, tx ids, nonces) are named in the shared state."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:48]


def thumbprint(der: bytes) -> str:
    """x5t#S256 of a certificate: base64url of the SHA-256 of its DER (RFC 8705 §3.1)."""
    return b64url(hashlib.sha256(der).digest())


def half_hash(value: str) -> str:
    """``at_hash`` / ``c_hash`` for ES256: the left half of SHA-256, base64url."""
    return b64url(hashlib.sha256(value.encode("ascii")).digest()[:16])


def sign_jwt(key: TokenKey, claims: dict[str, Any], typ: str = "JWT") -> str:
    """A compact JWS signed in the broker's token (the key never leaves it): ES256 (or RS256
    for an RSA token key), the ``kid`` the JWKS publishes."""
    header = {"alg": key.alg, "typ": typ, "kid": key.kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":"),
                                       ensure_ascii=False).encode()))
    signature = key.signer.sign_jws(signing_input.encode("ascii"))
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
