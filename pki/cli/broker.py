"""`cps-admin broker ...`: what the security officer prepares for the broker role.

``broker tls-cert --host H`` issues the TLS server certificate of the broker's mutual-TLS
introspection port: an organisation certificate of the operator (ASIP-Santé's SIREN) from the
home's ORGANISATIONS CA, for the DNS name ``H`` (``mtls.localhost`` for an IP address: the
profile carries DNS names only). The key is made here, in software (a TLS server key, not a CA
key), and written 0600 with its chain beside it. The broker never issues anything itself.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from pki import ids
from pki.cli.context import AdminContext, pass_admin
from pki.config import BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE, write_private
from pki.errors import InvalidInput
from pki.store.models import Structure

OPERATOR_SIREN = "187512751"       # the broker's operator, as in the OU of the CA names
LOOPBACK_NAME = "mtls.localhost"
TLS_CERT_FILE = BROKER_TLS_CERT_FILE
TLS_KEY_FILE = BROKER_TLS_KEY_FILE


def dns_name(host: str) -> str:
    """The SAN of the server certificate: the host name, or ``mtls.localhost`` for an address
    (the profile has DNS names only, and the linter wants a dotted name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." not in host or any(not label for label in host.split(".")):
            raise InvalidInput(f"--host {host!r}: a dotted DNS name or an IP address") from None
        return host.lower()
    return LOOPBACK_NAME


def _operator_structure(admin: AdminContext) -> str:
    """The structure id of the broker's operator, registered in the directory if needed."""
    auth = admin.authority()
    structure_id = ids.validate_structure("SIREN", OPERATOR_SIREN)
    with auth.store.session() as session:
        found = session.execute(select(Structure.id).where(
            Structure.structure_id == structure_id)).first()
        if found is None:
            session.add(Structure(structure_id=structure_id, register="SIREN",
                                  name=auth.config.names.organisation, state="Paris (75)",
                                  created_at=dt.datetime.now(dt.UTC)))
    return structure_id


@click.group("broker")
def broker() -> None:
    """Credentials of the broker role (it holds no CA)."""


@broker.command("tls-cert")
@click.option("--host", required=True, help="DNS name (or IP address) clients connect to.")
@pass_admin
def tls_cert(admin: AdminContext, host: str) -> None:
    """Issue the broker's mutual-TLS server certificate into secrets/broker-tls.{crt,key}."""
    from pki.ca.authority import IssueRequest

    name = dns_name(host)
    auth = admin.authority()
    key = ec.generate_private_key(ec.SECP256R1())
    issued = auth.issue(IssueRequest(profile="org", public_key=key.public_key(),
                                     structure_id=_operator_structure(admin),
                                     dns_names=(name,)), actor="cps-admin broker tls-cert")
    chain = [issued.certificate] + [ca.certificate for ca in auth.chain(issued.ca_slug)[:-1]]
    home = admin.home
    write_private(home / TLS_KEY_FILE, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    write_private(home / TLS_CERT_FILE, "".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in chain), mode=0o644)
    click.echo(f"broker TLS certificate {issued.serial} for {name}: {home / TLS_CERT_FILE}, "
               f"key {home / TLS_KEY_FILE}")
