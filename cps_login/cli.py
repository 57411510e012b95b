"""``cps-login``: the professional's card client.

``readers``, ``watch`` and ``info`` live here; ``login`` (broker round trip) is added by the
login-client work as another ``@main.command()`` that calls :func:`open_card` and
``card.verify_pin`` / ``card.sign("auth", challenge)``; nothing else here needs to change.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pki.cards.card import USAGES, Card
from pki.cards.errors import CardError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def card_errors(fn: F) -> F:
    """Turn card errors into the one-line ``error: ...`` the CLI contract requires."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CardError as exc:
            fail(f"{exc} [{exc.code}]")
        except ValueError as exc:
            fail(str(exc), 2)
        return None

    return wrapper  # type: ignore[return-value]


def open_card(
    reader: str | None = None, pkcs11_module: str | None = None, token_label: str | None = None
) -> Card:
    """The card the user pointed at: a PC/SC reader (default: first with a card) or a token."""
    if pkcs11_module is not None:
        from pki.cards.pkcs11_card import Pkcs11Card

        if not token_label:
            raise ValueError("--token-label is required with --pkcs11-module")
        return Pkcs11Card.open(pkcs11_module, token_label)
    from pki.cards.pcsc import PcscCard

    return PcscCard.open(reader)


@click.group()
def main() -> None:
    """CPS card client: readers, card events, card information (and login)."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@card_errors
def readers(as_json: bool) -> None:
    """List readers and whether a card is present."""
    from pki.cards.pcsc import reader_states

    states = reader_states()
    if as_json:
        import json

        click.echo(
            json.dumps(
                [
                    {"reader": s.name, "card_present": s.card_present, "atr": s.atr.hex()}
                    for s in states
                ]
            )
        )
        return
    if not states:
        fail("no smart card reader [no_reader]")
    for state in states:
        status = (
            f"card present (ATR {state.atr.hex(' ').upper()})" if state.card_present else "no card"
        )
        click.echo(f"{state.name}: {status}")


@main.command()
@card_errors
def watch() -> None:
    """Print card insert/remove events until interrupted."""
    from pki.cards.pcsc import CardWatcher, list_readers

    if not list_readers():
        fail("no smart card reader [no_reader]")

    def show(event: str, reader: str, atr: bytes) -> None:
        click.echo(f"{event}: {reader} {atr.hex(' ').upper()}".rstrip(), nl=True)
        sys.stdout.flush()

    watcher = CardWatcher(show)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()


@main.command()
@click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)")
@click.option(
    "--pkcs11-module", default=None, help="read a token through this PKCS#11 module instead"
)
@click.option("--token-label", default=None)
@click.option("--json", "as_json", is_flag=True)
@card_errors
def info(
    reader: str | None, pkcs11_module: str | None, token_label: str | None, as_json: bool
) -> None:
    """Card holder, certificates and PIN tries left."""
    card = open_card(reader, pkcs11_module, token_label)
    try:
        holder = card.holder()
        certs = {usage: card.certificate(usage) for usage in USAGES}
        tries = card.pin_tries_left()
        note = getattr(card, "pin_tries_note", lambda: None)()  # PKCS#11: why None
    finally:
        card.close()
    if as_json:
        import json

        click.echo(
            json.dumps(
                {
                    "holder": {
                        "national_id": holder.national_id,
                        "rpps": holder.rpps,
                        "given_name": holder.given_name,
                        "surname": holder.surname,
                        "profession_code": holder.profession_code,
                        "profession_label": holder.profession_label,
                    },
                    "certificates": {
                        u: {
                            "subject": c.subject.rfc4514_string(),
                            "serial": f"{c.serial_number:X}",
                            "not_after": c.not_valid_after_utc.isoformat(),
                        }
                        for u, c in certs.items()
                    },
                    "pin_tries_left": tries,
                    "pin_tries_note": note,
                }
            )
        )
        return
    click.echo(f"holder: {holder.given_name} {holder.surname} ({holder.national_id})")
    click.echo(f"profession: {holder.profession_code} {holder.profession_label}".rstrip())
    for usage, cert in certs.items():
        click.echo(f"{usage} certificate: {cert.subject.rfc4514_string()}")
        click.echo(f"  serial {cert.serial_number:X}, expires {cert.not_valid_after_utc:%Y-%m-%d}")
    if tries is not None:
        click.echo(f"PIN tries left: {tries}")
    else:
        click.echo(f"PIN tries left: {note or 'unknown'}")


if __name__ == "__main__":
    main()


@main.command()
@click.option("--broker", required=True, help="broker base URL, e.g. http://127.0.0.1:8080")
@click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module (.so) instead of PC/SC")
@click.option("--token-label", default=None, help="token label with --pkcs11-module")
@click.option("--pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the PIN (default: asked on the terminal)")
@click.option("--organisation", default=None,
              help="structure id to act for (SubjectOrganizationID)")
@click.option("--json", "as_json", is_flag=True, help="print the whole token answer as JSON")
@card_errors
def login(broker: str, reader: str | None, pkcs11_module: str | None, token_label: str | None,
          pin_file: str | None, organisation: str | None, as_json: bool) -> None:
    """Log in with card + PIN; print the access token."""
    import json
    from pathlib import Path

    from cps_login.client import BrokerRefused, card_login

    if pin_file is not None:
        try:
            pin = Path(pin_file).read_text("utf-8").strip()
        except OSError as exc:
            fail(f"cannot read PIN file {pin_file}: {exc.strerror}", 2)
    else:
        pin = click.prompt("PIN", hide_input=True, err=True)
    card = open_card(reader, pkcs11_module, token_label)
    try:
        outcome = card_login(card, pin, broker, organisation_id=organisation)
    except BrokerRefused as exc:
        fail(str(exc))
    except ConnectionError as exc:
        fail(str(exc))
    finally:
        card.close()
    if as_json:
        click.echo(json.dumps({"access_token": outcome.access_token,
                               "token_type": outcome.token_type,
                               "expires_in": outcome.expires_in, "scope": outcome.scope}))
    else:
        click.echo(outcome.access_token)


def _pin_reader(pin_file: str | None) -> Callable[[str], str]:
    """Where a PIN comes from: the PIN file (refused when others may read it), read anew each
    time, or this process's terminal."""
    from cps_login.agent import read_pin_file

    if pin_file is not None:
        return lambda _prompt: read_pin_file(pin_file)

    def ask(prompt: str) -> str:
        try:
            return str(click.prompt(prompt, hide_input=True, err=True))
        except click.Abort:
            raise ValueError("no PIN given") from None

    return ask


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=24727, show_default=True,
              help="port on 127.0.0.1 (the broker's sign-in page links to it)")
@click.option("--broker", "brokers", multiple=True,
              help="issuer URL of a broker this agent works with (repeatable; default: the "
                   "comma-separated CPS_LOGIN_BROKERS); any other is refused")
@click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module (.so) instead of PC/SC")
@click.option("--token-label", default=None, help="token label with --pkcs11-module")
@click.option("--pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the PIN (default: asked on this terminal at each login)")
@click.option("--organisation", default=None,
              help="structure id to act for when the sign-in page names none")
@card_errors
def agent(port: int, brokers: tuple[str, ...], reader: str | None, pkcs11_module: str | None,
          token_label: str | None, pin_file: str | None, organisation: str | None) -> None:
    """Local agent: the broker's sign-in page hands it the card challenge (127.0.0.1 only)."""
    from cps_login.agent import Agent, AgentSettings, allowed_brokers, serve

    if pkcs11_module is not None and not token_label:
        fail("--token-label is required with --pkcs11-module", 2)
    settings = AgentSettings(
        brokers=allowed_brokers(brokers),
        open_card=lambda: open_card(reader, pkcs11_module, token_label),
        read_pin=_pin_reader(pin_file), organisation=organisation)
    local_agent = Agent(settings)

    def ready(real_port: int) -> None:
        click.echo(f"cps-login agent listening on http://127.0.0.1:{real_port} for "
                   f"{', '.join(sorted(settings.brokers))}", err=True)
        sys.stderr.flush()

    try:
        serve(local_agent, port, ready)
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}")
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--broker", required=True, help="broker base URL (its issuer URL)")
@click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module (.so) instead of PC/SC")
@click.option("--token-label", default=None, help="token label with --pkcs11-module")
@click.option("--pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the PIN (default: asked on the terminal)")
@click.option("--organisation", default=None,
              help="structure id to act for (SubjectOrganizationID)")
@click.option("--auth-req-id", default=None, help="decide this pending login only")
@click.option("--yes", "answer", flag_value="approve", default=None,
              help="approve without asking (each binding message is still printed)")
@click.option("--deny", "answer", flag_value="deny", help="deny without asking")
@click.option("--json", "as_json", is_flag=True, help="print the decisions as JSON")
@card_errors
def approve(broker: str, reader: str | None, pkcs11_module: str | None, token_label: str | None,
            pin_file: str | None, organisation: str | None, auth_req_id: str | None,
            answer: str | None, as_json: bool) -> None:
    """Approve the pending back-channel (CIBA) logins of the card holder."""
    import json

    from cps_login.approve import Pending, approve_pending
    from cps_login.client import BrokerRefused

    if answer is None and not sys.stdin.isatty():
        fail("no terminal to ask on: give --yes or --deny", 2)
    try:
        pin = _pin_reader(pin_file)("PIN")
    except ValueError as exc:
        fail(str(exc), 2)

    def choose(item: Pending) -> bool | None:
        click.echo(f"{item.client_name or 'a service'} asks to log you in"
                   f" (scope {item.scope or 'openid'}): {item.binding_message!r}", err=True)
        if answer is not None:
            return answer == "approve"
        return bool(click.confirm("approve?", default=False, err=True))

    card = open_card(reader, pkcs11_module, token_label)
    try:
        decisions = approve_pending(card, pin, broker, choose=choose,
                                    organisation_id=organisation, only=auth_req_id)
    except BrokerRefused as exc:
        fail(str(exc))
    except ConnectionError as exc:
        fail(str(exc))
    finally:
        card.close()
    if as_json:
        click.echo(json.dumps([{"auth_req_id": d.pending.auth_req_id,
                                "client_name": d.pending.client_name,
                                "binding_message": d.pending.binding_message,
                                "status": "approved" if d.approved else "denied"}
                               for d in decisions]))
        return
    if not decisions:
        click.echo("no pending login" + (f" {auth_req_id}" if auth_req_id else ""))
    for d in decisions:
        click.echo(f"{'approved' if d.approved else 'denied'} {d.pending.auth_req_id} "
                   f"({d.pending.client_name}: {d.pending.binding_message})")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["cades", "pades"]), required=True,
              help="cades: detached CMS for any file; pades: signature inside a PDF")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="where to write the signature (cades) or the signed PDF (pades)")
@click.option("--level", type=click.Choice(["B-B", "B-T", "B-LT"]), default="B-B",
              show_default=True, help="baseline level: B-T adds a time stamp, B-LT the "
              "chain and OCSP response")
@click.option("--tsa", default=None,
              help="time-stamping authority URL (default: /tsa beside the certificate's OCSP)")
@click.option("--chain", "chain_file", default=None, type=click.Path(dir_okay=False),
              help="PEM CA certificates for B-LT (default: fetched from the certificate's AIA)")
@click.option("--reader", default=None, help="PC/SC reader name (default: first with a card)")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module (.so) instead of PC/SC")
@click.option("--token-label", default=None, help="token label with --pkcs11-module")
@click.option("--pin-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the PIN (default: asked on the terminal, for each signature)")
@card_errors
def sign(file: str, fmt: str, out: str, level: str, tsa: str | None, chain_file: str | None,
         reader: str | None, pkcs11_module: str | None, token_label: str | None,
         pin_file: str | None) -> None:
    """Sign FILE with the card's signature key (CAdES or PAdES baseline)."""
    from pathlib import Path

    from cps_sign.cli import sign_file

    if not Path(file).is_file():
        fail(f"no such file: {file}", 2)
    if pin_file is not None:
        try:
            pin = Path(pin_file).read_text("utf-8").strip()
        except OSError as exc:
            fail(f"cannot read PIN file {pin_file}: {exc.strerror}", 2)
    else:
        pin = click.prompt("signature PIN", hide_input=True, err=True)
    card = open_card(reader, pkcs11_module, token_label)
    try:
        click.echo(sign_file(card, pin, Path(file), Path(out), fmt, level, tsa, chain_file))
    finally:
        card.close()


def _register_pin() -> None:
    from cps_login.pin import pin

    main.add_command(pin)


_register_pin()
