"""``cps-login sign`` end to end with the software CPS card in vpcd's reader, through the real
pcscd (PC/SC backend) and through OpenSC's PKCS#11 module; the CLI in a subprocess, the CA,
OCSP responder and TSA of a SoftHSM home. Run under ``flock /tmp/pcscd.lock``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pki.ca.authority import IssueRequest
from pki.cards.card import HolderData
from pki.cards.opensc import OPENSC_PKCS11, opensc_env
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.personalise import personalise
from pki.cards.sim import SimulatedCard
from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.signatures.conftest import SignEnv

READER = "Virtual PCD 00 00"
PIN = "4321"
LOGIN = str(Path(sys.executable).with_name("cps-login"))
VERIFY = str(Path(sys.executable).with_name("cps-verify"))
DOCUMENT = b"Compte rendu: radiographie thoracique normale.\n"


@pytest.fixture
def card(sign_env: SignEnv, pcscd: object, tmp_path: Path  # noqa: F811
         ) -> Iterator[dict[str, x509.Certificate]]:
    base = sign_env.new_card("carla")      # a directory entry (its software keys unused)
    rpps = base.holder().rpps
    holder = HolderData(rpps, "Carla", "Test", 10, "Médecin")
    sim = SimulatedCard(tmp_path / "card.json")
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as pc:
        result = personalise(pc, holder, lambda usage, key: sign_env.auth.issue(IssueRequest(
            profile=usage, public_key=key, rpps=rpps,  # type: ignore[arg-type]
            key_storage="card")).der, PIN)
    (tmp_path / "pin").write_text(PIN)
    (tmp_path / "doc.txt").write_bytes(DOCUMENT)
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM)
                                                  for c in sign_env.chain))
    try:
        yield result.certificates
    finally:
        sim.remove()
        wait_for_card(READER, present=False)


def sign_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
             pin: str = PIN) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pin").write_text(pin)
    return subprocess.run([LOGIN, "sign", str(tmp_path / "doc.txt"), "--format", "cades",
                           "--pin-file", str(tmp_path / "pin"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def openssl_verify(tmp_path: Path, signature: Path) -> None:
    proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                           str(signature), "-content", str(tmp_path / "doc.txt"), "-CAfile",
                           str(tmp_path / "chain.pem"), "-purpose", "any", "-out", os.devnull],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def cps_verify(sign_env: SignEnv, tmp_path: Path, signature: Path) -> dict[str, object]:
    proc = subprocess.run([VERIFY, str(tmp_path / "doc.txt"), "--signature", str(signature),
                           "--json", "--home", str(sign_env.home)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


@pytest.mark.pcscd
def test_sign_through_pcscd(sign_env: SignEnv, card: dict[str, x509.Certificate],
                            tmp_path: Path) -> None:
    out = tmp_path / "doc.txt.p7s"
    proc = sign_cli(tmp_path, "--reader", READER, "--level", "B-LT", "--tsa", sign_env.tsa_url,
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "CADES B-LT" in proc.stdout
    openssl_verify(tmp_path, out)
    report = cps_verify(sign_env, tmp_path, out)
    assert report["indication"] == "TOTAL_PASSED" and report["level"] == "B-LT"
    cn = card["sign"].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert report["signer"] == cn
    assert report["certificate_serial"] == f"{card['sign'].serial_number:X}"


@pytest.mark.pcscd
def test_wrong_pin_counts_down_and_writes_nothing(sign_env: SignEnv,
                                                  card: dict[str, x509.Certificate],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "never.p7s"
    proc = sign_cli(tmp_path, "--reader", READER, "--out", str(out), pin="0000")
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.startswith("error: ") and "2 tries left" in proc.stderr, proc.stderr
    proc = sign_cli(tmp_path, "--reader", READER, "--out", str(out), pin="0001")
    assert "1 tries left" in proc.stderr or "1 try left" in proc.stderr, proc.stderr
    proc = sign_cli(tmp_path, "--reader", READER, "--out", str(out))    # resets the counter
    assert proc.returncode == 0, proc.stderr
    with PcscCard.open(READER) as pc:
        assert pc.pin_tries_left() == 3


@pytest.mark.pcscd
@pytest.mark.skipif(not Path(OPENSC_PKCS11).exists(), reason="OpenSC not installed")
def test_sign_through_opensc_pkcs11(sign_env: SignEnv, card: dict[str, x509.Certificate],
                                    tmp_path: Path) -> None:
    env = opensc_env()
    listing = subprocess.run(["pkcs11-tool", "--module", OPENSC_PKCS11, "-L"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    label = next(line.split(":", 1)[1].strip() for line in listing.stdout.splitlines()
                 if line.strip().startswith("token label"))
    out = tmp_path / "opensc.p7s"
    proc = sign_cli(tmp_path, "--pkcs11-module", OPENSC_PKCS11, "--token-label", label,
                    "--level", "B-T", "--tsa", sign_env.tsa_url, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    openssl_verify(tmp_path, out)
    report = cps_verify(sign_env, tmp_path, out)
    assert report["indication"] == "TOTAL_PASSED" and report["level"] == "B-T"
    assert report["certificate_serial"] == f"{card['sign'].serial_number:X}"


@pytest.mark.pcscd
def test_pades_through_pcscd(sign_env: SignEnv, card: dict[str, x509.Certificate],
                             tmp_path: Path) -> None:
    from tests.signatures.test_pades import make_pdf

    (tmp_path / "report.pdf").write_bytes(make_pdf())
    out = tmp_path / "report-signed.pdf"
    proc = subprocess.run([LOGIN, "sign", str(tmp_path / "report.pdf"), "--format", "pades",
                           "--level", "B-LT", "--tsa", sign_env.tsa_url, "--chain",
                           str(tmp_path / "chain.pem"), "--reader", READER, "--pin-file",
                           str(tmp_path / "pin"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verify = subprocess.run([VERIFY, str(out), "--json", "--home", str(sign_env.home)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert (report["format"], report["level"]) == ("pades", "B-LT")
    assert report["certificate_serial"] == f"{card['sign'].serial_number:X}"
    # the unsigned original is refused as a PAdES input for verification, not a crash
    verify = subprocess.run([VERIFY, str(tmp_path / "report.pdf"), "--json", "--home",
                             str(sign_env.home)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1
    assert json.loads(verify.stdout)["sub_indication"] == "SIGNED_DATA_NOT_FOUND"
