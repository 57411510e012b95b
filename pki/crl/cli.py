"""``cps-admin crl ...``: the group the admin CLI mounts.

``ctx.obj`` is the admin CLI's context object: it must offer ``authority()`` (an opened
pki.ca.authority.Authority) and may carry ``json_output`` (the global ``--json`` flag). Errors are
PkiError and propagate to the admin CLI, which prints the one-line ``error: ...``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pki.crl.publisher import AuthorityView, PublishedCrl, publish, publish_delta, publish_full


def publish_summaries(auth: AuthorityView, *, delta: bool = False,
                      ca: str | None = None) -> list[dict[str, Any]]:
    """Publish and describe: every CA (or one), full CRLs or deltas."""
    published: list[PublishedCrl]
    if ca is None:
        published = publish(auth, delta=delta)
    else:
        published = publish_delta(auth, ca) if delta else publish_full(auth, ca)
    return [p.summary() for p in published]


def _line(s: dict[str, Any]) -> str:
    scope = "" if s["shard"] is None else f" partition {s['shard']}"
    base = "" if s["base_number"] is None else f" (base {s['base_number']})"
    return (f"{s['kind']} CRL #{s['number']}{base} {s['ca']}{scope}: {s['entries']} entries, "
            f"{s['size']} bytes, next update {s['next_update']} -> {s['path']}")


@click.group("crl")
def crl() -> None:
    """Certificate revocation lists."""


@crl.command("publish")
@click.option("--delta", is_flag=True, help="Publish delta CRLs on the newest full CRLs.")
@click.option("--ca", "ca_slug", default=None, metavar="SLUG", help="Only this CA.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_obj
def publish_command(obj: Any, delta: bool, ca_slug: str | None, as_json: bool) -> None:
    """Sign and store new CRLs (full, or delta with --delta); print what was published."""
    summaries = publish_summaries(obj.authority(), delta=delta, ca=ca_slug)
    if as_json or getattr(obj, "json_output", False):
        click.echo(json.dumps(summaries, indent=2))
    else:
        for s in summaries:
            click.echo(_line(s))
