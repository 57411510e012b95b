"""`cps-admin card renew --reader` on the software card in the real pcscd, then `cps-login login`
with the renewed card while the store has revoked the old certificates (superseded).

Run under the machine's pcscd lock: ``flock /tmp/pcscd.lock .venv/bin/pytest tests/cards/...``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pki.ca.authority import serial_hex
from pki.cards.card import USAGES, Usage
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.sim import SimulatedCard
from pki.issuance.cards import issue_card
from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.login.conftest import Env, env  # noqa: F401 - fixture

READER = "Virtual PCD 00 00"
PIN = "2468"
BIN = Path(sys.executable).parent


def on_card() -> dict[Usage, x509.Certificate]:
    with PcscCard.open(READER) as card:
        return {u: card.certificate(u) for u in USAGES}


@pytest.fixture
def card(env: Env, pcscd: object, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    rpps = env.new_card("renata").rpps
    sim = SimulatedCard(tmp_path / "card.json")
    sim.insert()
    wait_for_card(READER, present=True)
    try:
        with PcscCard.open(READER) as pc:
            number = pc.serial().upper()
            issue_card(env.auth, rpps, pc, PIN, backend="pcsc", location=READER,
                       card_number=number)
        yield number
    finally:
        sim.remove()
        wait_for_card(READER, present=False)


def cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


@pytest.mark.pcscd
def test_card_renew_through_pcscd_then_login(env: Env, card: str,  # noqa: F811
                                             tmp_path: Path) -> None:
    old = on_card()
    env.extra_certs.extend(old.values())
    old_auth = serial_hex(old["auth"].serial_number)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)

    refused = cli("cps-admin", "--home", str(env.home), "cert", "renew", old_auth,
                  tmp_path=tmp_path)
    assert refused.returncode != 0 and f"cps-admin card renew {card}" in refused.stderr

    proc = cli("cps-admin", "--home", str(env.home), "--json", "card", "renew", card,
               "--reader", READER, "--pin-file", str(pin_file), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    new = on_card()
    assert answer["certificates"] == {u: serial_hex(c.serial_number) for u, c in new.items()}
    assert sorted(answer["superseded"]) == sorted(serial_hex(c.serial_number)
                                                  for c in old.values())
    env.extra_certs.extend(new.values())
    env.wait_ocsp(old_auth, "revoked")
    env.wait_ocsp(serial_hex(new["auth"].serial_number), "good")

    login = subprocess.run([str(BIN / "cps-login"), "login", "--broker", env.base, "--reader",
                            READER, "--pin-file", str(pin_file)],
                           capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    assert login.stdout.count(".") == 2   # a JWT
