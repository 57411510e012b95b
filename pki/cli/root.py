"""``cps-admin root ...``: the offline root's ceremonies, the only commands that read root.pin.

Each command opens the root token for its own duration and closes it; nothing else in the
project (no role of ``serve``, no officer command) opens it after ``cps-admin init``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from pki.cli.context import AdminContext, emit_json, json_flag, pass_admin

if TYPE_CHECKING:
    from pki.ca.root import RootCeremony


@contextmanager
def _ceremony(obj: AdminContext) -> Iterator[RootCeremony]:
    # Imported here: `cps-admin --help` and the public roles never load the CA (docs/roles.md).
    from pki.ca.root import RootCeremony

    ceremony = RootCeremony.open(obj.home, obj.db_url)
    try:
        yield ceremony
    finally:
        ceremony.close()


@click.group("root")
def root() -> None:
    """Offline root ceremonies (open the root token with secrets/root.pin)."""


@root.command("sign-ca")
@click.argument("name")
@json_flag
@pass_admin
def sign_ca_command(obj: AdminContext, name: str) -> None:
    """Issue a new certificate for the issuing CA NAME (slug or common name), same key."""
    from pki.ca.root import sign_ca

    with _ceremony(obj) as ceremony:
        done = sign_ca(ceremony, name)
    if obj.json_output:
        emit_json(done.summary())
    else:
        click.echo(f"certified {done.slug}: serial {done.serial} (was {done.previous_serial}), "
                   f"valid {done.not_before:%Y-%m-%d} to {done.not_after:%Y-%m-%d} "
                   f"-> {done.pem_path}")


@root.command("crl")
@json_flag
@pass_admin
def crl_command(obj: AdminContext) -> None:
    """Publish each root's full CRL (the ARL), signed with the root key."""
    from pki.ca.root import publish_root_crls

    with _ceremony(obj) as ceremony:
        published = publish_root_crls(ceremony)
    if obj.json_output:
        emit_json([p.summary() for p in published])
        return
    for p in published:
        click.echo(f"full CRL #{p.number} {p.ca_slug}: {p.entries} entries, "
                   f"next update {p.next_update.isoformat()} -> {p.path}")
