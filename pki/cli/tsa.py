"""`cps-admin tsa ...`: what the security officer prepares for the time-stamping authority.

``tsa cert`` is the TSA's ceremony (docs/roles.md):

1. the TSA token ``CPS-TSA`` exists (``cps-admin init`` makes it; a home made before the TSA
   existed gets it here, with its PIN files ``secrets/tsa.pin`` / ``tsa-so.pin``);
2. the key ``tsa:signing`` is generated inside that token the first time (sensitive,
   non-extractable, sign-only; P-256 by default), and reused afterwards;
3. the ORGANISATIONS issuing CA certifies it with the ``tsa`` profile: extendedKeyUsage
   id-kp-timeStamping only and critical (RFC 3161 §2.3), keyUsage digitalSignature, the TSA
   certificate policy; linted with pkilint like every certificate, before the CA key signs;
4. the chain (TSA certificate, issuing CA, root) is written to ``HOME/tsa/tsa-chain.pem``
   (public, 0644), which the tsa role reads at start and relying parties may use.

Run again to renew the certificate (same key); restart the tsa replicas afterwards. The
command opens the CA token (to issue) and the TSA token (to make or find the key), as an
officer command may; the running tsa role only ever opens the TSA token.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from pki import ids
from pki.cli.context import AdminContext, pass_admin
from pki.config import TSA_CHAIN_FILE, TSA_KEY_LABEL, Config, write_private
from pki.keytypes import KeyType
from pki.store.models import Structure

if TYPE_CHECKING:
    from pki.ca.authority import Authority

OPERATOR_SIREN = "187512751"       # the TSA's operator, as in the OU of the CA names
TSA_COMMON_NAME = "IGC-SANTE Horodatage"


@dataclass(frozen=True)
class TsaCertificate:
    serial: str
    chain_path: Path
    certificate: x509.Certificate
    new_key: bool


def ensure_tsa_token(config: Config) -> bool:
    """Create the TSA token of a home made before it existed; True when created.

    Decided on the PIN file, before this process loads the PKCS#11 module (a SoftHSM already
    initialised here would not see a token another process adds)."""
    h = config.hsm
    if config.path(h.tsa_pin_file).exists():
        return False
    conf = config.softhsm_conf_path()
    if conf is None:
        raise click.ClickException(
            f"{config.path(h.tsa_pin_file)} is missing: with a hardware module, create the "
            f"token {h.tsa_token_label!r} with its own tools and put its user PIN there")
    from pki.ca import softhsm

    write_private(config.path(h.tsa_so_pin_file), secrets.token_urlsafe(18) + "\n")
    write_private(config.path(h.tsa_pin_file), secrets.token_urlsafe(18) + "\n")
    softhsm.init_token(h.module, conf, h.tsa_token_label, config.path(h.tsa_so_pin_file),
                       config.path(h.tsa_pin_file))
    return True


def _operator_structure(auth: Authority) -> str:
    """The structure id of the TSA's operator, registered in the directory if needed."""
    structure_id = ids.validate_structure("SIREN", OPERATOR_SIREN)
    with auth.store.session() as session:
        found = session.execute(select(Structure.id).where(
            Structure.structure_id == structure_id)).first()
        if found is None:
            session.add(Structure(structure_id=structure_id, register="SIREN",
                                  name=auth.config.names.organisation, state="Paris (75)",
                                  created_at=dt.datetime.now(dt.UTC)))
    return structure_id


def issue_tsa_certificate(auth: Authority, key_type: KeyType = KeyType.P256,
                          actor: str = "cps-admin tsa cert") -> TsaCertificate:
    """Steps 2-4 of the ceremony (the module text) for ``auth``'s home."""
    from pki.ca.authority import IssueRequest
    from pki.roles.tsa import open_tsa_token

    config = auth.config
    hsm = open_tsa_token(config)
    try:
        created = not hsm.has_key(TSA_KEY_LABEL)
        key = hsm.generate_key(TSA_KEY_LABEL, key_type) if created else hsm.key(TSA_KEY_LABEL)
        public_key = key.public_key()
    finally:
        hsm.close()
    issued = auth.issue(IssueRequest(profile="tsa", public_key=public_key,
                                     structure_id=_operator_structure(auth),
                                     common_name=TSA_COMMON_NAME, key_storage="hsm"),
                        actor=actor)
    chain = [issued.certificate] + [ca.certificate for ca in auth.chain(issued.ca_slug)]
    path = config.path(TSA_CHAIN_FILE)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    write_private(path, "".join(c.public_bytes(serialization.Encoding.PEM).decode()
                                for c in chain), mode=0o644)
    return TsaCertificate(issued.serial, path, issued.certificate, created)


@click.group("tsa")
def tsa() -> None:
    """The time-stamping authority's key and certificate (it holds no CA key)."""


@tsa.command("cert")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default="p256",
              show_default=True, help="Type of the TSA key, when it is generated.")
@pass_admin
def cert(admin: AdminContext, key_type: str) -> None:
    """Make the TSA key (first time) and issue its certificate into HOME/tsa/tsa-chain.pem."""
    config = admin.config()
    if ensure_tsa_token(config):
        click.echo(f"created token {config.hsm.tsa_token_label} ({config.hsm.tsa_pin_file})")
    result = issue_tsa_certificate(admin.authority(), KeyType(key_type))
    click.echo(f"TSA certificate {result.serial} ({'new' if result.new_key else 'existing'} "
               f"key {TSA_KEY_LABEL} in {config.hsm.tsa_token_label}, extendedKeyUsage "
               f"timeStamping critical): {result.chain_path}")
