"""Card fixtures: the real pcscd (one per machine, started here if none runs), the software card
in vpcd's virtual reader, per-test SoftHSM token directories, and an in-memory loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pki.cards.card import HolderData
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.pcscd import Pcscd, pcscd_binary
from pki.cards.personalise import PersonalisationResult, personalise
from pki.cards.sim import CardFile, SimulatedCard, SoftCard
from pki.cards.testing import ThrowawayIssuer

READER = "Virtual PCD 00 00"
EMPTY_READER = "Virtual PCD 00 01"
PIN = "1234"
HOLDER = HolderData("10003456789", "Jeanne", "Martin", 10, "Médecin")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    if pcscd_binary() is None:
        pytest.skip("pcscd binary not installed (apt-get install pcscd)")
    if not VPCD_DRIVER.exists():
        pytest.skip("vsmartcard-vpcd driver not installed (apt-get install vsmartcard-vpcd)")
    daemon = Pcscd.ensure(log=tmp_path_factory.mktemp("pcscd") / "pcscd.log")
    yield daemon
    daemon.stop()


class LoopbackCard(PcscCard):
    """The PC/SC host code talking straight to a SoftCard: unit tests without pcscd."""

    def __init__(self, card: SoftCard) -> None:
        super().__init__(None, None, 0, "loopback")
        self.soft = card

    def transmit_raw(self, raw: bytes) -> bytes:
        return self.soft.process(raw)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def close(self, reset: bool = True) -> None:
        if reset:
            self.soft.reset()


@pytest.fixture
def issuer() -> ThrowawayIssuer:
    return ThrowawayIssuer()


@pytest.fixture
def card_path(tmp_path: Path) -> Path:
    return tmp_path / "card.json"


@dataclass
class Personalised:
    result: PersonalisationResult
    issuer: ThrowawayIssuer
    path: Path


@pytest.fixture
def loopback(card_path: Path, issuer: ThrowawayIssuer) -> tuple[LoopbackCard, Personalised]:
    card = LoopbackCard(SoftCard(CardFile(card_path)))
    result = personalise(card, HOLDER, issuer.callback(HOLDER), PIN)
    card.soft.reset()
    return card, Personalised(result, issuer, card_path)


@pytest.fixture
def sim(pcscd: Pcscd, card_path: Path) -> Iterator[SimulatedCard]:
    """A blank software card inserted in READER."""
    simulated = SimulatedCard(card_path)
    simulated.insert()
    wait_for_card(READER, present=True)
    yield simulated
    simulated.remove()
    wait_for_card(READER, present=False)


@pytest.fixture
def personalised(sim: SimulatedCard, issuer: ThrowawayIssuer, card_path: Path) -> Personalised:
    with PcscCard.open(READER) as card:
        result = personalise(card, HOLDER, issuer.callback(HOLDER), PIN)
    return Personalised(result, issuer, card_path)


@dataclass
class SoftHsmHome:
    conf: Path
    so_pin: str = "87654321"
    transport_pin: str = "0000"

    def init_token(self, label: str) -> None:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                self.so_pin,
                "--pin",
                self.transport_pin,
            ],
            check=True,
            capture_output=True,
            env=dict(os.environ, SOFTHSM2_CONF=str(self.conf)),
        )


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsmHome:
    """Own SOFTHSM2_CONF and token directory, set before the module is loaded."""
    if shutil.which("softhsm2-util") is None or not SOFTHSM_MODULE.exists():
        pytest.skip("SoftHSM2 not installed (apt-get install softhsm2)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    return SoftHsmHome(conf)
