"""Exercise situations in the directory: from the RPPS extract's structure columns, by hand,
and as the broker reads them (situations_for, pick)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from pki import audit, directory, ids, situations
from pki.cli.admin import main
from pki.errors import Duplicate, InvalidInput, NotFound
from pki.store.db import Store
from pki.store.models import AuditRecord, Professional, Structure
from pki.store.patient_models import ProfessionalActivity
from pki.store.situation_models import ExerciseSituationRow

RPPS_A = ids.luhn_complete("1000111111")
RPPS_B = ids.luhn_complete("1000222222")
FINESS_SAMU = ids.luhn_complete("75000002")
FINESS_CHU = ids.luhn_complete("75000001")
SIRET_CAB = ids.luhn_complete("7350000000001")
BAD_FINESS = FINESS_SAMU[:-1] + str((int(FINESS_SAMU[-1]) + 1) % 10)   # wrong check digit

# The header of the RPPS extract (PS_LibreAcces_Personne_activite), '|'-separated, each line
# ending with '|', one line per activity; the emergency_centre column is ours.
HEADER = ("Type d'identifiant PP|Identifiant PP|Identification nationale PP|"
          "Code civilité d'exercice|Nom d'exercice|Prénom d'exercice|Code profession|"
          "Libellé profession|Numéro SIRET site|Numéro SIREN site|Numéro FINESS site|"
          "Raison sociale site|Enseigne commerciale site|Code rôle|emergency_centre|")


def _line(rpps: str, surname: str, given: str, profession: str = "10", siret: str = "",
          finess: str = "", name: str = "", role: str = "", emergency: str = "") -> str:
    return (f"8|{rpps}|8{rpps}|DR|{surname}|{given}|{profession}|Médecin|{siret}||{finess}|"
            f"{name}||{role}|{emergency}|")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (request.getfixturevalue("pg_url") if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'store.db'}")
    s = Store(url)
    s.migrate()
    yield s
    s.engine.dispose()


def _counts(store: Store) -> tuple[int, int, int, int]:
    with store.read() as session:
        return tuple(int(session.execute(select(func.count()).select_from(m)).scalar_one())
                     for m in (Professional, Structure, ExerciseSituationRow,
                               AuditRecord))  # type: ignore[return-value]


def test_extract_with_structure_columns_gives_situations(store: Store) -> None:
    extract = "\n".join([
        HEADER,
        _line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_CHU, name="CHU Test", role="FON-01"),
        _line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_SAMU, name="SAMU 75", emergency="oui"),
        _line(RPPS_B, "MARTIN", "Paul", profession="60", siret=SIRET_CAB,
              name="Cabinet infirmier"),
    ]).encode()
    result = directory.import_csv(store, extract)
    assert (result.imported, result.situations) == (2, 3)
    with store.read() as session:
        found = directory.situations_for(session, RPPS_A)
        other = directory.situations_for(session, RPPS_B)
        nobody = directory.situations_for(session, ids.luhn_complete("1000333333"))
    assert [(s.structure_id, s.structure_id_type, s.structure_name, s.role_code,
             s.emergency_centre, s.profession_code) for s in found] == [
        ("1" + FINESS_CHU, "FINESS", "CHU Test", "FON-01", False, "10"),
        ("1" + FINESS_SAMU, "FINESS", "SAMU 75", None, True, "10")]
    assert [(s.structure_id, s.structure_id_type, s.profession_code) for s in other] == [
        ("3" + SIRET_CAB, "SIRET", "60")]
    assert nobody == []
    assert found[0].structure_number == FINESS_CHU
    with store.read() as session:
        assert situations.emergency_centre_ids(session, RPPS_A) == {"1" + FINESS_SAMU}
    # One professional per RPPS, three structures, audited.
    assert _counts(store)[:3] == (2, 3, 3)
    assert audit.verify(store).ok


@pytest.mark.parametrize(("line", "message"), [
    (_line(RPPS_A, "DUPONT", "Jeanne", finess=BAD_FINESS, name="CHU"),
     "line 3: FINESS"),
    (_line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_SAMU, name=""), "no raison sociale"),
    (_line(RPPS_A, "DUPOND", "Jeanne", finess=FINESS_SAMU, name="SAMU"), "named Jeanne DUPOND"),
    (_line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_CHU, name="CHU"), "duplicates line 2"),
    (_line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_SAMU, name="SAMU", emergency="peut-être"),
     "emergency_centre"),
    (_line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_SAMU, name="SAMU", role="FON 01"),
     "role code"),
])
def test_bad_situation_rows_write_nothing(store: Store, line: str, message: str) -> None:
    extract = "\n".join([HEADER, _line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_CHU,
                                       name="CHU"), line]).encode()
    before = _counts(store)
    with pytest.raises(InvalidInput, match=message):
        directory.import_csv(store, extract)
    assert _counts(store) == before


def test_skip_invalid_keeps_the_good_situations(store: Store) -> None:
    extract = "\n".join([
        HEADER,
        _line(RPPS_A, "DUPONT", "Jeanne", finess=FINESS_CHU, name="CHU Test"),
        _line(RPPS_A, "DUPONT", "Jeanne", finess="123", name="Bad"),
    ]).encode()
    result = directory.import_csv(store, extract, skip_invalid=True)
    assert (result.imported, result.situations, len(result.skipped)) == (1, 1, 1)
    assert result.skipped[0].line == 3


def test_duplicate_rpps_without_structure_columns_is_still_an_error(store: Store) -> None:
    extract = (f"rpps,profession,given_name,surname\n{RPPS_A},10,Jeanne,Dupont\n"
               f"{RPPS_A},10,Jeanne,Dupont\n").encode()
    with pytest.raises(InvalidInput, match="duplicates line 2"):
        directory.import_csv(store, extract)


def test_pick_and_legacy_practice_links(store: Store) -> None:
    directory.add_professional(store, directory.professional_entry(RPPS_A, 10, "J", "D"))
    chu = directory.structure_entry("FINESS", FINESS_CHU, "CHU Test", "Paris")
    directory.add_structure(store, chu)
    # A practice link of the patient-access tables (what tests/login fixtures write).
    with store.session() as session:
        pro = session.execute(select(Professional).where(Professional.rpps == RPPS_A)
                              ).scalar_one()
        st = session.execute(select(Structure)).scalar_one()
        session.add(ProfessionalActivity(professional_id=pro.id, structure_id=st.id,
                                         created_at=dt.datetime.now(dt.UTC)))
    with store.read() as session:
        only = situations.situations_for(session, RPPS_A)
    assert [(s.situation_id[0], s.structure_id, s.emergency_centre) for s in only] == [
        ("a", "1" + FINESS_CHU, False)]
    assert situations.pick(only, None) == only[0]
    situations.add_situation(store, situations.situation_entry(
        RPPS_A, structure_type="SIRET", structure_number=SIRET_CAB, name="Cabinet",
        profession=10))
    with store.read() as session:
        both = situations.situations_for(session, RPPS_A)
    assert len(both) == 2
    assert situations.pick(both, None) is None            # two: the caller must choose
    assert situations.pick(both, "3" + SIRET_CAB).structure_name == "Cabinet"  # type: ignore
    assert situations.pick(both, SIRET_CAB).structure_id == "3" + SIRET_CAB  # type: ignore
    with pytest.raises(ValueError, match="not one of"):
        situations.pick(both, "1" + FINESS_SAMU)
    with pytest.raises(Duplicate):
        situations.add_situation(store, situations.situation_entry(
            RPPS_A, structure_type="SIRET", structure_number=SIRET_CAB, name="Cabinet",
            profession=10))


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliRunner, Path]]:
    from pki.ca.hierarchy import init_home

    home = tmp_path_factory.mktemp("situations") / "cps"
    init_home(home, key_type="p256")
    runner = CliRunner()
    res = runner.invoke(main, ["--home", str(home), "pro", "add", "--rpps", RPPS_A,
                               "--profession", "10", "--given-name", "Jeanne",
                               "--surname", "Dupont"])
    assert res.exit_code == 0, res.stderr
    yield runner, home


def test_cli_situation_add_list_remove(admin: tuple[CliRunner, Path]) -> None:
    import json

    runner, home = admin

    def run(*args: str) -> tuple[int, str, str]:
        res = runner.invoke(main, ["--home", str(home), *args])
        return res.exit_code, res.stdout, res.stderr

    code, out, err = run("pro", "situation", "add", RPPS_A, "--structure-id", FINESS_SAMU,
                         "--structure-type", "FINESS", "--name", "SAMU 75", "--role", "FON-05",
                         "--emergency-centre")
    assert code == 0, err
    assert "emergency centre" in out
    code, out, err = run("--json", "pro", "situation", "list", RPPS_A)
    rows = json.loads(out)
    assert [(r["structure_id"], r["role_code"], r["emergency_centre"]) for r in rows] == [
        ("1" + FINESS_SAMU, "FON-05", True)]
    # Refusals: one error line each, nothing written.
    for args, message in [
        (("--structure-id", FINESS_SAMU, "--structure-type", "FINESS", "--name", "SAMU"),
         "already has a situation"),
        (("--structure-id", "123", "--structure-type", "FINESS", "--name", "X"), "FINESS"),
        (("--structure-id", FINESS_CHU, "--structure-type", "ADELI", "--name", "X"),
         "ADELI"),
        (("--structure-id", FINESS_CHU, "--structure-type", "FINESS", "--name", "X",
          "--profession", "99"), "unknown profession"),
    ]:
        code, out, err = run("pro", "situation", "add", RPPS_A, *args)
        assert code != 0 and message in err, (args, out, err)
    code, out, err = run("pro", "situation", "add", ids.luhn_complete("1000999999"),
                         "--structure-id", FINESS_CHU, "--structure-type", "FINESS",
                         "--name", "CHU")
    assert code != 0 and "no professional" in err
    code, out, err = run("pro", "situation", "remove", RPPS_A, "999")
    assert code != 0 and "no situation 999" in err
    code, out, err = run("pro", "situation", "remove", RPPS_A, rows[0]["situation_id"])
    assert code == 0, err
    code, out, err = run("--json", "pro", "situation", "list", RPPS_A)
    assert json.loads(out) == []


def test_unknown_professional_has_no_situation_list(store: Store) -> None:
    with pytest.raises(NotFound):
        situations.list_situations(store, RPPS_B)


def test_cli_imports_the_rpps_extract(admin: tuple[CliRunner, Path], tmp_path: Path) -> None:
    import json

    runner, home = admin
    rpps = ids.luhn_complete("1000444444")
    extract = tmp_path / "PS_LibreAcces_Personne_activite.txt"
    extract.write_text("\n".join([
        HEADER,
        _line(rpps, "LEROY", "Anne", finess=FINESS_CHU, name="CHU Test", role="FON-01"),
        _line(rpps, "LEROY", "Anne", siret=SIRET_CAB, name="Cabinet Leroy"),
    ]) + "\n", encoding="utf-8")
    res = runner.invoke(main, ["--home", str(home), "pro", "import", str(extract)])
    assert res.exit_code == 0, res.stderr
    assert "imported 1 professional(s), 2 exercise situation(s)" in res.stdout
    res = runner.invoke(main, ["--home", str(home), "--json", "pro", "situation", "list", rpps])
    assert [(r["structure_id"], r["structure_name"]) for r in json.loads(res.stdout)] == [
        ("1" + FINESS_CHU, "CHU Test"), ("3" + SIRET_CAB, "Cabinet Leroy")]


def test_civility_codes_from_the_extract_reach_the_psc_claims(store: Store) -> None:
    """"Code civilité" and "Code civilité d'exercice" of the RPPS extract: stored, and given
    as PSC gives them (``SubjectRefPro.codeCivilite``, each exercice's
    ``codeCiviliteDExercice``); a professional without them gets ""; a malformed code is a
    row error that writes nothing."""
    from cps_login.claims_psc import AuthContext, psc_claims

    header = HEADER.replace("Code civilité d'exercice|", "Code civilité|Code civilité d'exercice|")

    def line(rpps: str, surname: str, civility: str, exercise: str) -> str:
        return _line(rpps, surname, "Jeanne", finess=FINESS_CHU, name="CHU Test").replace(
            "|DR|", f"|{civility}|{exercise}|", 1)

    bad = "\n".join([header, line(RPPS_A, "DUPONT", "Madame!", "DR")]).encode()
    with pytest.raises(InvalidInput, match="civility"):
        directory.import_csv(store, bad)
    assert _counts(store)[:3] == (0, 0, 0)
    extract = "\n".join([header, line(RPPS_A, "DUPONT", "mme", "DR"),
                         line(RPPS_B, "MARTIN", "", "")]).encode()
    assert directory.import_csv(store, extract).imported == 2
    entry = directory.get_professional(store, RPPS_A)
    assert (entry.civility, entry.exercise_civility) == ("MME", "DR")
    auth = AuthContext.for_key_location("card", 1_700_000_000)
    with store.read() as session:
        claims = psc_claims(session, RPPS_A, organisation=None, auth=auth)
        other = psc_claims(session, RPPS_B, organisation=None, auth=auth)
    assert claims["SubjectRefPro"]["codeCivilite"] == "MME"
    assert claims["SubjectRefPro"]["exercices"][0]["codeCiviliteDExercice"] == "DR"
    assert other["SubjectRefPro"]["codeCivilite"] == ""
    assert other["SubjectRefPro"]["exercices"][0]["codeCiviliteDExercice"] == ""
