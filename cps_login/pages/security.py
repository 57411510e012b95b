"""The pages' session cookie, CSRF tokens and response headers (no Flask views here).

The cookie holds ``{"sid", "lang", "tok"}`` signed (itsdangerous, HMAC-SHA256) with the pages'
own secret, read from ``HOME/secrets/pages-session.key`` (created 0600 on first use, never a
default). ``tok`` is the patient session issued by ``PatientAuth.sign_in`` and is checked again
on every request (signature and expiry), so the cookie only carries it. The CSRF token of a
form is an HMAC of the cookie's random ``sid``: one per browser session, rotated at sign-in
and sign-out, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from cps_login.config import secret_once
from pki.errors import ConfigError

SECRET_FILE = "secrets/pages-session.key"  # noqa: S105 - a path
COOKIE = "cps-espace"
SECURE_COOKIE = "__Host-cps-espace"   # __Host-: Secure, Path=/, no Domain — browsers enforce it
COOKIE_MAX_AGE = 12 * 3600

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def load_secret(home: Path) -> bytes:
    """The pages' signing secret; generated (0600) the first time."""
    path = home / SECRET_FILE
    text = secret_once(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path}: readable by others (mode {mode:o}); chmod 600")
    key = bytes.fromhex(text.strip())
    if len(key) < 32:
        raise ConfigError(f"{path}: secret shorter than 32 bytes")
    return key


@dataclass(frozen=True)
class PageSession:
    sid: str
    lang: str | None = None
    token: str | None = None

    @classmethod
    def fresh(cls, lang: str | None = None) -> PageSession:
        return cls(secrets.token_urlsafe(18), lang)

    def rotated(self, token: str | None) -> PageSession:
        """A new ``sid`` (and CSRF token) whenever the signed-in identity changes."""
        return PageSession(secrets.token_urlsafe(18), self.lang, token)

    def with_lang(self, lang: str) -> PageSession:
        return replace(self, lang=lang)


class PageSecurity:
    def __init__(self, secret: bytes, secure_cookie: str = "auto") -> None:
        if secure_cookie not in ("auto", "always", "never"):
            raise ConfigError("pages secure_cookie must be auto, always or never")
        self._secret = secret
        self._serializer = URLSafeTimedSerializer(secret, salt="cps-pages-session-v1")
        self._secure = secure_cookie

    def secure(self, request_is_tls: bool) -> bool:
        """Secure cookies over TLS; ``always`` behind a TLS proxy, ``never`` only for tests
        and loopback http."""
        return self._secure == "always" or (self._secure == "auto" and request_is_tls)

    @staticmethod
    def cookie_name(secure: bool) -> str:
        return SECURE_COOKIE if secure else COOKIE

    def load(self, raw: str | None) -> PageSession | None:
        if not raw:
            return None
        try:
            data: Any = self._serializer.loads(raw, max_age=COOKIE_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
            return None
        lang, token = data.get("lang"), data.get("tok")
        return PageSession(data["sid"], lang if isinstance(lang, str) else None,
                           token if isinstance(token, str) else None)

    def dump(self, state: PageSession) -> str:
        return str(self._serializer.dumps({"sid": state.sid, "lang": state.lang,
                                           "tok": state.token}))

    def csrf_token(self, state: PageSession) -> str:
        mac = hmac.new(self._secret, b"csrf:" + state.sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def csrf_ok(self, state: PageSession, presented: str | None) -> bool:
        return hmac.compare_digest(self.csrf_token(state).encode(),
                                   (presented or "").encode("utf-8", "replace"))


def security_headers(secure: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers
