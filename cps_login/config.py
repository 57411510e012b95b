"""Settings of the broker and the patient API (HOME/login.json, all keys optional).

Secrets are never in this file: the patient-session key lives in ``secrets/login-session.key``
(created 0600 on first start, once for all replicas of the home), the broker token's PIN in
``secrets/broker.pin``.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pki.config import MESSAGE_KEY_FILE, Config, write_private
from pki.errors import ConfigError
from pki.roles.confine import PAGES_SESSION_KEY_FILE, WebSecrets

LOGIN_CONFIG_NAME = "login.json"


@dataclass(frozen=True)
class LoginConfig:
    home: Path
    db_url: str | None = None
    # Token issuer (``iss``) and base of the broker's URLs; defaults to the home's base_url.
    issuer: str = ""
    # ``aud`` of the tokens the broker issues: the patient API by default.
    audience: str = ""
    client_id: str = "cps-login"
    scope: str = "openid patient.read"
    token_ttl_seconds: int = 120
    challenge_ttl_seconds: int = 60
    # Challenges go to anonymous clients: memory the in-process store may hold (without Redis),
    # and live challenges one client address may hold (beyond it, 429 for that client only).
    challenge_store_max_bytes: int = 32 * 1024 * 1024
    challenge_max_per_client: int = 100
    redis_url: str | None = None
    # Prefix of every Redis key of the broker and patient roles (challenges, rate limits).
    redis_prefix: str = "cps:login:"
    # Revocation: OCSP at the AIA URL unless overridden, CRL distribution point as fallback.
    ocsp_url: str | None = None
    revocation_timeout_seconds: float = 2.0
    ocsp_max_age_seconds: int = 2 * 86400   # oldest acceptable thisUpdate
    clock_skew_seconds: int = 300
    # A login with a key that is not on a card (product category software or security module):
    # accepted at a lower assurance (acr eidas1, amr swk/hwk, APPPRIP1) so that each relying
    # service decides by ``acr``, or refused (``software_key_refused``). See README, Assurance.
    accept_software_keys: bool = True
    # Bytes each broker cache may hold (certificates of our CAs, their paths, practices).
    cache_max_bytes: int = 32 * 1024 * 1024
    # SubjectOrganizationID of emergency call centres (SAMU) allowed the emergency mode.
    emergency_centres: tuple[str, ...] = ()
    patient_session_ttl_seconds: int = 900
    signin_max_attempts: int = 5
    signin_window_seconds: int = 300
    session_key_file: str = "secrets/login-session.key"
    token_key_label: str = "token:broker"  # noqa: S105 - a label
    token_key_type: str = "p256"  # noqa: S105 - a key type
    matrix_file: str | None = None           # default: cps_login/data/access_matrix.json
    # Sign-in throttling (cps_login.ratelimit.SigninThrottle): ``signin_max_attempts`` free
    # failures per (account, client) pair, then a backoff doubling from the base up to the max;
    # a client failing on many accounts is refused for ``signin_window_seconds``; an account
    # failing from many clients leaves every client one free try before its backoff.
    signin_backoff_base_seconds: int = 2
    signin_backoff_max_seconds: int = 900
    signin_client_max_failures: int = 30
    signin_account_max_failures: int = 50
    signin_account_window_seconds: int = 3600
    # Peers (CIDRs) whose X-Forwarded-For / X-Forwarded-Proto the patient role believes.
    trusted_proxies: tuple[str, ...] = ()
    totp_key_file: str = "secrets/totp.key"
    # AES-256-GCM key of the secure messages at rest (patient and broker roles only).
    message_key_file: str = MESSAGE_KEY_FILE
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_home(cls, home: Path, db_url: str | None = None, **overrides: Any) -> LoginConfig:
        base = Config.load(home)
        raw: dict[str, Any] = {}
        path = home / LOGIN_CONFIG_NAME
        if path.exists():
            try:
                raw = json.loads(path.read_text("utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{path}: not JSON ({exc})") from None
        known = {f.name for f in fields(cls)} - {"home"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        for name in ("emergency_centres", "trusted_proxies"):
            if name in raw:
                raw[name] = tuple(raw[name])
        merged: dict[str, Any] = {**raw, **overrides}
        merged.setdefault("issuer", base.base_url)
        merged.setdefault("db_url", db_url or base.db_url)
        config = cls(home=home, **merged)
        if not config.audience:
            config = replace(config, audience=config.issuer.rstrip("/") + "/api")
        return config

    @property
    def pki(self) -> Config:
        return Config.load(self.home)

    def session_key(self) -> bytes:
        """The HMAC key of patient sessions; generated (0600) the first time."""
        path = self.home / self.session_key_file
        key = bytes.fromhex(secret_once(path).strip())
        if len(key) < 32:
            raise ConfigError(f"{path}: session key shorter than 32 bytes")
        return key

    def totp_key(self) -> bytes:
        """The AES-256-GCM key sealing TOTP seeds at rest; generated (0600) the first time."""
        return self._aes_key(self.totp_key_file, "the TOTP key")

    def web_secrets(self) -> WebSecrets:
        """Every secret file a web role reads (what ``pki.roles.confine`` hides from the others):
        the patient role's session, pages and TOTP keys, and the messages key it shares with
        the broker. The broker's other secrets (its PIN, TLS key) are the officer's, made
        before it starts; its token key lives in its PIN-protected token."""
        return WebSecrets(
            patient=(self.session_key_file, PAGES_SESSION_KEY_FILE, self.totp_key_file),
            shared=(self.message_key_file,))

    def create_role_secrets(self) -> None:
        """Make every web-role secret still missing (0600, not read back). Run before any role
        is confined: a file made after a role hid the others' secrets stays in its reach."""
        for name in self.web_secrets().all():
            create_secret(self.home / name)

    def message_key(self) -> bytes:
        """The AES-256-GCM key sealing secure messages at rest; generated (0600) the first
        time, shared by the patient and broker roles of the home."""
        return self._aes_key(self.message_key_file, "the message key")

    def _aes_key(self, name: str, what: str) -> bytes:
        """A 32-byte key kept as hex in ``home/name``: generated (0600) the first time, refused
        when others may read it or when it is not 64 hex digits."""
        path = self.home / name
        text = secret_once(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path}: readable by others (mode {mode:o}); chmod 600")
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise ConfigError(f"{path}: not a hex key") from None
        if len(key) != 32:
            raise ConfigError(f"{path}: {what} must be 32 bytes (64 hex digits)")
        return key


def secret_once(path: Path) -> str:
    """The text of the 0600 secret file ``path``, generated (32 random bytes, hex) if absent.

    Race-free between replicas starting together: the new file is linked into place, which
    fails when another process got there first — then its key is the one read, so every
    replica signs with the same key."""
    create_secret(path)
    return path.read_text("utf-8")


def create_secret(path: Path) -> None:
    """Make the 0600 secret file ``path`` (32 random bytes, hex) unless it exists; its content
    is not read back (the supervisor makes the web roles' keys without holding them)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
        write_private(tmp, secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
