"""``cps-verify`` as a relying party runs it: one file, ``--batch``, ``--json``, exit codes, and
trust from a home or a PEM file; ``POST /verify`` answers the same reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.signatures.conftest import SignEnv
from tests.signatures.test_cades import CLAIM, sign

VERIFY = str(Path(sys.executable).with_name("cps-verify"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VERIFY, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def batch(sign_env: SignEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    card = sign_env.cards["alice"]
    for i in range(3):
        claim = CLAIM + f"claim {i}\n".encode()
        (folder / f"claim{i}.txt").write_bytes(claim)
        (folder / f"claim{i}.txt.p7s").write_bytes(sign(sign_env, card, "B-LT", claim))
    (folder / "README").write_text("not a pair: no README.p7s\n")
    return folder


def test_one_file_json(sign_env: SignEnv, batch: Path) -> None:
    proc = run(str(batch / "claim0.txt"), "--json", "--home", str(sign_env.home))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["indication"] == "TOTAL_PASSED" and report["sub_indication"] is None
    assert report["signer"] == "8" + sign_env.cards["alice"].holder().rpps
    assert report["signing_time"] and report["level"] == "B-LT"
    # explicit --signature, text output
    proc = run(str(batch / "claim1.txt"), "--signature", str(batch / "claim1.txt.p7s"),
               "--home", str(sign_env.home))
    assert proc.returncode == 0 and proc.stdout.startswith("TOTAL_PASSED, signer 8")


def test_failures_exit_1_with_their_verdict(sign_env: SignEnv, batch: Path,
                                            tmp_path: Path) -> None:
    (tmp_path / "random.p7s").write_bytes(os.urandom(512))
    proc = run(str(batch / "claim0.txt"), "--signature", str(tmp_path / "random.p7s"),
               "--json", "--home", str(sign_env.home))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["sub_indication"] == "FORMAT_FAILURE"
    proc = run(str(batch / "claim0.txt"), "--signature", str(batch / "claim1.txt.p7s"),
               "--home", str(sign_env.home))
    assert proc.returncode == 1 and proc.stdout.startswith("TOTAL_FAILED/HASH_FAILURE")


def test_batch(sign_env: SignEnv, batch: Path, tmp_path: Path) -> None:
    proc = run("--batch", str(batch), "--home", str(sign_env.home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("3 of 3 TOTAL_PASSED")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("claim0.txt", "claim0.txt.p7s", "claim1.txt"):
        (mixed / name).write_bytes((batch / name).read_bytes())
    (mixed / "claim1.txt.p7s").write_bytes((batch / "claim2.txt.p7s").read_bytes())
    proc = run("--batch", str(mixed), "--json", "--home", str(sign_env.home))
    assert proc.returncode == 1
    reports = {r["file"]: r for r in json.loads(proc.stdout)}
    assert reports["claim0.txt"]["indication"] == "TOTAL_PASSED"
    assert reports["claim1.txt"]["sub_indication"] == "HASH_FAILURE"


def test_trust_from_a_pem_file_and_offline(sign_env: SignEnv, batch: Path,
                                           tmp_path: Path) -> None:
    pem = tmp_path / "igc-sante.pem"
    pem.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in sign_env.chain))
    policy = sign_env.auth.config.profiles.sign_policy_oid
    proc = run(str(batch / "claim2.txt"), "--trust", str(pem), "--policy", policy, "--offline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the production policy is not the test PKI's: a constraint failure, not a pass
    proc = run(str(batch / "claim2.txt"), "--trust", str(pem), "--offline", "--json")
    if policy != "1.2.250.1.213.1.7.1.1.1.4.1":
        assert json.loads(proc.stdout)["sub_indication"] == "CHAIN_CONSTRAINTS_FAILURE"


def test_bad_input_one_error_line(sign_env: SignEnv, batch: Path, tmp_path: Path) -> None:
    for args in ((), (str(batch / "claim0.txt"), "--batch", str(batch)),
                 (str(tmp_path / "missing"), "--home", str(sign_env.home)),
                 ("--batch", str(tmp_path), "--home", str(sign_env.home)),
                 (str(batch / "claim0.txt"), "--home", str(tmp_path)),
                 (str(batch / "README"), "--home", str(sign_env.home))):
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_pem_armoured_signature(sign_env: SignEnv, batch: Path, tmp_path: Path) -> None:
    import base64
    import textwrap

    der = (batch / "claim0.txt.p7s").read_bytes()
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    (tmp_path / "claim0.pem").write_text(f"-----BEGIN CMS-----\n{body}\n-----END CMS-----\n")
    proc = run(str(batch / "claim0.txt"), "--signature", str(tmp_path / "claim0.pem"),
               "--home", str(sign_env.home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "broken.pem").write_text("-----BEGIN CMS-----\n!!!\n")
    proc = run(str(batch / "claim0.txt"), "--signature", str(tmp_path / "broken.pem"),
               "--json", "--home", str(sign_env.home))
    assert proc.returncode == 1 and json.loads(proc.stdout)["sub_indication"] == "FORMAT_FAILURE"


def test_home_trust_read_without_the_orm(sign_env: SignEnv, batch: Path) -> None:
    """``--home`` with a SQLite store reads the ``ca`` table with the standard library: the
    command must not pay SQLAlchemy's import (0.38 s of start-up) before its first signature."""
    code = ("import sys\nfrom cps_sign.cli import verify_main\n"
            "try:\n    verify_main(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    print('exit', exc.code)\n"
            "print('sqlalchemy' in sys.modules, 'pki.store.models' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, "--batch", str(batch),
                           "--home", str(sign_env.home)], capture_output=True, text=True,
                          timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines[-3] == "3 of 3 TOTAL_PASSED", proc.stdout + proc.stderr
    assert lines[-2:] == ["exit 0", "False False"]


def test_home_without_a_ca_table_one_error_line(sign_env: SignEnv, batch: Path,
                                                tmp_path: Path) -> None:
    """A home whose SQLite store has no ``ca`` table (not migrated): one error line, exit 2."""
    import shutil
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(sign_env.home / "config.json", home / "config.json")
    sqlite3.connect(home / "cps.db").close()
    proc = run("--batch", str(batch), "--home", str(home))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read the trust of"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
