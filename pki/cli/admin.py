"""`cps-admin`: the security officers' command line (CONTRACT.md).

Every failure caused by bad input ends with exit status 1 (2 for usage errors) and exactly one
line ``error: <message>`` on stderr — never a traceback. Other modules attach their commands
with ``main.add_command(...)`` (``serve``, ``card``, ``crl``).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import click
from cryptography.hazmat.primitives import serialization

from pki import audit as audit_log
from pki.cards.errors import CardError
from pki.cli.context import (
    AdminContext,
    emit_json,
    emit_json_stream,
    emit_table,
    json_flag,
    pass_admin,
)
from pki.config import default_home
from pki.crl.cli import crl
from pki.errors import NotFound, PkiError
from pki.keytypes import KeyType
from pki.store.models import AuditRecord


def one_line(message: str) -> str:
    return " ".join(message.split())


class AdminGroup(click.Group):
    """A click group that turns every expected failure into one ``error:`` line."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except PkiError as exc:
            _fail(exc.message, 1)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", 1)
        except CardError as exc:
            _fail(str(exc), 1)
        except Exception as exc:  # a bug, not bad input: still one line; traceback on request
            if os.environ.get("CPS_DEBUG"):
                traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}): {exc}; set CPS_DEBUG=1 for the "
                  f"traceback", 70)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return rv

    # Subcommands whose modules are imported only when named (module, attribute; None: the
    # module's ``register(main)`` adds it): `serve --role status` must reach its runner without
    # importing the CA and, with it, the PKCS#11 module (docs/roles.md).
    lazy: ClassVar[dict[str, tuple[str, str | None]]] = {
        "serve": ("pki.cli.serve", "serve"), "card": ("pki.cli.card", "card"),
        "pro": ("pki.cli.directory", None), "structure": ("pki.cli.directory", None),
        "cert": ("pki.cli.certs", None), "bench-populate": ("pki.cli.bench", None),
        "broker": ("pki.cli.broker", "broker"), "root": ("pki.cli.root", "root"),
        "db": ("pki.cli.db", "db"), "client": ("pki.cli.clients", "client"),
        "tsa": ("pki.cli.tsa", "tsa"),
        "incident": ("pki.cli.incident", "incident"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module_name, attribute = self.lazy[cmd_name]
            module = importlib.import_module(module_name)
            if attribute is None:
                module.register(self)
            else:
                self.add_command(getattr(module, attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CPS home directory (default: $CPS_HOME, else ./var/cps).")
@click.option("--db", "db_url", metavar="URL", default=None,
              help="Store URL (default: SQLite in the home; postgresql+psycopg://... works).")
@click.option("--json", "json_output", is_flag=True, help="JSON output for listings.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, db_url: str | None, json_output: bool) -> None:
    """Administer the CPS health PKI: CAs in the HSM, directory, certificates, audit."""
    obj = AdminContext(home=home or default_home(), db_url=db_url, json_output=json_output)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# --- init -------------------------------------------------------------------------------

def _ranges(values: tuple[str, ...]) -> tuple[str, ...]:
    from pki.ca.hierarchy import RANGES

    out: list[str] = []
    for value in values:
        out += [r.strip().upper() for r in value.split(",") if r.strip()]
    bad = [r for r in out if r not in RANGES]
    if bad:
        raise click.BadParameter(f"unknown range {', '.join(bad)}; expected some of "
                                 f"{', '.join(RANGES)}", param_hint="--ranges")
    return tuple(out) or ("FORT",)


@main.command()
@click.option("--ranges", "ranges", multiple=True, metavar="FORT[,STANDARD,...]",
              help="Assurance ranges to create (comma-separated or repeated; default FORT).")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default="rsa4096",
              show_default=True, help="CA key type (SPEC §2: RSA-4096).")
@click.option("--base-url", default="http://127.0.0.1:8080", show_default=True,
              help="Public URL embedded in certificates (CRL, OCSP, CA issuers).")
@click.option("--crl-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="CRL partitions per issuing CA.")
@pass_admin
def init(obj: AdminContext, ranges: tuple[str, ...], key_type: str, base_url: str,
         crl_shards: int) -> None:
    """Create the home: HSM tokens (root, CA, broker), CA hierarchy, store, configuration."""
    from pki.ca.hierarchy import init_home

    config = init_home(obj.home, ranges=_ranges(ranges), key_type=key_type, db_url=obj.db_url,
                       base_url=base_url, crl_shards=crl_shards)
    click.echo(f"initialised {obj.home} ({', '.join(config.ranges)}, {config.key_type}, "
               f"store {'SQLite' if config.db_url is None else 'external'})")
    h = config.hsm
    click.echo(f"tokens: {h.root_token_label} (roots; {h.root_pin_file} is read only by "
               f"`cps-admin root ...`: keep it off the servers), {h.token_label} (issuing CAs), "
               f"{h.broker_token_label} (broker), {h.tsa_token_label} (time stamps: "
               f"`cps-admin tsa cert` makes its key and certificate)")


# --- ca ---------------------------------------------------------------------------------

@main.group()
def ca() -> None:
    """Certificate authorities of this home."""


@ca.command("list")
@json_flag
@pass_admin
def ca_list(obj: AdminContext) -> None:
    """The CAs: name, role, range, key type, validity."""
    rows = []
    for info in obj.authority().cas():
        cert = info.certificate
        rows.append({"slug": info.slug, "name": info.name, "role": info.role,
                     "range": info.range, "key_type": info.key_type,
                     "serial": f"{cert.serial_number:X}",
                     "subject": cert.subject.rfc4514_string(),
                     "issuer": cert.issuer.rfc4514_string(),
                     "not_after": cert.not_valid_after_utc.isoformat()})
    if obj.json_output:
        emit_json(rows)
    else:
        emit_table(rows, ["slug", "role", "range", "key_type", "not_after"])


@ca.command("export")
@click.argument("name", required=False)
@click.option("--all", "export_all", is_flag=True, help="Every CA of the home.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PEM file to write.")
@pass_admin
def ca_export(obj: AdminContext, name: str | None, export_all: bool, out: Path) -> None:
    """Write a CA's chain (the CA, then its issuers up to the root) as PEM."""
    auth = obj.authority()
    if export_all == (name is not None):
        raise click.UsageError("give a CA NAME or --all (not both)")
    if export_all:
        certs = [c.certificate for c in auth.cas()]
    else:
        assert name is not None
        wanted = [c for c in auth.cas() if name in (c.slug, c.name) or
                  name.lower() == c.name.lower()]
        if not wanted:
            raise NotFound(f"no CA {name!r}; known: {', '.join(c.slug for c in auth.cas())}")
        certs = [c.certificate for c in auth.chain(wanted[0].slug)]
    out.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    click.echo(f"wrote {len(certs)} certificate(s) to {out}")


# --- audit ------------------------------------------------------------------------------

@main.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@json_flag
@pass_admin
def audit_verify(obj: AdminContext) -> None:
    """Walk the hash chain; exit non-zero naming every edited, deleted or reordered record."""
    report = audit_log.verify(obj.store())
    if obj.json_output:
        emit_json({"ok": report.ok, "records": report.records, "problems": report.problems})
    if not report.ok:
        raise AuditBroken(f"audit chain broken ({len(report.problems)} problem(s) in "
                          f"{report.records} records): " + "; ".join(report.problems))
    if not obj.json_output:
        click.echo(f"audit chain intact: {report.records} records")


class AuditBroken(PkiError):
    code = "audit_broken"


@audit.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many of the latest records.")
@click.option("--action", default=None, help="Only records of this action (e.g. cert.revoke).")
@json_flag
@pass_admin
def audit_list(obj: AdminContext, limit: int, action: str | None) -> None:
    """The latest audit records, oldest first."""
    from sqlalchemy import select

    with obj.store().read() as session:
        query = select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(limit)
        if action is not None:
            query = query.where(AuditRecord.action == action)
        rows = [{"seq": r.seq, "at": r.at.isoformat(), "actor": r.actor, "action": r.action,
                 "target": r.target, "details": r.details, "hash": r.hash}
                for r in session.execute(query).scalars()]
    rows.reverse()
    if obj.json_output:
        emit_json_stream(rows)
    else:
        emit_table(rows, ["seq", "at", "actor", "action", "target"])


main.add_command(crl)

if __name__ == "__main__":   # `python -m pki.cli.admin` (the supervisor starts its roles so)
    main()
