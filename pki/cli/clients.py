"""``cps-admin client add|list|remove``: the relying services of the broker's OpenID Connect
provider (cps_login.oidc). The secret is printed once; the store keeps its SHA-256 only."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pki.cli.context import AdminContext, emit_json, emit_record, emit_table, json_flag, pass_admin


@click.group("client")
def client() -> None:
    """OpenID Connect clients (relying services) of the login broker."""


@client.command("add")
@click.option("--name", required=True, help="Shown to professionals (CIBA approvals).")
@click.option("--redirect-uri", "redirect_uris", multiple=True,
              help="Exact redirect URI (repeatable); https, or http on a loopback address.")
@click.option("--public", is_flag=True, help="A public client (no secret): PKCE S256 required.")
@click.option("--ciba", is_flag=True, help="May start back-channel (CIBA poll) logins.")
@click.option("--auth-method", default="client_secret_basic", show_default=True,
              type=click.Choice(["client_secret_basic", "private_key_jwt", "tls_client_auth"]),
              help="How the client authenticates at the token endpoint.")
@click.option("--jwks", "jwks_file", type=click.Path(path_type=Path, dir_okay=False),
              help="The client's public JWKS (private_key_jwt).")
@click.option("--tls-subject", help="Subject DN (RFC 4514) of the client's organisation "
                                     "certificate (tls_client_auth).")
@json_flag
@pass_admin
def add(obj: AdminContext, name: str, redirect_uris: tuple[str, ...], public: bool, ciba: bool,
        auth_method: str, jwks_file: Path | None, tls_subject: str | None) -> None:
    """Register a client; prints client_id and client_secret (shown only now)."""
    from cps_login.oidc.clients import register
    from pki import audit

    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{jwks_file}: {exc}", param_hint="--jwks") from None
        if not isinstance(jwks, dict):
            raise click.BadParameter(f"{jwks_file}: not a JWKS object", param_hint="--jwks")
    store = obj.store()
    done = register(store, name=name, redirect_uris=list(redirect_uris), public=public,
                    ciba=ciba, auth_method=auth_method, jwks=jwks, tls_subject_dn=tls_subject)
    with store.session() as session:
        audit.append(session, "oidc.client_add", done.client_id,
                     {"name": name, "redirect_uris": list(redirect_uris), "public": public,
                      "ciba": ciba, "auth_method": done.client.token_endpoint_auth_method},
                     actor="officer")
    out = {"client_id": done.client_id, "client_secret": done.client_secret,
           "token_endpoint_auth_method": done.client.token_endpoint_auth_method}
    if obj.json_output:
        emit_json(out)
    else:
        emit_record(out)


@client.command("list")
@json_flag
@pass_admin
def list_command(obj: AdminContext) -> None:
    """The registered clients (never their secrets)."""
    from cps_login.oidc.clients import listing

    rows = listing(obj.store())
    if obj.json_output:
        emit_json(rows)
    else:
        emit_table(rows, ["client_id", "name", "type", "auth_method", "ciba", "redirect_uris"])


@client.command("remove")
@click.argument("client_id")
@pass_admin
def remove_command(obj: AdminContext, client_id: str) -> None:
    """Remove a client: its codes and tokens are refused from then on."""
    from cps_login.oidc.clients import remove
    from pki import audit

    store = obj.store()
    remove(store, client_id)
    with store.session() as session:
        audit.append(session, "oidc.client_remove", client_id, {}, actor="officer")
    click.echo(f"removed {client_id}")
