"""The product default end to end in real processes: `cps-admin init` (RSA-4096 CA keys),
a professional, a certificate from an openssl-generated CSR, openssl verify, revoke, audit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ca.pkihelpers import openssl  # tests/ca helpers
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki import ids

CPS_ADMIN = str(Path(sys.executable).with_name("cps-admin"))


def _admin(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CPS_ADMIN, "--home", str(home), *args], capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc


def test_default_rsa4096_home_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "cps"
    _admin(home, "init")                       # default key type: rsa4096 (SPEC §2)
    cas = json.loads(_admin(home, "--json", "ca", "list").stdout)
    assert {c["key_type"] for c in cas} == {"rsa4096"}
    rpps = ids.luhn_complete("1000999888")
    _admin(home, "pro", "add", "--rpps", rpps, "--profession", "21", "--given-name", "Zoé",
           "--surname", "Marchand")
    key, csr = tmp_path / "user.key", tmp_path / "user.csr"
    assert openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                   "-subj", "/CN=ignored", "-out", str(csr)).returncode == 0
    cert_path = tmp_path / "auth.pem"
    _admin(home, "cert", "issue", "--csr", str(csr), "--rpps", rpps, "--usage", "auth",
           "--out", str(cert_path))
    chain = tmp_path / "chain.pem"
    _admin(home, "ca", "export", "ac-igc-sante-fort-personnes", "--out", str(chain))
    inter_pem, root_pem = chain.read_text().split("-----END CERTIFICATE-----\n")[:2]
    (tmp_path / "inter.pem").write_text(inter_pem + "-----END CERTIFICATE-----\n")
    (tmp_path / "root.pem").write_text(root_pem + "-----END CERTIFICATE-----\n")
    res = openssl("verify", "-x509_strict", "-CAfile", str(tmp_path / "root.pem"),
                  "-untrusted", str(tmp_path / "inter.pem"), str(cert_path))
    assert res.returncode == 0, res.stderr.decode()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    issuer_key = x509.load_pem_x509_certificate((tmp_path / "inter.pem").read_bytes()
                                                ).public_key()
    assert isinstance(issuer_key, rsa.RSAPublicKey) and issuer_key.key_size == 4096
    serial = openssl("x509", "-noout", "-serial", "-in", str(cert_path)).stdout.decode()
    serial = serial.strip().removeprefix("serial=")
    assert serial == f"{cert.serial_number:X}".rjust(len(serial), "0")
    _admin(home, "cert", "revoke", serial, "--reason", "keyCompromise")
    shown = json.loads(_admin(home, "--json", "cert", "show", serial).stdout)
    assert (shown["status"], shown["reason"]) == ("revoked", "keyCompromise")
    assert "intact" in _admin(home, "audit", "verify").stdout
    again = subprocess.run([CPS_ADMIN, "--home", str(home), "cert", "revoke", serial,
                            "--reason", "keyCompromise"], capture_output=True, text=True,
                           check=False)
    assert again.returncode == 1
    assert again.stderr.count("error: ") == 1 and "already revoked" in again.stderr
