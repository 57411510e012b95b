"""`cps-admin pro ...` and `cps-admin structure ...`: the directory of holders."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from pki import directory, ids
from pki.cli.context import (
    AdminContext,
    emit_json,
    emit_json_stream,
    emit_record,
    emit_table,
    json_flag,
    pass_admin,
)


def _pro_dict(entry: directory.ProfessionalEntry) -> dict[str, Any]:
    return {"rpps": entry.rpps, "national_id": entry.national_id,
            "profession": entry.profession_code, "profession_label": entry.profession_label,
            "given_name": entry.given_name, "surname": entry.surname}


@click.group()
def pro() -> None:
    """Health professionals (RPPS directory)."""


@pro.command("add")
@click.option("--rpps", required=True, help="11-digit RPPS number (Luhn check digit).")
@click.option("--profession", required=True, help="Profession code, e.g. 10 (physician).")
@click.option("--given-name", required=True)
@click.option("--surname", required=True)
@pass_admin
def pro_add(obj: AdminContext, rpps: str, profession: str, given_name: str,
            surname: str) -> None:
    """Add one professional to the directory."""
    entry = directory.professional_entry(rpps, profession, given_name, surname)
    directory.add_professional(obj.store(), entry)
    click.echo(f"added {entry.national_id} {entry.given_name} {entry.surname} "
               f"({entry.profession_label})")


@pro.command("import")
@click.argument("csv_file", metavar="FILE.csv",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True,
              help="Import the valid rows and list the invalid ones (default: all or nothing).")
@pass_admin
def pro_import(obj: AdminContext, csv_file: Path, skip_invalid: bool) -> None:
    """Import a directory extract (CSV with header rpps,profession,given_name,surname).

    Every row is validated first; if any row is bad, all bad rows are reported with their line
    numbers and nothing is imported, unless --skip-invalid is given. Duplicates inside the file
    or with the directory are errors.
    """
    data = csv_file.read_bytes()
    rows = max(data.count(b"\n") - 1, 0)
    store = obj.store()
    with tqdm(total=rows, desc="validate", unit="row", file=sys.stderr, leave=False,
              dynamic_ncols=True, mininterval=0.2) as bar_validate:
        bars: list[tqdm[Any]] = [bar_validate]

        def on_total(total: int) -> None:
            bars[0].close()
            bars[0] = tqdm(total=total, desc="import", unit="row", file=sys.stderr,
                           dynamic_ncols=True, mininterval=0.2)

        try:
            result = directory.import_csv(store, data, skip_invalid=skip_invalid,
                                          progress=lambda n: bars[0].update(n),
                                          on_total=on_total)
        finally:
            bars[0].close()
    for err in result.skipped:
        click.echo(f"skipped {err}", err=True)
    click.echo(f"imported {result.imported} professional(s)"
               + (f", skipped {len(result.skipped)} invalid row(s)" if result.skipped else ""))


@pro.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N entries.")
@json_flag
@pass_admin
def pro_list(obj: AdminContext, limit: int | None) -> None:
    """The professionals in the directory."""
    entries = directory.iter_professionals(obj.store(), limit=limit)
    if obj.json_output:
        emit_json_stream(_pro_dict(e) for e in entries)
    else:
        emit_table([_pro_dict(e) for e in entries],
                   ["rpps", "profession", "profession_label", "given_name", "surname"])


@pro.command("show")
@click.argument("rpps")
@json_flag
@pass_admin
def pro_show(obj: AdminContext, rpps: str) -> None:
    """One professional and their certificates."""
    from pki.cli.certs import certificate_rows

    entry = directory.get_professional(obj.store(), rpps)
    data = _pro_dict(entry)
    data["certificates"] = [{k: row[k] for k in ("serial", "usage", "status", "not_after")}
                            for row in certificate_rows(obj, rpps=entry.rpps)]
    if obj.json_output:
        emit_json(data)
    else:
        emit_record({k: v for k, v in data.items() if k != "certificates"})
        for cert in data["certificates"]:
            click.echo(f"  {cert['usage']:5} {cert['serial']}  {cert['status']}  "
                       f"until {cert['not_after']}")


@click.group()
def structure() -> None:
    """Health structures (FINESS / SIREN / SIRET) for organisation certificates."""


@structure.command("add")
@click.option("--register", required=True,
              type=click.Choice(sorted(ids.STRUCTURE_ID_PREFIX), case_sensitive=False))
@click.option("--number", required=True, help="Number in that register (Luhn check digit).")
@click.option("--name", required=True, help="Organisation name (certificate O).")
@click.option("--state", required=True, help="Département / region (certificate ST).")
@pass_admin
def structure_add(obj: AdminContext, register: str, number: str, name: str, state: str) -> None:
    """Add a structure; prints its structure id (the organisation certificate OU)."""
    entry = directory.structure_entry(register, number, name, state)
    directory.add_structure(obj.store(), entry)
    click.echo(f"added structure {entry.structure_id} {entry.name}")


@structure.command("list")
@json_flag
@pass_admin
def structure_list(obj: AdminContext) -> None:
    """The structures in the directory."""
    rows = [asdict(s) for s in directory.iter_structures(obj.store())]
    if obj.json_output:
        emit_json(rows)
    else:
        emit_table(rows, ["structure_id", "register", "name", "state"])


def register(main: click.Group) -> None:
    main.add_command(pro)
    main.add_command(structure)
