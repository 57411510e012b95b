"""The software card's non-volatile memory: one JSON file, the card's "chip".

Private keys are generated inside the simulator and only ever leave it as signatures; the
file holds them the way an EEPROM would. Every state change is written atomically
(temp file in the same directory, fsync, ``os.replace``, fsync of the directory) so a kill
or a power cut mid-write leaves either the old or the new card, never a torn one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pki.cards.card import PIN_MAX_TRIES, PUK_MAX_TRIES

FORMAT_VERSION = 1
Lifecycle = Literal["personalisation", "operational"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


@dataclass
class Credential:
    """A PIN or PUK: salted HMAC of the value and its retry counter.

    A 4-digit PIN is not protected by hashing (10^4 guesses); the hash only keeps the value
    out of casual view. The real protection, as on a chip, is the persisted retry counter.
    """

    max_tries: int
    digest: bytes | None = None
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    tries_left: int = 0

    @property
    def is_set(self) -> bool:
        return self.digest is not None

    @property
    def blocked(self) -> bool:
        return self.is_set and self.tries_left == 0

    def _mac(self, value: bytes) -> bytes:
        return hmac.new(self.salt, value, hashlib.sha256).digest()

    def set(self, value: bytes) -> None:
        self.salt = secrets.token_bytes(16)
        self.digest = self._mac(value)
        self.tries_left = self.max_tries

    def matches(self, value: bytes) -> bool:
        return self.digest is not None and hmac.compare_digest(self.digest, self._mac(value))

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tries": self.max_tries,
            "digest": None if self.digest is None else _b64(self.digest),
            "salt": _b64(self.salt),
            "tries_left": self.tries_left,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Credential:
        digest = obj["digest"]
        return cls(
            max_tries=int(obj["max_tries"]),
            digest=None if digest is None else _unb64(digest),
            salt=_unb64(obj["salt"]),
            tries_left=int(obj["tries_left"]),
        )


@dataclass
class CardState:
    serial: bytes
    lifecycle: Lifecycle = "personalisation"
    keys: dict[int, bytes] = field(default_factory=dict)  # key ref -> PKCS#8 DER
    files: dict[int, bytes] = field(default_factory=dict)  # FID -> content
    pin: Credential = field(default_factory=lambda: Credential(PIN_MAX_TRIES))
    puk: Credential = field(default_factory=lambda: Credential(PUK_MAX_TRIES))

    @classmethod
    def blank(cls) -> CardState:
        return cls(serial=secrets.token_bytes(8))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "serial": self.serial.hex(),
            "lifecycle": self.lifecycle,
            "keys": {f"{ref:02X}": _b64(der) for ref, der in sorted(self.keys.items())},
            "files": {f"{fid:04X}": _b64(data) for fid, data in sorted(self.files.items())},
            "pin": self.pin.to_json(),
            "puk": self.puk.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CardState:
        if obj.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported card file format: {obj.get('format')!r}")
        lifecycle = obj["lifecycle"]
        if lifecycle not in ("personalisation", "operational"):
            raise ValueError(f"unknown lifecycle state {lifecycle!r}")
        return cls(
            serial=bytes.fromhex(obj["serial"]),
            lifecycle=lifecycle,
            keys={int(ref, 16): _unb64(der) for ref, der in obj["keys"].items()},
            files={int(fid, 16): _unb64(data) for fid, data in obj["files"].items()},
            pin=Credential.from_json(obj["pin"]),
            puk=Credential.from_json(obj["puk"]),
        )


class CardFile:
    """Load/save a :class:`CardState` at ``path``; a missing file is a blank card."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> CardState:
        if not self.path.exists():
            state = CardState.blank()
            self.save(state)
            return state
        try:
            return CardState.from_json(json.loads(self.path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a card file: {exc}") from exc

    def save(self, state: CardState) -> None:
        data = json.dumps(state.to_json(), sort_keys=True).encode()
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
