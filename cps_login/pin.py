"""``cps-login pin change`` / ``cps-login pin unblock``: the card holder's PIN lifecycle.

Both go through the same backends as every other command (PC/SC reader or PKCS#11 token,
:func:`cps_login.cli.open_card`) and call the :class:`pki.cards.card.Card` protocol's
``change_pin`` / ``unblock_pin``: the card (or the PKCS#11 module) counts and locks, this
command only asks for the codes and says what the card answered, in one line.

Codes are prompted without echo (the new PIN twice) or read from files given with
``--pin-file`` / ``--puk-file`` / ``--new-pin-file`` (refused when others may read them). Every
code is checked for its format before the card is opened, so a typo never spends a try.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable
from typing import NoReturn

import click

from pki.cards.card import Card, check_pin, check_puk
from pki.cards.errors import CardError, CardRemoved, PinIncorrect, PinLocked, PukIncorrect

UNBLOCK_HINT = "unblock it with the PUK: cps-login pin unblock"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def read_code_file(path: str, what: str) -> str:
    """The code in ``path`` (first line, stripped); refused when others may read the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                raise ValueError(f"{what} file {path} is readable by others (mode "
                                 f"{stat.S_IMODE(mode):o}); chmod 600 it")
            return fh.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {path} is not text") from None


def read_code(what: str, path: str | None, check: Callable[[str], None],
              confirm: bool = False) -> str:
    """A code from its file or from the terminal without echo; its format checked."""
    if path is not None:
        code = read_code_file(path, what)
    else:
        try:
            code = str(click.prompt(what, hide_input=True, err=True,
                                    confirmation_prompt=f"repeat {what}" if confirm else False))
        except click.Abort:
            raise ValueError(f"no {what} given") from None
    check(code)
    return code


def explain(exc: CardError, action: str) -> str:
    """The one-line message for a card refusal during ``action`` (without ``error:``)."""
    text = str(exc)
    if isinstance(exc, PinIncorrect) and exc.retries_left == 0:
        text += f"; the PIN is now blocked: {UNBLOCK_HINT}"
    elif isinstance(exc, PinLocked):
        text = f"PIN blocked: {UNBLOCK_HINT}"
    elif isinstance(exc, PukIncorrect) and exc.retries_left == 0:
        text += "; the PUK is now blocked: the card must be replaced"
    elif isinstance(exc, CardRemoved):
        text += (f"; the {action} may not have been done: put the card back and run the "
                 "command again (cps-login info shows the PIN tries left)")
    return f"{text} [{exc.code}]"


def _open(reader: str | None, pkcs11_module: str | None, token_label: str | None) -> Card:
    from cps_login.cli import open_card

    return open_card(reader, pkcs11_module, token_label)


def _run(action: str, reader: str | None, pkcs11_module: str | None,
         token_label: str | None, operation: Callable[[Card], None]) -> None:
    if pkcs11_module is not None and not token_label:
        _fail("--token-label is required with --pkcs11-module", 2)
    try:
        card = _open(reader, pkcs11_module, token_label)
    except CardError as exc:
        _fail(f"{exc} [{exc.code}]")
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        operation(card)
    except CardError as exc:
        _fail(explain(exc, action))
    except ValueError as exc:
        _fail(str(exc), 2)
    finally:
        with contextlib.suppress(CardError):  # a card pulled mid-way: already said above
            card.close()


_card_options = [
    click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)"),
    click.option("--pkcs11-module", default=None, help="PKCS#11 module (.so) instead of PC/SC"),
    click.option("--token-label", default=None, help="token label with --pkcs11-module"),
]


def card_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_card_options):
        fn = option(fn)
    return fn


@click.group()
def pin() -> None:
    """Change the card's PIN, or unblock it with the PUK."""


@pin.command()
@card_options
@click.option("--pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the current PIN (default: asked on the terminal)")
@click.option("--new-pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the new PIN (default: asked twice on the terminal)")
def change(reader: str | None, pkcs11_module: str | None, token_label: str | None,
           pin_file: str | None, new_pin_file: str | None) -> None:
    """Change the PIN (4 digits): the current PIN, then the new one."""
    try:
        old = read_code("PIN", pin_file, check_pin)
        new = read_code("new PIN", new_pin_file, check_pin, confirm=True)
    except ValueError as exc:
        _fail(str(exc), 2)
    if new == old:
        _fail("the new PIN is the current one", 2)
    _run("PIN change", reader, pkcs11_module, token_label,
         lambda card: card.change_pin(old, new))
    click.echo("PIN changed")


@pin.command()
@card_options
@click.option("--puk-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the PUK (default: asked on the terminal)")
@click.option("--new-pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the new PIN (default: asked twice on the terminal)")
def unblock(reader: str | None, pkcs11_module: str | None, token_label: str | None,
            puk_file: str | None, new_pin_file: str | None) -> None:
    """Unblock the PIN with the PUK (8 digits) and set a new PIN."""
    try:
        puk = read_code("PUK", puk_file, check_puk)
        new = read_code("new PIN", new_pin_file, check_pin, confirm=True)
    except ValueError as exc:
        _fail(str(exc), 2)
    _run("unblock", reader, pkcs11_module, token_label,
         lambda card: card.unblock_pin(puk, new))
    click.echo("PIN unblocked: the new PIN is set")
