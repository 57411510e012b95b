"""The software card's logic through the host code, without pcscd (loopback transport)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.cards.apdu import CPS_AID, PIV_AID, CommandAPDU, ResponseAPDU, parse_tlv, tlv
from pki.cards.errors import (
    CardCommandError,
    PinIncorrect,
    PinLocked,
    PukIncorrect,
    PukLocked,
    SecurityStatusNotSatisfied,
    WrongCard,
)
from pki.cards.personalise import personalise
from pki.cards.sim import CardFile, SoftCard
from pki.cards.testing import ThrowawayIssuer
from tests.cards.conftest import HOLDER, PIN, LoopbackCard, Personalised


def sw(card: SoftCard, hexapdu: str) -> int:
    return ResponseAPDU.parse(card.process(bytes.fromhex(hexapdu.replace(" ", "")))).sw


def verify_signature(cert_key: object, signature: bytes, data: bytes) -> None:
    if isinstance(cert_key, rsa.RSAPublicKey):
        cert_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(cert_key, ec.EllipticCurvePublicKey)
        cert_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def test_personalised_card_reads_back(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    assert card.holder() == HOLDER
    for usage in ("auth", "sign"):
        assert card.certificate(usage) == perso.result.certificates[usage]
    assert len(perso.result.puk) == 8 and perso.result.puk.isdigit()
    assert "puk=<hidden>" in repr(perso.result)
    assert card.pin_tries_left() == 3


@pytest.mark.parametrize("key_type", ["rsa2048", "p256"])
def test_signatures_verify_against_the_certificates(
    card_path: Path, issuer: ThrowawayIssuer, key_type: str
) -> None:
    card = LoopbackCard(SoftCard(CardFile(card_path)))
    personalise(card, HOLDER, issuer.callback(HOLDER), PIN, key_type=key_type)  # type: ignore[arg-type]
    card.verify_pin(PIN)
    for usage in ("auth", "sign"):
        sig = card.sign(usage, b"challenge-" + usage.encode())
        verify_signature(card.certificate(usage).public_key(), sig, b"challenge-" + usage.encode())
        with pytest.raises(InvalidSignature):  # the other key must not verify
            verify_signature(
                card.certificate("sign" if usage == "auth" else "auth").public_key(),
                sig,
                b"challenge-" + usage.encode(),
            )
    verify_signature(
        card.certificate("auth").public_key(), card.internal_authenticate(b"nonce"), b"nonce"
    )


def test_signing_needs_the_pin(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, _ = loopback
    with pytest.raises(SecurityStatusNotSatisfied):
        card.sign("auth", b"x")
    with pytest.raises(SecurityStatusNotSatisfied):
        card.internal_authenticate(b"x")
    with pytest.raises(PinIncorrect):
        card.verify_pin("0000")
    with pytest.raises(SecurityStatusNotSatisfied):  # a wrong PIN also clears the verified state
        card.sign("sign", b"x")
    card.verify_pin(PIN)
    card.sign("sign", b"x")
    card.soft.reset()  # power cycle / reset forgets the PIN
    with pytest.raises(SecurityStatusNotSatisfied):
        card.sign("sign", b"x")


def test_three_wrong_pins_block_and_the_puk_unblocks(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    card, perso = loopback
    for left in (2, 1, 0):
        with pytest.raises(PinIncorrect) as info:
            card.verify_pin("9999")
        assert info.value.retries_left == left
        assert card.pin_tries_left() == left
    with pytest.raises(PinLocked):
        card.verify_pin(PIN)  # even the right PIN is refused once blocked
    with pytest.raises(PukIncorrect) as puk_info:
        card.unblock_pin("00000000", "4321")
    assert puk_info.value.retries_left == 2
    card.unblock_pin(perso.result.puk, "4321")
    assert card.pin_tries_left() == 3
    with pytest.raises(PinIncorrect):
        card.verify_pin(PIN)
    card.verify_pin("4321")


def test_the_puk_blocks_after_its_own_tries(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    for _ in range(3):
        with pytest.raises(PukIncorrect):
            card.unblock_pin("00000000", "4321")
    with pytest.raises(PukLocked):
        card.unblock_pin(perso.result.puk, "4321")


def test_change_pin(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, _ = loopback
    with pytest.raises(PinIncorrect):
        card.change_pin("0000", "5678")
    card.change_pin(PIN, "5678")
    card.soft.reset()
    with pytest.raises(PinIncorrect) as info:
        card.verify_pin(PIN)
    assert info.value.retries_left == 2
    card.verify_pin("5678")
    with pytest.raises(ValueError, match="4 digits"):
        card.change_pin("5678", "12a4")


def test_failed_try_is_on_the_chip_before_the_card_answers(
    loopback: tuple[LoopbackCard, Personalised], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power cut while recording a wrong PIN: the host learns nothing (memory failure)."""
    card, _ = loopback
    saves: list[int] = []

    def cut(state: object) -> None:
        saves.append(1)
        raise OSError("power cut")

    monkeypatch.setattr(card.soft.card_file, "save", cut)
    card.verify_pin(PIN)  # right PIN, counter already full: no write needed
    assert saves == []
    with pytest.raises(CardCommandError) as info:
        card.verify_pin("9999")
    assert info.value.sw == 0x6581  # not 63 C2: no answer without the decrement on the chip
    assert saves == [1]


def test_state_survives_a_power_cycle(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    with pytest.raises(PinIncorrect):
        card.verify_pin("9999")
    again = LoopbackCard(SoftCard(CardFile(perso.path)))
    assert again.pin_tries_left() == 2
    assert again.holder() == HOLDER


def test_personalisation_is_locked_after_activation(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    card, _ = loopback
    soft = card.soft
    card.verify_pin(PIN)
    assert sw(soft, "00A4040C0D" + CPS_AID.hex()) == 0x9000
    assert sw(soft, "0047000103800107") == 0x6985  # GENERATE KEY PAIR
    assert sw(soft, "00DAC00103010203") == 0x6985  # PUT DATA
    assert sw(soft, "002401010431313131") == 0x6985  # set PIN
    assert sw(soft, "0044000000") in (0x9000,)  # ACTIVATE again is harmless


def test_activation_refused_until_complete(card_path: Path) -> None:
    soft = SoftCard(CardFile(card_path))
    assert sw(soft, "00A4040C0D" + CPS_AID.hex()) == 0x9000
    assert sw(soft, "00440000") == 0x6985
    assert CardFile(card_path).load().lifecycle == "personalisation"


def test_certificate_must_match_the_card_key(card_path: Path, issuer: ThrowawayIssuer) -> None:
    card = LoopbackCard(SoftCard(CardFile(card_path)))
    other = ec.generate_private_key(ec.SECP256R1()).public_key()

    def wrong_issue(usage: str, key: object) -> bytes:
        return issuer.issue(HOLDER, usage, other)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="does not certify"):
        personalise(card, HOLDER, wrong_issue, PIN)  # type: ignore[arg-type]


def test_private_keys_never_leave_the_card(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    soft = card.soft
    soft.process(bytes.fromhex("00A4040C0D") + CPS_AID)
    spki_len = len(soft.state.keys[1])
    for ins in range(256):  # no command answers anything resembling the key material
        resp = soft.process(bytes([0x00, ins, 0x00, 0x01, 0x00]))
        assert len(resp) < spki_len
    assert CardFile(perso.path).load().lifecycle == "operational"


@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("", 0x6700),
        ("00", 0x6700),
        ("00A404", 0x6700),
        ("00A4040005A000", 0x6700),  # Lc larger than the body
        ("80A4040000", 0x6E00),  # proprietary class
        ("FFA4040000", 0x6E00),
        ("0012000000", 0x6D00),  # no application selected
        ("00A4040007A0000000031010", 0x6A82),  # unknown AID (EMV)
        ("00C0000000", 0x6985),  # GET RESPONSE with nothing pending
    ],
)
def test_malformed_and_unknown_apdus(card_path: Path, apdu: str, expected: int) -> None:
    assert sw(SoftCard(CardFile(card_path)), apdu) == expected


def test_unknown_instruction_and_bad_parameters_in_cps(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    soft = loopback[0].soft
    assert sw(soft, "00A4040C0D" + CPS_AID.hex()) == 0x9000
    assert sw(soft, "0012000000") == 0x6D00
    assert sw(soft, "002000010431") == 0x6700  # Lc=4, one byte of body
    assert sw(soft, "002000020431323334") == 0x6A86  # unknown PIN reference
    assert sw(soft, "00200001023132") == 0x6A80  # PIN of the wrong length
    assert sw(soft, "00B0000010") == 0x6986  # READ BINARY without a current EF
    assert sw(soft, "00A4020C02EEEE") == 0x6A82
    assert sw(soft, "00A4020C02D001") == 0x9000
    assert sw(soft, "00B07FFF10") == 0x6B00  # offset beyond the end
    assert sw(soft, "00B0810010") == 0x6A81  # short-EF addressing not offered
    assert sw(soft, "002A9E9A0401020304") == 0x6985  # PSO without MSE


def test_foreign_card_is_a_wrong_card(card_path: Path) -> None:
    card = LoopbackCard(SoftCard(CardFile(card_path), applications=("piv",)))
    with pytest.raises(WrongCard):
        card.select()


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(st.binary(max_size=300))
def test_fuzzed_apdus_always_get_a_status_word(
    loopback: tuple[LoopbackCard, Personalised], raw: bytes
) -> None:
    soft = loopback[0].soft
    for prefix in (
        b"",
        bytes.fromhex("00A4040C0D") + CPS_AID,
        bytes.fromhex("00A4040009") + PIV_AID[:9],
    ):
        if prefix:
            soft.process(prefix)
        response = soft.process(raw)
        assert len(response) >= 2


def test_response_and_command_chaining(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    soft = card.soft
    soft.process(bytes.fromhex("00A4040C0D") + CPS_AID)
    soft.process(bytes.fromhex("00A4020C02C001"))
    cert = perso.result.certificates["auth"]
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    # READ BINARY without Le: everything comes back through 61xx + GET RESPONSE
    response = card.transmit(CommandAPDU(0x00, 0xB0, 0x00, 0x00, le=10))
    assert response.data == der[:10]
    # Extended Le gets the whole file at once
    assert card.transmit(CommandAPDU(0x00, 0xB0, 0x00, 0x00, le=65536)).data[: len(der)] == der


def test_piv_view(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card, perso = loopback
    soft = card.soft
    select = card.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, PIV_AID[:9], le=256))
    assert select.sw == 0x9000 and select.data[0] == 0x61
    from cryptography.hazmat.primitives.serialization import Encoding

    for tag, usage in (("5FC105", "auth"), ("5FC10A", "sign")):
        obj = card.transmit(
            CommandAPDU(0x00, 0xCB, 0x3F, 0xFF, tlv(0x5C, bytes.fromhex(tag)), le=256)
        )
        assert obj.sw == 0x9000
        inner = parse_tlv(parse_tlv(obj.data)[0x53])
        assert inner[0x70] == perso.result.certificates[usage].public_bytes(Encoding.DER)  # type: ignore[index]
    missing = card.transmit(
        CommandAPDU(0x00, 0xCB, 0x3F, 0xFF, tlv(0x5C, bytes.fromhex("5FC10B")), le=256)
    )
    assert missing.sw == 0x6A82
    digest_block = (
        b"\x00\x01"
        + b"\xff" * 202
        + b"\x00"
        + bytes.fromhex("3031300d060960864801650304020105000420")
        + b"\x11" * 32
    )
    ga = tlv(0x7C, tlv(0x82, b"") + tlv(0x81, digest_block))
    assert card.transmit(CommandAPDU(0x00, 0x87, 0x07, 0x9A, ga, le=256)).sw == 0x6982
    assert card.transmit(CommandAPDU(0x00, 0x20, 0x00, 0x80)).sw == 0x63C3
    assert card.transmit(CommandAPDU(0x00, 0x20, 0x00, 0x80, b"9999\xff\xff\xff\xff")).sw == 0x63C2
    assert (
        card.transmit(CommandAPDU(0x00, 0x20, 0x00, 0x80, PIN.encode() + b"\xff" * 4)).sw == 0x9000
    )
    signed = card.transmit(CommandAPDU(0x00, 0x87, 0x07, 0x9A, ga, le=256))
    assert signed.sw == 0x9000
    signature = parse_tlv(parse_tlv(signed.data)[0x7C])[0x82]
    key = perso.result.certificates["auth"].public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    key.verify(signature, b"\x11" * 32, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    assert card.transmit(CommandAPDU(0x00, 0x87, 0x11, 0x9A, ga, le=256)).sw == 0x6A80  # wrong alg
    assert soft.pin_verified


def test_atomic_save_keeps_the_old_card_on_failure(
    loopback: tuple[LoopbackCard, Personalised], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, perso = loopback
    before = perso.path.read_bytes()
    state = CardFile(perso.path).load()
    state.pin.tries_left = 1

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk pulled")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        CardFile(perso.path).save(state)
    assert perso.path.read_bytes() == before
    assert [p.name for p in perso.path.parent.iterdir() if p.name.endswith(".tmp")] == []


_HAMMER = """
import sys
from pki.cards.sim.store import CardFile
f = CardFile(sys.argv[1]); s = f.load(); i = 0
print("ready", flush=True)
while True:
    i += 1
    s.files[0xD001] = bytes([i % 251]) * (1000 + i % 3000)
    f.save(s)
"""


def test_kill_during_writes_never_corrupts_the_card_file(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    _, perso = loopback
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for delay in (0.05, 0.13, 0.21, 0.34):
        proc = subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(perso.path)], env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = CardFile(perso.path).load()  # parses: old or new, never torn
        content = state.files[0xD001]
        assert content and len(set(content)) == 1
        json.loads(perso.path.read_text())
