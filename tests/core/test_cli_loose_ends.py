"""`cps-admin --json crl publish` honours the global --json; a bad --db scheme is one error line
(not "internal error (NoSuchModuleError)") and touches nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pki.cli.admin import main

CPS_ADMIN = str(Path(sys.executable).with_name("cps-admin"))


def test_global_json_flag_reaches_crl_publish(home: Path) -> None:
    out = CliRunner().invoke(main, ["--home", str(home), "--json", "crl", "publish"])
    assert out.exit_code == 0, out.output
    published = json.loads(out.output)
    assert published and {p["kind"] for p in published} == {"full"}
    assert all(p["path"].startswith("/crl/") for p in published)


@pytest.mark.parametrize(("url", "why"), [
    ("nosuchdb://user:secret@host/db", "unknown"),
    ("mysql://user:secret@host/db", "driver is not installed"),
    ("not a url", "unknown"),
])
def test_bad_db_url_is_one_error_line(home: Path, url: str, why: str) -> None:
    proc = subprocess.run([CPS_ADMIN, "--home", str(home), "--db", url, "pro", "list"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: store URL scheme"), proc.stderr
    assert why in lines[0] and "internal error" not in lines[0]
    assert "secret" not in proc.stderr
