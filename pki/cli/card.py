"""`cps-admin card ...`: personalise CPS cards and act on a whole card (both certificates)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click

from pki.cards.errors import CardError
from pki.cli.context import AdminContext, emit_json, emit_table, json_flag, pass_admin
from pki.issuance import cards as card_service


def _read_secret(path: Path | None, prompt: str) -> str:
    if path is not None:
        return path.read_text("utf-8").strip()
    first = getpass.getpass(f"{prompt}: ")
    if getpass.getpass(f"{prompt} (again): ") != first:
        raise click.ClickException("the two entries differ")
    return first


@click.group("card")
def card() -> None:
    """Personalise CPS cards; block, unblock or revoke a card."""


@card.command("issue")
@click.option("--rpps", required=True, help="RPPS number of the card holder.")
@click.option("--reader", help="PC/SC reader holding the blank card.")
@click.option("--token-label", help="Blank PKCS#11 token standing for a card.")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module of --token-label "
              "(default: SoftHSM).")
@click.option("--so-pin-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Token SO PIN (becomes the PUK) for --token-label.")
@click.option("--transport-pin-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Token transport user PIN for --token-label.")
@click.option("--pin-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The holder's new 4-digit PIN (asked twice without echo if absent).")
@click.option("--key-type", type=click.Choice(["rsa2048", "p256"]), default="rsa2048",
              show_default=True)
@json_flag
@pass_admin
def issue(admin: AdminContext, rpps: str, reader: str | None, token_label: str | None,
          pkcs11_module: str | None, so_pin_file: Path | None,
          transport_pin_file: Path | None, pin_file: Path | None, key_type: str) -> None:
    """Generate both key pairs on the card, certify them, write them, set PIN and PUK."""
    if (reader is None) == (token_label is None):
        raise click.UsageError("give exactly one of --reader or --token-label")
    pin = _read_secret(pin_file, "new PIN (4 digits)")
    if len(pin) != 4 or not pin.isdigit():
        raise click.ClickException("PIN must be exactly 4 digits")
    auth = admin.authority()
    device: Any
    try:
        if reader is not None:
            from pki.cards.pcsc import PcscCard

            device = PcscCard.open(reader)
            backend, location = "pcsc", reader
            number = device.serial().upper()
        else:
            from pki.cards.pkcs11_card import Pkcs11Module, Pkcs11Personaliser
            from pki.config import find_softhsm_module

            if so_pin_file is None or transport_pin_file is None:
                raise click.UsageError("--token-label needs --so-pin-file and "
                                       "--transport-pin-file")
            module = Pkcs11Module(pkcs11_module or find_softhsm_module())
            device = Pkcs11Personaliser(module, token_label or "",
                                        so_pin_file.read_text().strip(),
                                        transport_pin_file.read_text().strip())
            backend, location, number = "pkcs11", token_label or "", None
        try:
            result = card_service.issue_card(auth, rpps, device, pin, backend=backend,
                                             location=location, card_number=number,
                                             key_type=key_type)
        finally:
            close = getattr(device, "close", None)
            if close is not None:
                close()
    except CardError as exc:
        raise click.ClickException(str(exc)) from None
    serials = {u: f"{c.serial_number:X}" for u, c in result.certificates.items()}
    if admin.json_output:
        emit_json({"rpps": rpps, "backend": backend, "location": location,
                   "certificates": serials, "puk": result.puk})
        return
    click.echo(f"card personalised for RPPS {rpps} ({backend}: {location})")
    for usage, serial in serials.items():
        click.echo(f"  {usage:4}  serial {serial}")
    # The PUK is shown once, here, and stored nowhere.
    click.echo(f"PUK (shown once; give it to the holder): {result.puk}")


@card.command("list")
@json_flag
@pass_admin
def list_cards(admin: AdminContext) -> None:
    """Cards with their holder, status and certificates."""
    rows: list[dict[str, Any]] = [{"card": c.card_number, "rpps": c.rpps, "backend": c.backend,
             "location": c.location, "status": c.status,
             "certificates": [{"usage": p, "serial": s, "status": st}
                              for p, s, st in c.certificates],
             "created_at": c.created_at.isoformat()}
            for c in card_service.list_cards(admin.authority())]
    if admin.json_output:
        emit_json(rows)
    else:
        emit_table([{**r, "certificates": " ".join(f"{c['usage']}:{c['serial']}:{c['status']}"
                                                   for c in r["certificates"])} for r in rows],
                   ["card", "rpps", "backend", "status", "certificates"])


@card.command("block")
@click.argument("card_number")
@pass_admin
def block(admin: AdminContext, card_number: str) -> None:
    """Suspend both certificates of a card (certificateHold)."""
    held = card_service.block_card(admin.authority(), card_number)
    click.echo(f"card {card_number.upper()} blocked; on hold: {', '.join(held) or '(none)'}")


@card.command("unblock")
@click.argument("card_number")
@pass_admin
def unblock(admin: AdminContext, card_number: str) -> None:
    """Release the hold on both certificates of a blocked card."""
    released = card_service.unblock_card(admin.authority(), card_number)
    click.echo(f"card {card_number.upper()} unblocked; released: "
               f"{', '.join(released) or '(none)'}")


@card.command("revoke")
@click.argument("card_number")
@click.option("--reason", default="keyCompromise", show_default=True)
@pass_admin
def revoke(admin: AdminContext, card_number: str, reason: str) -> None:
    """Revoke both certificates of a card (lost, stolen, compromised): final."""
    revoked = card_service.revoke_card(admin.authority(), card_number, reason)
    click.echo(f"card {card_number.upper()} revoked ({reason}): {', '.join(revoked)}")


@card.command("renew")
@click.argument("card_number")
@click.option("--reader", help="PC/SC reader holding the card.")
@click.option("--token-label", help="PKCS#11 token standing for the card.")
@click.option("--pkcs11-module", default=None, help="PKCS#11 module of --token-label "
              "(default: SoftHSM).")
@click.option("--pin-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The holder's PIN (asked without echo if absent).")
@json_flag
@pass_admin
def renew(admin: AdminContext, card_number: str, reader: str | None, token_label: str | None,
          pkcs11_module: str | None, pin_file: Path | None) -> None:
    """New keys on the card, their certificates written, then the old ones superseded.

    A card pulled or a failure half-way keeps valid certificates; run the command again to
    finish.
    """
    from pki.issuance.renew import PcscRenewal, Pkcs11Renewal, renew_card

    if (reader is None) == (token_label is None):
        raise click.UsageError("give exactly one of --reader or --token-label")
    pin = (pin_file.read_text("utf-8").strip() if pin_file is not None
           else getpass.getpass("holder PIN: "))
    auth = admin.authority()
    device: PcscRenewal | Pkcs11Renewal
    try:
        if reader is not None:
            from pki.cards.pcsc import PcscCard

            pcsc = PcscCard.open(reader)
            try:
                device = PcscRenewal(pcsc, pin)
            except BaseException:
                pcsc.close()
                raise
        else:
            from pki.cards.pkcs11_card import Pkcs11Module
            from pki.config import find_softhsm_module

            module = Pkcs11Module(pkcs11_module or find_softhsm_module())
            device = Pkcs11Renewal(module, token_label or "", pin)
        try:
            result = renew_card(auth, card_number, device)
        finally:
            device.close()
    except CardError as exc:
        raise click.ClickException(str(exc)) from None
    if admin.json_output:
        emit_json({"card": result.card_number, "certificates": result.renewed,
                   "superseded": list(result.superseded)})
        return
    click.echo(f"card {result.card_number} renewed")
    for usage, serial in result.renewed.items():
        click.echo(f"  {usage:4}  serial {serial}")
    click.echo(f"superseded: {', '.join(result.superseded) or '(none)'}")
