"""Replay the recorded APDU traces (tests/vectors/cps3-*.json) against the software card.

The traces come from stock OpenSC 0.23 (its IAS-ECC driver) and from the project's PC/SC
backend talking to the card through the real pcscd (``tests/cards/record_vectors.py``). The
card, restored to the state it had before each client ran, must answer every command with the
recorded bytes: a change in the simulator that would break either client fails here, without
pcscd or OpenSC.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pki.cards.apdu import CommandAPDU
from pki.cards.sim import CardFile, SoftCard
from pki.cards.sim.iasecc import PKCS15_AID

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILES = sorted(VECTORS.glob("cps3-*.json"))


def _load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def _card(vector: dict[str, Any], tmp_path: Path) -> SoftCard:
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(vector["card"]))
    return SoftCard(CardFile(card_path))


def _commands(vector: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(bytes.fromhex(c), bytes.fromhex(r)) for c, r in vector["apdus"] if c != "power"]


def test_the_four_traces_are_there() -> None:
    names = {p.name for p in FILES}
    assert names == {
        "cps3-opensc-pkcs15-tool.json",
        "cps3-opensc-pkcs11-sign.json",
        "cps3-opensc-sign-key-stops.json",
        "cps3-opensc-unlock-pin.json",
        "cps3-project-pcsc.json",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_replay(path: Path, tmp_path: Path) -> None:
    vector = _load(path)
    card = _card(vector, tmp_path)
    replayed = 0
    for command, response in vector["apdus"]:
        if command == "power":
            card.reset()
            continue
        answer = card.process(bytes.fromhex(command))
        if bytes.fromhex(command)[1] == 0x84:  # GET CHALLENGE: random by design
            assert len(answer) == len(bytes.fromhex(response)) and answer[-2:] == b"\x90\x00"
        else:
            assert answer.hex() == response, f"APDU #{replayed} {command}"
        replayed += 1
    assert replayed > 20


def test_replay_detects_a_changed_answer(tmp_path: Path) -> None:
    """The replay can fail: a card whose PIN differs answers the recorded VERIFY with 63 Cx."""
    vector = _load(VECTORS / "cps3-opensc-pkcs11-sign.json")
    card = _card(vector, tmp_path)
    card.state.pin.set(b"9876")
    verify = [(c, r) for c, r in _commands(vector) if c[1] == 0x20 and len(c) > 5]
    assert verify and verify[0][1][-2:] == b"\x90\x00"
    assert card.process(verify[0][0])[-2:] == b"\x63\xc2"


def test_opensc_trace_is_the_iasecc_driver_signing(tmp_path: Path) -> None:
    """What OpenSC's driver did: EF.ATR by path, the key SDO (GET DATA), MSE SET AT with the
    local key 81 and RSA PKCS#1, INTERNAL AUTHENTICATE; the signature verifies."""
    vector = _load(VECTORS / "cps3-opensc-pkcs11-sign.json")
    commands = _commands(vector)
    heads = [c[:4].hex() for c, _ in commands]
    assert commands[0][0].hex().startswith("00a40904043f002f01")  # EF.ATR, iasecc init
    assert "00cb3fff" in heads and "002241a4" in heads and "00880000" in heads
    mse = next(c for c, _ in commands if c[:4].hex() == "002241a4")
    assert mse[5:] == bytes.fromhex("840181800102")
    at = next(i for i, (c, _) in enumerate(commands) if c[:4].hex() == "00880000")
    command, response = commands[at]
    if response[-2] == 0x61:  # the answer came by GET RESPONSE
        assert commands[at + 1][0][:2] == b"\x00\xc0"
        response = response[:-2] + commands[at + 1][1]
    assert response[-2:] == b"\x90\x00" and len(response) == 258
    cert = x509.load_der_x509_certificate(base64.b64decode(vector["card"]["files"]["C001"]))
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(response[:-2], b"login challenge", padding.PKCS1v15(), hashes.SHA256())
    assert CommandAPDU.parse(command).data.endswith(hashlib.sha256(b"login challenge").digest())


def test_project_trace_speaks_ias_ecc(tmp_path: Path) -> None:
    """The PC/SC backend: SELECT the PKCS#15 AID, EF.SN by SFI, VERIFY, MSE SET AT + INTERNAL
    AUTHENTICATE, MSE SET DST + PSO HASH + PSO CDS, VERIFY PUK + RESET RETRY COUNTER 02."""
    commands = _commands(_load(VECTORS / "cps3-project-pcsc.json"))
    heads = {c[:4].hex() for c, _ in commands}
    select = bytes.fromhex("00a4040c") + bytes((len(PKCS15_AID),)) + PKCS15_AID
    assert any(c == select for c, _ in commands)
    for head in (
        "00b09c00",
        "002241a4",
        "00880000",
        "002241b6",
        "002a90a0",
        "002a9e9a",
        "00200002",
        "002c0201",
    ):
        assert head in heads, head
    assert not any(c[:5] == bytes.fromhex("00a4040c0d") for c, _ in commands), "CPS AID used"
    # where things are comes from the card's PKCS#15: EF.DIR, then the ODF, by path from the MF
    paths = [c[5:-1] for c, _ in commands if c[:4].hex() == "00a40904"]
    assert paths[:2] == [bytes.fromhex("3f002f00"), bytes.fromhex("3f0050005031")]


def test_where_opensc_stops_with_the_signature_key() -> None:
    """OpenSC 0.23 + OpenSSL 3: the card accepts MSE SET HT (SHA-256) and MSE SET DST (key 82,
    RSA PKCS#1 + SHA-256); OpenSC then sends no PSO HASH / PSO CDS (its partial-hash helper is
    not supported with OpenSSL 3)."""
    commands = _commands(_load(VECTORS / "cps3-opensc-sign-key-stops.json"))
    heads = [c[:4].hex() for c, _ in commands]
    ht, dst = heads.index("002241aa"), heads.index("002241b6")
    assert commands[ht][0][5:] == bytes.fromhex("800140") and commands[ht][1] == b"\x90\x00"
    assert commands[dst][0][5:] == bytes.fromhex("840182800142") and commands[dst][1] == b"\x90\x00"
    assert dst > ht and not any(h.startswith("002a") for h in heads)
