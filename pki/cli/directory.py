"""`cps-admin pro ...` and `cps-admin structure ...`: the directory of holders."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from pki import directory, ids, situations
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
            "given_name": entry.given_name, "surname": entry.surname, "adeli": entry.adeli,
            "civility": entry.civility, "exercise_civility": entry.exercise_civility}


@click.group()
def pro() -> None:
    """Health professionals (RPPS directory)."""


@pro.command("add")
@click.option("--rpps", required=True, help="11-digit RPPS number (Luhn check digit).")
@click.option("--profession", required=True, help="Profession code, e.g. 10 (physician).")
@click.option("--given-name", required=True)
@click.option("--surname", required=True)
@click.option("--adeli", default=None, help="9-digit ADELI number, if any (Luhn key checked).")
@click.option("--civility", default=None, help="civility code, e.g. M or MME (RPPS \"Code "
                                               "civilité\")")
@click.option("--exercise-civility", default=None,
              help="civility of exercise, e.g. DR or PR (RPPS \"Code civilité d'exercice\")")
@pass_admin
def pro_add(obj: AdminContext, rpps: str, profession: str, given_name: str,
            surname: str, adeli: str | None, civility: str | None,
            exercise_civility: str | None) -> None:
    """Add one professional to the directory."""
    entry = directory.professional_entry(rpps, profession, given_name, surname, adeli,
                                         civility, exercise_civility)
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
    """Import a directory extract (CSV with header rpps,profession,given_name,surname[,adeli]).

    The RPPS extract's own columns are read too ('|'-separated, "Identifiant PP", "Code
    profession", "Nom d'exercice", ...): with structure columns ("Numéro FINESS site", "Numéro
    SIRET site", "Numéro SIREN site", "Raison sociale site", "Code rôle", optional
    emergency_centre) each row also adds an exercise situation, one professional per RPPS.

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
               + (f", {result.situations} exercise situation(s)" if result.situations else "")
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


@pro.group("situation")
def situation() -> None:
    """Exercise situations: the structures a professional practises for (SubjectRefPro)."""


def _situation_dict(s: situations.ExerciseSituation) -> dict[str, Any]:
    return asdict(s) | {"structure_number": s.structure_number}


@situation.command("add")
@click.argument("rpps")
@click.option("--structure-id", "number", required=True,
              help="FINESS, SIRET or SIREN number of the site (Luhn check digit).")
@click.option("--structure-type", required=True,
              type=click.Choice(situations.REGISTERS, case_sensitive=False))
@click.option("--name", required=True, help="Raison sociale of the site.")
@click.option("--profession", default=None,
              help="Profession code in this situation (default: the professional's).")
@click.option("--role", default=None, help="Role (fonction) code, e.g. FON-01.")
@click.option("--state", default="", help="Département / region of a new structure.")
@click.option("--emergency-centre", is_flag=True,
              help="The site is an emergency call centre (SAMU/SAS): grants emergency access.")
@json_flag
@pass_admin
def situation_add(obj: AdminContext, rpps: str, number: str, structure_type: str, name: str,
                  profession: str | None, role: str | None, state: str,
                  emergency_centre: bool) -> None:
    """Add one exercise situation to a professional (the structure is created if new)."""
    store = obj.store()
    pro_entry = directory.get_professional(store, rpps)
    entry = situations.situation_entry(
        pro_entry.rpps, structure_type=structure_type, structure_number=number, name=name,
        profession=profession if profession is not None else pro_entry.profession_code,
        role=role, state=state, emergency_centre=emergency_centre)
    added = situations.add_situation(store, entry)
    if obj.json_output:
        emit_json(_situation_dict(added))
    else:
        click.echo(f"added situation {added.situation_id}: {pro_entry.national_id} at "
                   f"{added.structure_id} {added.structure_name}"
                   + (" (emergency centre)" if added.emergency_centre else ""))


@situation.command("list")
@click.argument("rpps")
@json_flag
@pass_admin
def situation_list(obj: AdminContext, rpps: str) -> None:
    """A professional's exercise situations."""
    rows = [_situation_dict(s) for s in situations.list_situations(obj.store(), rpps)]
    if obj.json_output:
        emit_json(rows)
    else:
        emit_table(rows, ["situation_id", "structure_id", "structure_id_type", "structure_name",
                          "profession_code", "role_code", "emergency_centre"])


@situation.command("remove")
@click.argument("rpps")
@click.argument("situation_id")
@pass_admin
def situation_remove(obj: AdminContext, rpps: str, situation_id: str) -> None:
    """Remove one exercise situation (by the id 'situation list' shows)."""
    situations.remove_situation(obj.store(), rpps, situation_id)
    click.echo(f"removed situation {situation_id}")


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
