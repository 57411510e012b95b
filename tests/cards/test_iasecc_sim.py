"""The software card's IAS-ECC application: the access rules a CPS3 enforces, at APDU level."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pki.cards.apdu import tlv
from pki.cards.card import SHA256_DIGEST_INFO_PREFIX
from pki.cards.errors import CardError
from pki.cards.sim import CardFile, SoftCard
from pki.cards.sim.iasecc import PKCS15_AID
from tests.cards.conftest import PIN, LoopbackCard, Personalised

SELECT_APP = bytes.fromhex("00a4040c0c") + PKCS15_AID
VERIFY_PIN = bytes.fromhex("0020000104") + PIN.encode()
MSE_AT_AUTH = bytes.fromhex("002241a406") + tlv(0x84, b"\x81") + tlv(0x80, b"\x02")
MSE_AT_SIGN = bytes.fromhex("002241a406") + tlv(0x84, b"\x82") + tlv(0x80, b"\x02")
MSE_DST_SIGN = bytes.fromhex("002241b606") + tlv(0x84, b"\x82") + tlv(0x80, b"\x42")
DIGEST_INFO = SHA256_DIGEST_INFO_PREFIX + hashlib.sha256(b"m").digest()
INTERNAL_AUTH = bytes.fromhex("00880000") + bytes((len(DIGEST_INFO),)) + DIGEST_INFO + b"\x00"


def sw(card: SoftCard, apdu: bytes) -> str:
    return card.process(apdu)[-2:].hex()


def test_power_up_is_in_the_mf(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card = loopback[0].soft
    card.reset()
    answer = card.process(bytes.fromhex("00a40904043f002f0100"))  # EF.ATR, as OpenSC starts
    assert answer[-2:] == b"\x90\x00" and answer[0] == 0x62 and b"\x8c" in answer
    serial = card.process(bytes.fromhex("00b09c0000"))
    assert serial[:2] == b"\x5a\x08" and serial[2:10] == card.state.serial


def test_key_operations_follow_the_access_rules(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    card = loopback[0].soft
    card.reset()
    assert sw(card, SELECT_APP) == "9000"
    assert sw(card, MSE_AT_AUTH) == "9000"
    assert sw(card, INTERNAL_AUTH) == "6982"  # no PIN yet
    assert sw(card, VERIFY_PIN) == "9000"
    assert sw(card, INTERNAL_AUTH) == "9000"
    assert sw(card, MSE_AT_SIGN) == "9000"
    assert sw(card, INTERNAL_AUTH) == "6982"  # the non-repudiation key: PSO only
    assert sw(card, bytes.fromhex("002a9e9a00")) == "6985"  # no DST, no hash
    assert sw(card, MSE_DST_SIGN) == "9000"
    assert sw(card, bytes.fromhex("002a9e9a00")) == "6985"  # no hash yet
    intermediate = tlv(0x90, bytes(40)) + tlv(0x80, b"tail")
    assert sw(card, bytes.fromhex("002a90a0") + bytes((len(intermediate),)) + intermediate) == (
        "6a80"  # an intermediate SHA-256 state is not offered
    )
    whole = tlv(0x90, hashlib.sha256(b"m").digest())
    assert sw(card, bytes.fromhex("002a90a0") + bytes((len(whole),)) + whole) == "9000"
    assert sw(card, bytes.fromhex("002a9e9a00")) == "9000"
    assert sw(card, bytes.fromhex("002241a406") + tlv(0x84, b"\x83") + tlv(0x80, b"\x02")) == (
        "6a88"
    )


def test_reset_retry_counter_needs_the_puk_verified(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    card, perso = loopback
    soft = card.soft
    soft.reset()
    assert sw(soft, SELECT_APP) == "9000"
    for left in ("63c2", "63c1", "63c0"):
        assert sw(soft, bytes.fromhex("002000010439393939")) == left
    assert sw(soft, VERIFY_PIN) == "6983"
    assert sw(soft, bytes.fromhex("002c02010432343638")) == "6982"  # PUK not verified
    assert sw(soft, bytes.fromhex("0020000208") + b"00000000") == "63c2"
    assert sw(soft, bytes.fromhex("002c02010432343638")) == "6982"
    assert sw(soft, bytes.fromhex("0020000208") + perso.result.puk.encode()) == "9000"
    assert sw(soft, bytes.fromhex("00200002")) == "9000"  # PUK status: verified
    assert sw(soft, bytes.fromhex("002c02010432343638")) == "9000"
    assert sw(soft, bytes.fromhex("002c02010432343638")) == "6982"  # used once
    assert sw(soft, bytes.fromhex("002000010432343638")) == "9000"
    assert soft.state.puk.tries_left == 3  # the good PUK restored its counter


def test_get_data_answers_the_sdo_asked_for(loopback: tuple[LoopbackCard, Personalised]) -> None:
    card = loopback[0].soft
    card.reset()

    def get(sdo_class: int, ref: int, tag: bytes) -> bytes:
        inner = bytes((0xBF, sdo_class | 0x80, ref, len(tag))) + tag
        body = tlv(0x4D, tlv(0x70, inner))
        return card.process(bytes.fromhex("00cb3fff") + bytes((len(body),)) + body + b"\x00")

    pin = get(0x01, 0x01, b"\x7f\x41\x80")
    assert pin[-2:] == b"\x90\x00" and b"\x9b\x01\x03" in pin  # 3 tries left
    se = get(0x7B, 0x02, b"\x7b\x80")
    assert se[-2:] == b"\x90\x00" and bytes.fromhex("a406950108830102") in se  # SE 2: the PUK
    assert get(0x10, 0x05, b"\xa0\x80")[-2:] == b"\x6a\x88"
    pub = get(0x20, 0x01, b"\x7f\x49\x80")
    assert pub[-2] == 0x61  # more than Le: the rest by GET RESPONSE
    pub = pub[:-2] + card.process(bytes.fromhex("00c00000") + pub[-1:])
    assert pub[-2:] == b"\x90\x00" and len(pub) > 256 + 2


def test_a_foreign_card_has_no_ias_ecc_application(tmp_path: Path) -> None:
    card = SoftCard(CardFile(tmp_path / "foreign.json"), applications=("piv",))
    assert sw(card, bytes.fromhex("00a40904043f002f01")) == "6d00"
    assert sw(card, SELECT_APP) == "6d00"


class RecordingCard(LoopbackCard):
    def __init__(self, card: SoftCard) -> None:
        super().__init__(card)
        self.sent: list[bytes] = []

    def transmit_raw(self, raw: bytes) -> bytes:
        self.sent.append(raw)
        return super().transmit_raw(raw)


def test_the_backend_takes_references_and_paths_from_the_pkcs15(
    loopback: tuple[LoopbackCard, Personalised], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card whose AODF names PIN reference 05 gets VERIFY 00 20 00 05 (which this card then
    refuses: its PIN is 01); one whose DODF has no CPS data objects gives the holder from the
    certificate."""
    from pki.cards.sim import iasecc

    _, perso = loopback
    card = RecordingCard(SoftCard(CardFile(perso.path)))
    real_aodf = iasecc._aodf
    monkeypatch.setattr(
        iasecc, "_aodf", lambda: real_aodf().replace(b"\x80\x01\x01", b"\x80\x01\x05")
    )
    monkeypatch.setattr(iasecc, "_dodf", lambda: b"")
    holder = card.holder()
    assert holder.national_id == "810003456789" and holder.surname == "Martin"
    assert card.layout().pin_ref == 0x05 and card.layout().puk_ref == 0x02
    with pytest.raises(CardError):
        card.verify_pin(PIN)
    assert card.sent[-1][:4] == bytes.fromhex("00200005")


def test_pso_signature_with_the_hash_mse_chose(
    loopback: tuple[LoopbackCard, Personalised],
) -> None:
    """MSE SET HT/DST choose SHA-1 or SHA-256; PSO HASH takes that hash (or the whole short
    message) and PSO CDS signs its DigestInfo with the non-repudiation key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    card, perso = loopback
    soft = card.soft
    key = perso.result.certificates["sign"].public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    for alg, hash_alg, name in ((0x10, hashes.SHA1(), "sha1"), (0x40, hashes.SHA256(), "sha256")):
        soft.reset()
        for apdu in (SELECT_APP, VERIFY_PIN, bytes.fromhex("002241aa038001") + bytes((alg,))):
            assert sw(soft, apdu) == "9000"
        dst = tlv(0x84, b"\x82") + tlv(0x80, bytes((0x02 | alg,)))
        assert sw(soft, bytes.fromhex("002241b606") + dst) == "9000"
        for hashed in (
            tlv(0x90, hashlib.new(name, b"doc").digest()),
            tlv(0x90, b"") + tlv(0x80, b"doc"),
        ):
            assert sw(soft, bytes.fromhex("002a90a0") + bytes((len(hashed),)) + hashed) == "9000"
            answer = soft.process(bytes.fromhex("002a9e9a00"))
            assert answer[-2:] == b"\x90\x00"
            key.verify(answer[:-2], b"doc", padding.PKCS1v15(), hash_alg)
