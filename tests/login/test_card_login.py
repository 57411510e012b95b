"""`cps-login login` end to end: software CPS card in vpcd's reader, the real pcscd, the CLI in
a subprocess, the broker and OCSP responder of a SoftHSM home."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cps_login.tokens import TokenValidator
from pki.ca import lifecycle
from pki.ca.authority import IssueRequest
from pki.cards.card import HolderData
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.personalise import personalise
from pki.cards.sim import SimulatedCard
from pki.clock import SYSTEM_CLOCK
from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.login.conftest import Env

READER = "Virtual PCD 00 00"
PIN = "4321"
CLI = [str(Path(sys.executable).with_name("cps-login"))]


@pytest.fixture
def card(env: Env, pcscd: object, tmp_path: Path) -> Iterator[x509.Certificate]:  # noqa: F811
    rpps = env.new_card("carla").rpps     # a directory entry (its software keys unused)
    holder = HolderData(rpps, "Carla", "Test", 10, "Médecin")
    sim = SimulatedCard(tmp_path / "card.json")
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as pc:
        result = personalise(pc, holder, lambda usage, key: env.auth.issue(IssueRequest(
            profile=usage, public_key=key, rpps=rpps)).der, PIN)  # type: ignore[arg-type]
    cert = result.certificates["auth"]
    env.extra_certs.append(cert)
    env.wait_ocsp(f"{cert.serial_number:X}", "good")
    try:
        yield cert
    finally:
        sim.remove()
        wait_for_card(READER, present=False)


def run_login(env: Env, pin: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin)
    return subprocess.run([*CLI, "login", "--broker", env.base, "--reader", READER,
                           "--pin-file", str(pin_file), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.pcscd
def test_card_login_through_pcscd(env: Env, card: x509.Certificate, tmp_path: Path) -> None:
    proc = run_login(env, PIN, tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    _, jwks = env.get("/.well-known/jwks.json")
    claims = TokenValidator(jwks, issuer=env.base, audience=env.config.audience,
                            clock=SYSTEM_CLOCK).validate(answer["access_token"])
    assert claims["SubjectNameID"] == card.subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value
    proc = run_login(env, PIN, tmp_path)
    assert proc.returncode == 0 and proc.stdout.count(".") == 2   # a bare JWT


@pytest.mark.pcscd
def test_wrong_pin_says_tries_left(env: Env, card: x509.Certificate, tmp_path: Path) -> None:
    proc = run_login(env, "0000", tmp_path)
    assert proc.returncode != 0
    assert "2 tries left" in proc.stderr and proc.stderr.startswith("error: ")
    assert run_login(env, PIN, tmp_path).returncode == 0   # a good PIN resets the counter


@pytest.mark.pcscd
def test_revoked_card_refused_by_the_cli(env: Env, card: x509.Certificate,
                                         tmp_path: Path) -> None:
    serial = f"{card.serial_number:X}"
    lifecycle.revoke(env.auth, serial, "keyCompromise")
    env.wait_ocsp(serial, "revoked")
    proc = run_login(env, PIN, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: broker refused the login: invalid_credentials (revoked)"
