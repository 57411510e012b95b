"""Typed card errors and the one table that maps ISO 7816-4 status words to them.

Kept local to ``pki.cards`` (base :class:`CardError`, each class with a machine ``code``) so
the card layer does not race the shared ``pki/errors.py``; a later step may re-parent
``CardError`` under ``PkiError`` without touching any caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

CredentialKind = Literal["pin", "puk"]


class CardError(Exception):
    """Base of every card-layer failure."""

    code: ClassVar[str] = "card_error"


class NoReader(CardError):
    code = "no_reader"


class NoCard(CardError):
    code = "no_card"


class CardRemoved(CardError):
    code = "card_removed"


class WrongCard(CardError):
    """The card does not hold the expected application (unknown AID) or data."""

    code = "wrong_card"


class SecurityStatusNotSatisfied(CardError):
    """``69 82``: the operation needs a verified PIN first."""

    code = "security_status_not_satisfied"


class PinIncorrect(CardError):
    code = "pin_incorrect"

    def __init__(self, retries_left: int | None) -> None:
        self.retries_left = retries_left
        tail = "" if retries_left is None else f", {retries_left} tries left"
        super().__init__(f"PIN incorrect{tail}")


class PinLocked(CardError):
    code = "pin_locked"

    def __init__(self, message: str = "PIN blocked: unblock it with the PUK") -> None:
        super().__init__(message)


class PukIncorrect(CardError):
    code = "puk_incorrect"

    def __init__(self, retries_left: int | None) -> None:
        self.retries_left = retries_left
        tail = "" if retries_left is None else f", {retries_left} tries left"
        super().__init__(f"PUK incorrect{tail}")


class PukLocked(CardError):
    code = "puk_locked"

    def __init__(self, message: str = "PUK blocked: the card must be replaced") -> None:
        super().__init__(message)


class CardCommandError(CardError):
    """Any other status word; ``sw`` keeps the raw value for diagnosis."""

    code = "card_command_error"

    def __init__(self, sw: int, message: str | None = None) -> None:
        self.sw = sw
        text = message or _SW_TEXT.get(sw, "card command failed")
        super().__init__(f"{text} (SW {sw:04X})")


_SW_TEXT: dict[int, str] = {
    0x6281: "returned data may be corrupted",
    0x6282: "end of file reached before Le bytes",
    0x6581: "memory failure",
    0x6700: "wrong length",
    0x6883: "last command of the chain expected",
    0x6884: "command chaining not supported",
    0x6981: "command incompatible with file structure",
    0x6984: "referenced data invalidated",
    0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed (no current EF / no key selected)",
    0x6A80: "incorrect data field",
    0x6A81: "function not supported",
    0x6A82: "file or application not found",
    0x6A84: "not enough memory",
    0x6A86: "incorrect P1/P2",
    0x6A88: "referenced data not found",
    0x6B00: "wrong parameters (offset outside the file)",
    0x6D00: "instruction not supported",
    0x6E00: "class not supported",
    0x6F00: "no precise diagnosis",
}


def _retry_error(kind: CredentialKind, sw: int) -> CardError:
    left = sw & 0x0F
    return PinIncorrect(left) if kind == "pin" else PukIncorrect(left)


def _blocked_error(kind: CredentialKind, sw: int) -> CardError:
    return PinLocked() if kind == "pin" else PukLocked()


# THE table. Keys are exact status words; ``63 Cx`` is keyed as 0x63C0 (x = tries left).
# Values build the error given which credential the command was about.
_SW_TABLE: dict[int, Callable[[CredentialKind, int], CardError]] = {
    0x63C0: _retry_error,
    0x6983: _blocked_error,
    0x6982: lambda _k, _sw: SecurityStatusNotSatisfied(
        "security status not satisfied: verify the PIN first"
    ),
    0x6A82: lambda _k, sw: CardCommandError(sw),
}


def error_for_sw(sw: int, kind: CredentialKind = "pin") -> CardError | None:
    """The typed error for a status word, ``None`` for success (``90 00``)."""
    if sw == 0x9000:
        return None
    key = 0x63C0 if sw & 0xFFF0 == 0x63C0 else sw
    factory = _SW_TABLE.get(key)
    if factory is not None:
        return factory(kind, sw)
    return CardCommandError(sw)


def check_sw(sw: int, kind: CredentialKind = "pin") -> None:
    error = error_for_sw(sw, kind)
    if error is not None:
        raise error
