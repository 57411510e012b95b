"""`cps-admin bench-populate`: a synthetic population through the batched issuance path."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from pki.ca import batch
from pki.cli.context import AdminContext, emit_json, json_flag, pass_admin


@click.command("bench-populate")
@click.option("--count", type=click.IntRange(min=1), required=True,
              help="Certificates to issue (auth + sign for count/2 synthetic professionals).")
@click.option("--revoked-fraction", type=click.FloatRange(0.0, 1.0), default=0.0,
              show_default=True, help="Fraction of them to revoke (a mix of RFC 5280 reasons, "
                                      "certificateHold included) through the batched path.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Issuing processes, each with its own HSM session (spawned).")
@click.option("--key-pool", type=click.IntRange(min=1), default=batch.KEY_POOL_SIZE,
              show_default=True, help="Pre-generated RSA-2048 subject keys to cycle through.")
@json_flag
@pass_admin
def bench_populate(obj: AdminContext, count: int, revoked_fraction: float, workers: int,
                   key_pool: int) -> None:
    """Issue COUNT synthetic certificates through the real path and print certificates/s.

    Every certificate is built from the directory, linted (pkilint, throw-away signature),
    signed by the issuing CA key in the HSM and stored with its audit record. Subject public
    keys are cycled from a small pool of pre-generated RSA-2048 keys: on a card the key is
    generated on the card, and generating 100k RSA keys here would take hours.
    """
    auth = obj.authority()
    with tqdm(total=count, desc="issue", unit="cert", file=sys.stderr, leave=False,
              dynamic_ncols=True, mininterval=0.5) as bar:
        result = batch.populate(auth, count, revoked_fraction=revoked_fraction,
                                workers=workers, pool_size=key_pool, progress=bar.update)
    data = {"certificates": result.certificates, "professionals": result.professionals,
            "revoked": result.revoked, "held": result.held, "workers": result.workers,
            "key_type": auth.config.key_type,
            "issue_seconds": round(result.issue_seconds, 3),
            "revoke_seconds": round(result.revoke_seconds, 3),
            "total_seconds": round(result.total_seconds, 3),
            "certificates_per_second": round(result.rate, 1)}
    if obj.json_output:
        emit_json(data)
        return
    click.echo(f"issued {result.certificates} certificates for {result.professionals} "
               f"professionals in {result.issue_seconds:.2f} s with {workers} worker(s) "
               f"({auth.config.key_type} CA)")
    click.echo(f"revoked {result.revoked}, held {result.held} in {result.revoke_seconds:.2f} s; "
               f"total {result.total_seconds:.2f} s")
    click.echo(f"{result.rate:.1f} certificates/s")


def register(main: click.Group) -> None:
    main.add_command(bench_populate)
