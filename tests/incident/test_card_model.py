"""The card model is recorded at personalisation: a PKCS#11 token's manufacturer / model, a
PC/SC card's ATR — and `cert revoke --card-model` selects by it."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from pki.ca.authority import Authority
from pki.cards import pcsc
from pki.cards.pcsc import PcscCard, ReaderState
from pki.cards.pkcs11_card import Pkcs11Module, Pkcs11Personaliser
from pki.cli.admin import main
from pki.issuance.cards import card_model, issue_card
from pki.store.models import Card
from tests.cards.conftest import PIN, SOFTHSM_MODULE, SoftHsmHome
from tests.conftest import add_professional


def test_pkcs11_token_model_recorded_and_selectable(incident_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    home = incident_home
    monkeypatch.setenv("SOFTHSM2_CONF", str((home / "softhsm2.conf").resolve()))
    softhsm = SoftHsmHome(home / "softhsm2.conf")
    softhsm.init_token("cps-model")
    with closing(Authority.open(home)) as auth:
        rpps = add_professional(auth)
        device = Pkcs11Personaliser(Pkcs11Module(str(SOFTHSM_MODULE)), "cps-model",
                                    softhsm.so_pin, softhsm.transport_pin)
        issue_card(auth, rpps, device, PIN, backend="pkcs11", location="cps-model",
                   key_type="p256")
        with auth.store.read() as session:
            (model,) = session.execute(select(Card.model)).scalars().all()
    assert model == "SoftHSM project / SoftHSM v2"
    result = CliRunner().invoke(main, ["--home", str(home), "--json", "cert", "revoke",
                                       "--card-model", model, "--reason", "certificateHold",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert '"count": 2' in result.stdout


def test_pcsc_card_model_is_its_atr(monkeypatch: pytest.MonkeyPatch) -> None:
    atr = bytes.fromhex("3BAC00402A00122500648000031000 9000".replace(" ", ""))
    monkeypatch.setattr(pcsc, "reader_states", lambda: [
        ReaderState("Other Reader 00 00", True, b"\x3b\x00"),
        ReaderState("Virtual PCD 00 00", True, atr)])
    card = PcscCard(None, None, 0, "Virtual PCD 00 00")
    assert card_model(card) == "3BAC00402A001225006480000310009000"
    assert card_model(PcscCard(None, None, 0, "Unplugged 00 00")) is None
    assert card_model(object()) is None
