"""ADELI numbers are entered (`pro add --adeli`, an `adeli` column in `pro import`) and
validated (9 digits, Luhn key): a bad one is refused naming it, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from pki import ids
from pki.cli.admin import main

RPPS, RPPS2 = ids.luhn_complete("1000345678"), ids.luhn_complete("1000345679")
ADELI, ADELI2 = ids.luhn_complete("75100123"), ids.luhn_complete("69100456")
BAD_ADELI = ADELI[:-1] + str((int(ADELI[-1]) + 1) % 10)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def pro_add(home: Path, rpps: str, *extra: str) -> Result:
    return run(home, "pro", "add", "--rpps", rpps, "--profession", "10", "--given-name",
               "Jeanne", "--surname", "Martin", *extra)


def listed(home: Path) -> dict[str, str | None]:
    out = run(home, "--json", "pro", "list")
    assert out.exit_code == 0, out.output
    return {row["rpps"]: row["adeli"] for row in json.loads(out.output)}


def test_pro_add_with_an_adeli_number(home: Path) -> None:
    assert pro_add(home, RPPS, "--adeli", ADELI).exit_code == 0
    assert pro_add(home, RPPS2).exit_code == 0
    assert listed(home) == {RPPS: ADELI, RPPS2: None}
    shown = json.loads(run(home, "--json", "pro", "show", RPPS).output)
    assert shown["adeli"] == ADELI


def test_a_bad_adeli_number_is_refused_and_nothing_written(home: Path) -> None:
    for bad, why in ((BAD_ADELI, "check digit"), ("12345", "9 digits"),
                     ("7510012A3", "9 digits")):
        out = pro_add(home, RPPS, "--adeli", bad)
        assert out.exit_code != 0 and "ADELI" in out.output and why in out.output, out.output
    assert listed(home) == {}


def test_pro_import_reads_and_checks_the_adeli_column(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"rpps,profession,given_name,surname,adeli\n"
                   f"{RPPS},10,Jeanne,Martin,{ADELI}\n{RPPS2},10,Paul,Durand,{BAD_ADELI}\n")
    out = run(home, "pro", "import", str(bad))
    assert out.exit_code != 0 and "line 3" in out.output and "ADELI" in out.output
    assert listed(home) == {}
    good = tmp_path / "good.csv"
    good.write_text(f"rpps,profession,given_name,surname,numero_adeli\n"
                    f"{RPPS},10,Jeanne,Martin,{ADELI}\n{RPPS2},10,Paul,Durand,\n")
    assert run(home, "pro", "import", str(good)).exit_code == 0
    assert listed(home) == {RPPS: ADELI, RPPS2: None}
