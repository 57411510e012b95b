"""The offline root: three tokens, the root key only in its own, and the ceremonies
(`cps-admin root sign-ca NAME`, `cps-admin root crl`) as the only commands that open it.

Checks that matter run in real `cps-admin` processes: a PKCS#11 login lasts for the whole
process, so only a fresh process shows what a PIN file alone can open.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from ca.pkihelpers import make_csr, openssl, snapshot  # tests/ca helpers
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from pki import ids
from pki.ca.authority import Authority
from pki.config import Config
from pki.errors import HsmKeyNotFound
from pki.hsm import Hsm
from pki.store import models

CPS_ADMIN = str(Path(sys.executable).with_name("cps-admin"))
RPPS = ids.luhn_complete("1000345678")
ROOT = "ac-racine-igc-sante-fort"
PERSONNES = "ac-igc-sante-fort-personnes"


def admin(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPS_ADMIN, "--home", str(home), *args], capture_output=True,
                          text=True, check=False, timeout=120)


def ok(home: Path, *args: str) -> str:
    proc = admin(home, *args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def one_error(proc: subprocess.CompletedProcess[str], contains: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert contains in errors[0], errors[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("root") / "cps"
    ok(home, "init", "--key-type", "p256", "--ranges", "FORT")
    ok(home, "pro", "add", "--rpps", RPPS, "--profession", "10", "--given-name", "Jeanne",
       "--surname", "Dupont")
    yield home


def _root_crls(home: Path) -> list[models.Crl]:
    engine = create_engine(Config.load(home).effective_db_url())
    try:
        with Session(engine) as session:
            root_id = session.execute(select(models.CertificateAuthority.id).where(
                models.CertificateAuthority.slug == ROOT)).scalar_one()
            return list(session.execute(select(models.Crl).where(models.Crl.ca_id == root_id)
                                        .order_by(models.Crl.number)).scalars())
    finally:
        engine.dispose()


# Run in a fresh interpreter: every PIN file tried on every token, no login left over.
_PIN_MATRIX = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pki.config import Config
    from pki.errors import HsmPinIncorrect
    from pki.hsm import Hsm
    c = Config.load(Path(sys.argv[1]))
    out = {}
    for label, _, _ in c.hsm.tokens():
        for _, pin_file, _ in c.hsm.tokens():
            try:
                hsm = Hsm(c.hsm.module, label, c.read_secret(pin_file), c.softhsm_conf_path())
                out[f"{label} {pin_file}"] = hsm.labels()
                hsm.close()
            except HsmPinIncorrect:
                out[f"{label} {pin_file}"] = "refused"
    print(json.dumps(out))
""")


def test_three_tokens_each_pin_opens_only_its_own(home: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _PIN_MATRIX, str(home)], capture_output=True,
                          text=True, check=True, timeout=120)
    got = json.loads(proc.stdout)
    assert got == {
        "CPS-ROOT secrets/root.pin": [f"ca:{ROOT}"],
        "CPS-ROOT secrets/ca.pin": "refused",
        "CPS-ROOT secrets/broker.pin": "refused",
        "CPS-CA secrets/root.pin": "refused",
        "CPS-CA secrets/ca.pin": ["ca:ac-igc-sante-fort-organisations", f"ca:{PERSONNES}"],
        "CPS-CA secrets/broker.pin": "refused",
        "CPS-BROKER secrets/root.pin": "refused",
        "CPS-BROKER secrets/ca.pin": "refused",
        "CPS-BROKER secrets/broker.pin": [],    # the broker makes its key on first start
        "CPS-ROOT secrets/tsa.pin": "refused",
        "CPS-CA secrets/tsa.pin": "refused",
        "CPS-BROKER secrets/tsa.pin": "refused",
        "CPS-TSA secrets/root.pin": "refused",
        "CPS-TSA secrets/ca.pin": "refused",
        "CPS-TSA secrets/broker.pin": "refused",
        "CPS-TSA secrets/tsa.pin": [],          # `cps-admin tsa cert` makes its key
    }


def test_ca_token_holds_no_root_key(home: Path) -> None:
    c = Config.load(home)
    hsm = Hsm(c.hsm.module, "CPS-CA", c.read_secret("secrets/ca.pin"), c.softhsm_conf_path())
    try:
        assert hsm.has_key(f"ca:{PERSONNES}")
        assert not hsm.has_key(f"ca:{ROOT}")
    finally:
        hsm.close()
    auth = Authority.open(home)
    try:
        with pytest.raises(HsmKeyNotFound, match="offline root token"):
            auth.signer(ROOT)
        with pytest.raises(HsmKeyNotFound, match="CPS-CA"):
            auth.key_signer(f"ca:{ROOT}", auth.ca(ROOT).certificate)
        auth.signer(PERSONNES)       # the issuing CAs still sign
    finally:
        auth.close()


def test_init_published_the_root_crl(home: Path) -> None:
    (first, *_) = _root_crls(home)
    assert first.number == 1 and first.kind == "full"


def test_sign_ca_recertifies_the_issuing_ca(home: Path, tmp_path: Path) -> None:
    pem_path = home / "ca" / f"{PERSONNES}.pem"
    old = x509.load_pem_x509_certificate(pem_path.read_bytes())
    csr = tmp_path / "before.csr"
    csr.write_bytes(make_csr(rsa.generate_private_key(65537, 2048)))
    ok(home, "cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage", "auth",
       "--out", str(tmp_path / "before.pem"))
    out = json.loads(ok(home, "--json", "root", "sign-ca", "AC IGC-SANTE FORT PERSONNES"))
    new = x509.load_pem_x509_certificate(pem_path.read_bytes())
    assert out["ca"] == PERSONNES and out["serial"] == f"{new.serial_number:X}"
    assert out["previous_serial"] == f"{old.serial_number:X}"
    assert new.serial_number != old.serial_number and new.subject == old.subject
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert new.public_key().public_bytes(*spki) == old.public_key().public_bytes(*spki)
    assert new.not_valid_before_utc >= old.not_valid_before_utc
    root_pem = home / "ca" / f"{ROOT}.pem"
    res = openssl("verify", "-x509_strict", "-CAfile", str(root_pem), str(pem_path))
    assert res.returncode == 0, res.stdout + res.stderr
    # Same key: certificates issued before chain to the new CA certificate, and issuance goes on.
    for name in ("before", "after"):
        if name == "after":
            ok(home, "cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage", "auth",
               "--out", str(tmp_path / "after.pem"))
        res = openssl("verify", "-x509_strict", "-CAfile", str(root_pem), "-untrusted",
                      str(pem_path), str(tmp_path / f"{name}.pem"))
        assert res.returncode == 0, res.stdout + res.stderr
    # The store serves the new certificate; the audit keeps the old one's hash.
    listed = {c["slug"]: c for c in json.loads(ok(home, "--json", "ca", "list"))}
    assert listed[PERSONNES]["serial"] == f"{new.serial_number:X}"
    records = json.loads(ok(home, "--json", "audit", "list", "--action", "ca.certify"))
    details = json.loads(records[-1]["details"])
    assert records[-1]["target"] == PERSONNES and records[-1]["actor"] == "cps-admin root"
    assert details["previous_sha256"] == hashlib.sha256(
        old.public_bytes(serialization.Encoding.DER)).hexdigest()
    ok(home, "audit", "verify")


def test_sign_ca_unknown_name_writes_nothing(home: Path) -> None:
    before = snapshot(home)
    pems = {p.name: p.read_bytes() for p in (home / "ca").iterdir()}
    for name in ("AC IGC-SANTE FORT NOBODY", ROOT):
        one_error(admin(home, "root", "sign-ca", name), "no issuing CA")
    assert snapshot(home) == before
    assert {p.name: p.read_bytes() for p in (home / "ca").iterdir()} == pems


def test_root_crl_is_signed_by_the_root_and_stored(home: Path, tmp_path: Path) -> None:
    before = len(_root_crls(home))
    out = json.loads(ok(home, "--json", "root", "crl"))
    assert [o["ca"] for o in out] == [ROOT] and out[0]["path"] == f"/crl/{ROOT}.crl"
    crls = _root_crls(home)
    assert len(crls) == before + 1
    stored = crls[-1]
    assert stored.number == out[0]["number"]
    crl_file = tmp_path / "root.crl"
    crl_file.write_bytes(stored.der)
    res = openssl("crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-verify",
                  "-CAfile", str(home / "ca" / f"{ROOT}.pem"))
    assert res.returncode == 0 and b"verify OK" in res.stdout + res.stderr
    parsed = x509.load_der_x509_crl(stored.der)
    life = parsed.next_update_utc - parsed.last_update_utc   # type: ignore[operator]
    assert life == dt.timedelta(days=Config.load(home).crl.root_validity_days)
    assert not any(isinstance(e.value, x509.FreshestCRL) for e in parsed.extensions)


def test_without_root_pin_ceremonies_fail_and_officers_work(home: Path, tmp_path: Path) -> None:
    pin = home / "secrets" / "root.pin"
    away = tmp_path / "root.pin"
    shutil.move(pin, away)
    try:
        before = snapshot(home)
        crls = len(_root_crls(home))
        one_error(admin(home, "root", "crl"), "root.pin")
        one_error(admin(home, "root", "sign-ca", PERSONNES), "root.pin")
        assert snapshot(home) == before and len(_root_crls(home)) == crls
        # The officer's commands need the CA token only.
        csr = tmp_path / "x.csr"
        csr.write_bytes(make_csr(rsa.generate_private_key(65537, 2048)))
        ok(home, "cert", "issue", "--csr", str(csr), "--rpps", RPPS, "--usage", "sign",
           "--out", str(tmp_path / "x.pem"))
        cert = x509.load_pem_x509_certificate((tmp_path / "x.pem").read_bytes())
        serial = f"{cert.serial_number:X}"
        ok(home, "cert", "revoke", serial, "--reason", "keyCompromise")
        published = ok(home, "crl", "publish")
        assert PERSONNES in published and ROOT not in published
    finally:
        shutil.move(away, pin)
