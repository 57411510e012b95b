"""``cps-admin db grants``: one PostgreSQL user per role, granted only what the role does."""

from __future__ import annotations

from pathlib import Path

import click

from pki.cli.context import AdminContext, emit_json, json_flag, pass_admin


@click.group("db")
def db() -> None:
    """The store's database (PostgreSQL users and privileges)."""


def _passwords(items: tuple[str, ...]) -> dict[str, str | None]:
    from pki.store.grants import ROLES

    out: dict[str, str | None] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or role not in ROLES:
            raise click.BadParameter(f"expected ROLE=FILE with ROLE one of {', '.join(ROLES)}, "
                                     f"got {item!r}", param_hint="--password-file")
        try:
            password = Path(path).read_text().strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                     param_hint="--password-file") from None
        if not password:
            raise click.BadParameter(f"{path} is empty", param_hint="--password-file")
        out[role] = password
    return out


@db.command("grants")
@click.option("--role-prefix", default="cps", show_default=True,
              help="Database users are PREFIX_signer, PREFIX_status, PREFIX_broker, "
                   "PREFIX_patient.")
@click.option("--password-file", "password_files", multiple=True, metavar="ROLE=FILE",
              help="The password of ROLE's user (repeatable); without it the user has none "
                   "(pg_hba trust or peer only).")
@json_flag
@pass_admin
def grants_command(obj: AdminContext, role_prefix: str, password_files: tuple[str, ...]
                   ) -> None:
    """Create the role users if missing and grant each only the tables its role uses
    (run as the schema owner, again after every migration)."""
    from sqlalchemy.exc import DBAPIError

    from pki.store import grants

    if not role_prefix.replace("_", "").isalnum():
        raise click.BadParameter("letters, digits and _ only", param_hint="--role-prefix")
    passwords = _passwords(password_files)
    store = obj.store()
    try:
        with store.engine.begin() as conn:
            done = grants.apply(conn, role_prefix.lower(), passwords)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:     # e.g. not the schema owner: nothing was granted
        raise click.ClickException(f"grants refused by the database, none applied: "
                                   f"{str(exc.orig).splitlines()[0]}") from None
    if obj.json_output:
        emit_json([{"user": g.user, "created": g.created, "tables": g.tables} for g in done])
        return
    for g in done:
        click.echo(f"{g.user}: {'created, ' if g.created else ''}{g.tables} tables granted")
