"""`cps-admin` end to end (in process through click's runner, and as a real subprocess).

Every bad-input case must exit non-zero with exactly one ``error:`` line on stderr and leave the
store and the audit chain untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ca.pkihelpers import make_csr, openssl, snapshot, tampered_csr  # tests/ca helpers
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import directory, ids
from pki.ca.authority import serial_hex
from pki.cli.admin import main
from pki.errors import PkiError

CPS_ADMIN = str(Path(sys.executable).with_name("cps-admin"))
RPPS = ids.luhn_complete("1000345678")          # 10003456780
BAD_CHECK = RPPS[:-1] + str((int(RPPS[-1]) + 1) % 10)


@dataclass
class Env:
    home: Path
    tmp: Path
    runner: CliRunner

    def run(self, *args: str) -> Result:
        return self.runner.invoke(main, ["--home", str(self.home), *args],
                                  catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        res = self.run(*args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        return res

    def json(self, *args: str) -> object:
        return json.loads(self.ok("--json", *args).stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cli")
    e = Env(tmp / "cps", tmp, CliRunner())
    res = e.run("init", "--key-type", "rsa2048", "--ranges", "FORT")
    assert res.exit_code == 0, res.stderr
    e.ok("pro", "add", "--rpps", RPPS, "--profession", "10", "--given-name", "Jeanne",
         "--surname", "Dupont")
    e.ok("structure", "add", "--register", "FINESS", "--number", ids.luhn_complete("75000001"),
         "--name", "CHU Test", "--state", "Paris (75)")
    yield e


def _csr_file(env: Env, name: str, data: bytes) -> Path:
    path = env.tmp / name
    path.write_bytes(data)
    return path


def _issue(env: Env, usage: str = "auth") -> str:
    csr = _csr_file(env, f"{usage}.csr", make_csr(rsa.generate_private_key(65537, 2048)))
    out = env.tmp / f"{usage}-{os.urandom(4).hex()}.pem"
    res = env.ok("cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage", usage,
                 "--out", str(out))
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    serial = serial_hex(cert.serial_number)     # even number of digits, like openssl
    assert serial in res.stdout
    return serial


def _assert_error(res: Result, fragment: str) -> None:
    assert res.exit_code != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert fragment.lower() in errors[0].lower(), errors[0]


# --- bad input: one error line, nothing written --------------------------------------------

def _bad_cases(env: Env) -> list[tuple[str, list[str], str]]:
    key = rsa.generate_private_key(65537, 2048)
    garbage = _csr_file(env, "garbage.csr", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    forged = _csr_file(env, "forged.csr", tampered_csr(key))
    small = _csr_file(env, "small.csr", make_csr(rsa.generate_private_key(65537, 1024)))
    good = _csr_file(env, "good.csr", make_csr(key))
    serial = _issue(env)
    revoked = _issue(env, "sign")
    env.ok("cert", "revoke", revoked, "--reason", "keyCompromise")
    out = str(env.tmp / "never.pem")
    pro = ["pro", "add", "--profession", "10", "--given-name", "A", "--surname", "B"]
    return [
        ("malformed CSR", ["cert", "issue", "--csr", str(garbage), "--rpps", RPPS, "--usage",
                           "auth", "--out", out], "CSR"),
        ("wrongly-signed CSR", ["cert", "issue", "--csr", str(forged), "--rpps", RPPS,
                                "--usage", "auth", "--out", out], "signature"),
        ("1024-bit CSR", ["cert", "issue", "--csr", str(small), "--rpps", RPPS, "--usage",
                          "auth", "--out", out], "2048"),
        ("unknown professional", ["cert", "issue", "--csr", str(good), "--rpps",
                                  ids.luhn_complete("1999999999"), "--usage", "auth",
                                  "--out", out], "no professional"),
        # Issue 13 #12: the output is checked before the CA signs or stores anything.
        ("--out in a missing folder", ["cert", "issue", "--csr", str(good), "--rpps", RPPS,
                                       "--usage", "auth", "--out",
                                       str(env.tmp / "no-such-dir" / "c.pem")], "cannot write"),
        ("--out on a read-only file system", ["cert", "issue", "--csr", str(good), "--rpps",
                                              RPPS, "--usage", "auth", "--out",
                                              "/proc/cps-cert.pem"], "cannot write"),
        ("--out a folder", ["cert", "issue", "--csr", str(good), "--rpps", RPPS, "--usage",
                            "auth", "--out", str(env.tmp)], "is a directory"),
        ("renew --out in a missing folder", ["cert", "renew", serial, "--out",
                                             str(env.tmp / "no-such-dir" / "r.pem")],
         "cannot write"),
        ("usage without holder", ["cert", "issue", "--csr", str(good), "--usage", "org",
                                  "--rpps", RPPS, "--out", out], "--structure"),
        ("wrong RPPS check digit", [*pro, "--rpps", BAD_CHECK], "check digit"),
        ("RPPS not digits", [*pro, "--rpps", "1000345678X"], "11 digits"),
        ("unknown profession", ["pro", "add", "--rpps", ids.luhn_complete("1000345699"),
                                "--profession", "99", "--given-name", "A", "--surname", "B"],
         "unknown profession"),
        ("duplicate professional", [*pro, "--rpps", RPPS], "already exists"),
        ("unknown serial show", ["cert", "show", "0123456789ABCDEF"], "no certificate"),
        ("unknown serial revoke", ["cert", "revoke", "0123456789ABCDEF", "--reason",
                                   "keyCompromise"], "no certificate"),
        ("non-hex serial", ["cert", "show", "XYZ"], "hexadecimal"),
        ("revoke twice", ["cert", "revoke", revoked, "--reason", "superseded"],
         "already revoked"),
        ("release revoked", ["cert", "release", revoked], "already revoked"),
        ("release active", ["cert", "release", serial], "not on hold"),
        ("bad reason", ["cert", "revoke", serial, "--reason", "bored"], "unknown revocation"),
        ("bad invalidity date", ["cert", "revoke", serial, "--reason", "keyCompromise",
                                 "--invalidity-date", "yesterday"], "ISO 8601"),
        ("naive invalidity date", ["cert", "revoke", serial, "--reason", "keyCompromise",
                                   "--invalidity-date", "2024-01-01T00:00:00"], "timezone"),
        ("renew revoked", ["cert", "renew", revoked], "revoked"),
        ("init existing home", ["init", "--key-type", "p256"], "already holds"),
        ("bad register", ["structure", "add", "--register", "NIR", "--number", "1",
                          "--name", "x", "--state", "y"], "register"),
        ("bad FINESS", ["structure", "add", "--register", "FINESS", "--number", "750000011",
                        "--name", "x", "--state", "y"], "check digit"),
        ("ca export unknown", ["ca", "export", "nope", "--out", out], "no CA"),
        ("missing CSV", ["pro", "import", str(env.tmp / "nope.csv")], "does not exist"),
        ("unknown command", ["bogus"], "no such command"),
    ]


def test_bad_input_exits_with_one_error_line_and_writes_nothing(env: Env) -> None:
    cases = _bad_cases(env)
    for name, args, fragment in cases:
        before = snapshot(env.home)
        res = env.run(*args)
        try:
            _assert_error(res, fragment)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
        assert snapshot(env.home) == before, name
        assert not (env.tmp / "never.pem").exists(), name


def test_missing_home(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "none"), "cert", "list"])
    _assert_error(res, "no CPS home")
    env_res = CliRunner().invoke(main, ["pro", "list"],
                                 env={"CPS_HOME": str(tmp_path / "none2")})
    _assert_error(env_res, "none2")
    assert not (tmp_path / "none").exists()


def test_wrong_hsm_pin_in_a_real_process(env: Env) -> None:
    pin_file = env.home / "secrets" / "ca.pin"
    pin = pin_file.read_text()
    csr = _csr_file(env, "pin.csr", make_csr(rsa.generate_private_key(65537, 2048)))
    before = snapshot(env.home)
    try:
        pin_file.write_text("00000000\n")
        for args in (["cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage", "sign",
                      "--out", str(env.tmp / "pin.pem")],
                     ["cert", "revoke", "00", "--reason", "keyCompromise"]):
            proc = subprocess.run([CPS_ADMIN, "--home", str(env.home), *args],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 1
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
            assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
            if args[1] == "issue":
                assert "wrong user PIN" in errors[0]
        # In process too (the token is already logged in here: the PIN is still checked).
        _assert_error(env.run("cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage",
                              "sign", "--out", str(env.tmp / "pin.pem")), "wrong user PIN")
    finally:
        pin_file.write_text(pin)
    assert snapshot(env.home) == before
    assert not (env.tmp / "pin.pem").exists()


# --- normal operation and JSON ------------------------------------------------------------

def test_ca_list_and_export(env: Env) -> None:
    cas = env.json("ca", "list")
    assert isinstance(cas, list)
    assert {c["slug"] for c in cas} == {"ac-racine-igc-sante-fort",
                                        "ac-igc-sante-fort-personnes",
                                        "ac-igc-sante-fort-organisations"}
    assert all(c["key_type"] == "rsa2048" for c in cas)
    out = env.tmp / "chain.pem"
    env.ok("ca", "export", "AC IGC-SANTE FORT PERSONNES", "--out", str(out))
    chain = x509.load_pem_x509_certificates(out.read_bytes())
    assert [c.subject.rfc4514_string().split(",")[0] for c in chain] == [
        "CN=AC IGC-SANTE FORT PERSONNES", "CN=AC RACINE IGC-SANTE FORT"]
    env.ok("ca", "export", "--all", "--out", str(out))
    assert len(x509.load_pem_x509_certificates(out.read_bytes())) == 3
    _assert_error(env.run("ca", "export", "--out", str(out)), "NAME or --all")


def test_cert_issue_show_list_revoke_release_renew(env: Env, tmp_path: Path) -> None:
    serial = _issue(env)
    pem = tmp_path / "c.pem"
    shown = env.json("cert", "show", serial.lower())
    assert isinstance(shown, dict)
    pem.write_text(shown["pem"])
    openssl_serial = openssl("x509", "-noout", "-serial", "-in", str(pem)).stdout.decode()
    assert openssl_serial.strip() == f"serial={serial}"
    colons = ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()
    assert env.json("cert", "show", colons)["serial"] == serial  # type: ignore[index]
    for field in ("serial", "subject", "issuer", "usage", "status", "not_after", "rpps"):
        assert field in shown
    assert (shown["usage"], shown["status"], shown["rpps"]) == ("auth", "active", RPPS)
    assert shown["issuer"] == "AC IGC-SANTE FORT PERSONNES"
    assert f"CN=8{RPPS}" in shown["subject"]

    env.ok("cert", "revoke", serial, "--reason", "certificateHold")
    assert env.json("cert", "show", serial)["status"] == "hold"  # type: ignore[index]
    held = env.json("cert", "list", "--status", "hold")
    assert serial in [c["serial"] for c in held]  # type: ignore[union-attr,index]
    env.ok("cert", "release", serial)
    assert env.json("cert", "show", serial)["status"] == "active"  # type: ignore[index]

    new_csr = _csr_file(env, "renew.csr", make_csr(ec.generate_private_key(ec.SECP256R1())))
    out = tmp_path / "renewed.pem"
    res = env.ok("cert", "renew", serial, "--csr", str(new_csr), "--revoke-old",
                 "--out", str(out))
    renewed = x509.load_pem_x509_certificate(out.read_bytes())
    assert f"{renewed.serial_number:X}" in res.stdout
    assert isinstance(renewed.public_key(), ec.EllipticCurvePublicKey)
    old = env.json("cert", "show", serial)
    assert (old["status"], old["reason"]) == ("revoked", "superseded")  # type: ignore[index]

    revoked = env.json("cert", "list", "--status", "revoked", "--rpps", RPPS)
    assert isinstance(revoked, list) and serial in [c["serial"] for c in revoked]
    listing = env.json("cert", "list")
    assert isinstance(listing, list) and len(listing) >= 2
    for row in listing:
        assert {"serial", "subject", "issuer", "usage", "status", "not_after",
                "rpps"} <= set(row)
    text = env.ok("cert", "list").stdout
    assert serial in text and "revoked" in text

    env.ok("cert", "revoke", f"{renewed.serial_number:X}", "--reason", "keyCompromise",
           "--invalidity-date", "2024-01-01T00:00:00Z")
    inv = env.json("cert", "show", f"{renewed.serial_number:X}")
    assert inv["invalidity_date"].startswith("2024-01-01T00:00:00")  # type: ignore[index]


def test_org_certificate_via_cli(env: Env, tmp_path: Path) -> None:
    structures = env.json("structure", "list")
    assert isinstance(structures, list)
    sid = structures[0]["structure_id"]
    assert sid == "1" + ids.luhn_complete("75000001")
    csr = _csr_file(env, "org.csr", make_csr(rsa.generate_private_key(65537, 2048),
                                             dns=("api.chu-test.fr",)))
    out = tmp_path / "org.pem"
    env.ok("cert", "issue", "--csr", str(csr), "--structure", sid, "--usage", "org",
           "--out", str(out))
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0] \
        .value == sid


def test_pro_list_show_and_audit_json(env: Env) -> None:
    pros = env.json("pro", "list")
    assert isinstance(pros, list)
    row = next(p for p in pros if p["rpps"] == RPPS)
    assert row == {"rpps": RPPS, "national_id": "8" + RPPS, "profession": 10,
                   "profession_label": ids.profession(10).label, "given_name": "Jeanne",
                   "surname": "Dupont", "adeli": None, "civility": None,
                   "exercise_civility": None}
    shown = env.json("pro", "show", RPPS)
    assert isinstance(shown, dict) and shown["rpps"] == RPPS
    assert isinstance(shown["certificates"], list)
    records = env.json("audit", "list", "--limit", "5")
    assert isinstance(records, list) and 1 <= len(records) <= 5
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert {"seq", "at", "actor", "action", "target", "hash"} <= set(records[0])
    verify = env.json("audit", "verify")
    assert verify["ok"] is True and verify["records"] >= 5  # type: ignore[index]
    assert "intact" in env.ok("audit", "verify").stdout


def test_audit_verify_cli_names_tampered_record(tmp_path: Path) -> None:
    e = Env(tmp_path / "cps", tmp_path, CliRunner())
    e.ok("init", "--key-type", "p256")
    e.ok("pro", "add", "--rpps", RPPS, "--profession", "60", "--given-name", "Ana",
         "--surname", "Lopes")
    import sqlite3
    con = sqlite3.connect(e.home / "cps.db")
    con.execute("UPDATE audit_log SET target = 'forged' WHERE seq = 2")
    con.commit()
    con.close()
    res = e.run("audit", "verify")
    _assert_error(res, "record seq 2")
    assert "edited" in res.stderr


def test_bench_populate_json(env: Env) -> None:
    data = env.json("bench-populate", "--count", "7", "--revoked-fraction", "0.3",
                    "--key-pool", "2")
    assert isinstance(data, dict)
    assert (data["certificates"], data["professionals"]) == (7, 4)
    assert data["revoked"] + data["held"] == 2
    assert data["certificates_per_second"] > 0
    assert env.json("audit", "verify")["ok"] is True  # type: ignore[index]
    help_text = env.ok("bench-populate", "--help").stdout
    assert "hours" in help_text and "pool" in help_text


# --- CSV import ---------------------------------------------------------------------------

def _csv_rows(n: int, start: int = 2000000) -> list[str]:
    return [f"{ids.luhn_complete(str(start + i).rjust(10, '1'))},60,Given{i},Surname{i}"
            for i in range(n)]


def test_csv_import_good_file(env: Env) -> None:
    rows = _csv_rows(25)
    path = _csv_file(env, "good.csv", "rpps,profession,given_name,surname\n" + "\n".join(rows))
    res = env.ok("pro", "import", str(path))
    assert "imported 25" in res.stdout
    listed = {p["rpps"] for p in env.json("pro", "list")}  # type: ignore[union-attr,index]
    assert {r.split(",")[0] for r in rows} <= listed
    # Importing the same file again: every row is a duplicate of the directory.
    before = snapshot(env.home)
    _assert_error(env.run("pro", "import", str(path)), "25 invalid row(s)")
    assert snapshot(env.home) == before


def _csv_file(env: Env, name: str, text: str) -> Path:
    path = env.tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_import_bad_rows_reports_all_and_imports_nothing(env: Env) -> None:
    good = _csv_rows(4, start=3000000)
    lines = ["RPPS,Profession,Given Name,Surname",  # 1 (header, case/space tolerant)
             good[0],                                 # 2
             f"{BAD_CHECK},10,A,B",                   # 3 wrong check digit
             good[1],                                 # 4
             f"{good[2].split(',')[0]},99,C,D",       # 5 unknown profession
             good[0],                                 # 6 duplicate of line 2
             f"{RPPS},10,E,F",                        # 7 already in the directory
             good[3] + ",extra",                      # 8 fine (extra column ignored)
             f"{ids.luhn_complete('3000009000')},10,, ",  # 9 empty given name
             "12345"]                                 # 10 too few fields
    path = _csv_file(env, "bad.csv", "\n".join(lines) + "\n")
    before = snapshot(env.home)
    res = env.run("pro", "import", str(path))
    _assert_error(res, "6 invalid row(s)")
    for line in (3, 5, 6, 7, 9, 10):
        assert f"line {line}:" in res.stderr
    for line in (2, 4, 8):
        assert f"line {line}:" not in res.stderr
    assert snapshot(env.home) == before
    # --skip-invalid imports the three good rows and lists the others.
    res = env.ok("pro", "import", "--skip-invalid", str(path))
    assert "imported 3" in res.stdout and "skipped 6" in res.stdout
    assert "skipped line 3:" in res.stderr
    after = snapshot(env.home)
    assert after["professional"] == before["professional"] + 3
    assert after["audit_log"] == before["audit_log"] + 3


def test_csv_header_and_encoding_errors(env: Env) -> None:
    for name, data, fragment in [
            ("nohead.csv", b"", "empty"),
            ("cols.csv", b"rpps,given_name\n1,2\n", "lacks column"),
            ("latin1.csv", "rpps,profession,given_name,surname\n1,10,Hélène,X\n"
             .encode("latin-1"), "UTF-8"),
            ("quote.csv", b'rpps,profession,given_name,surname\n"1,10,a,b\n', "CSV"),
            ("onlyhead.csv", b"rpps,profession,given_name,surname\n", "no rows")]:
        path = env.tmp / name
        path.write_bytes(data)
        before = snapshot(env.home)
        _assert_error(env.run("pro", "import", str(path)), fragment)
        assert snapshot(env.home) == before


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_csv_parser_raises_only_pki_errors(text: str) -> None:
    try:
        parsed = directory.parse_csv(text)
    except PkiError:
        return
    for line, entry in parsed.entries:
        assert line >= 2
        assert ids.validate_rpps(entry.rpps) == entry.rpps
    for err in parsed.errors:
        assert err.line >= 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=4), st.text(max_size=12),
                          st.text(max_size=12)), max_size=8))
def test_csv_parser_on_structured_rows(rows: list[tuple[str, str, str, str]]) -> None:
    import csv
    import io
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rpps", "profession", "given_name", "surname"])
    writer.writerows(rows)
    try:
        parsed = directory.parse_csv(buf.getvalue())
    except PkiError:
        return
    assert len(parsed.entries) + len(parsed.errors) <= len(rows) + buf.getvalue().count("\r")
