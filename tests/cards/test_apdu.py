"""APDU and TLV encoding, and the status-word table (no card involved)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki.cards.apdu import ApduFormatError, CommandAPDU, ResponseAPDU, iter_tlv, parse_tlv, tlv
from pki.cards.errors import (
    CardCommandError,
    PinIncorrect,
    PinLocked,
    PukIncorrect,
    PukLocked,
    SecurityStatusNotSatisfied,
    check_sw,
    error_for_sw,
)

byte = st.integers(0, 255)


@given(byte, byte, byte, byte, st.binary(max_size=600), st.one_of(st.none(), st.integers(1, 65536)))
def test_command_apdu_round_trip(
    cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None
) -> None:
    apdu = CommandAPDU(cla, ins, p1, p2, data, le)
    encoded = apdu.encode()
    parsed = CommandAPDU.parse(encoded)
    assert parsed.data == data
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2) == (cla, ins, p1, p2)
    if le is None:
        assert parsed.le is None
    elif apdu.extended:
        assert parsed.le == le
    else:
        assert parsed.le == le  # 256 encodes as 00 and decodes back to 256


def test_known_encodings() -> None:
    assert CommandAPDU(0, 0xA4, 4, 0, bytes.fromhex("A0000003080000100001")).encode().hex() == (
        "00a404000aa0000003080000100001"
    )
    assert CommandAPDU(0, 0xB0, 0, 0, le=256).encode().hex() == "00b0000000"
    assert CommandAPDU(0, 0xDA, 0xC0, 1, b"\x01" * 300).encode()[:7].hex() == "00dac00100012c"
    assert CommandAPDU(0, 0xC0, 0, 0, le=65536).encode().hex() == "00c00000000000"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "00",
        "00a404",
        "00a4040005a000",
        "00a4040002a0a1a2a3",
        "00a404000000",
        "00a4040000000201",
    ],
)
def test_malformed_commands_raise_6700(raw: str) -> None:
    with pytest.raises(ApduFormatError) as info:
        CommandAPDU.parse(bytes.fromhex(raw))
    assert info.value.sw == 0x6700


def test_command_apdu_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="ins"):
        CommandAPDU(0, 256, 0, 0)
    with pytest.raises(ValueError, match="le"):
        CommandAPDU(0, 0, 0, 0, le=0)


def test_response_apdu() -> None:
    r = ResponseAPDU.parse(bytes.fromhex("0102 63C2".replace(" ", "")))
    assert (r.data, r.sw, r.sw1, r.sw2) == (b"\x01\x02", 0x63C2, 0x63, 0xC2)
    assert r.encode() == bytes.fromhex("010263C2")
    with pytest.raises(ApduFormatError):
        ResponseAPDU.parse(b"\x90")


@given(
    st.lists(
        st.tuples(st.sampled_from([0x80, 0x5F2F, 0x7F49, 0x53, 0x9F7F]), st.binary(max_size=70000)),
        max_size=4,
    )
)
def test_tlv_round_trip(items: list[tuple[int, bytes]]) -> None:
    encoded = b"".join(tlv(tag, value) for tag, value in items)
    assert list(iter_tlv(encoded)) == items


def test_tlv_truncation_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_tlv(bytes.fromhex("8005 0102"))
    with pytest.raises(ValueError):
        parse_tlv(bytes.fromhex("5F"))
    with pytest.raises(ValueError):
        parse_tlv(bytes.fromhex("8082 01"))


def test_status_word_table() -> None:
    assert error_for_sw(0x9000) is None
    wrong = error_for_sw(0x63C2)
    assert isinstance(wrong, PinIncorrect) and wrong.retries_left == 2
    assert wrong.code == "pin_incorrect"
    assert isinstance(error_for_sw(0x6983), PinLocked)
    puk = error_for_sw(0x63C1, "puk")
    assert isinstance(puk, PukIncorrect) and puk.retries_left == 1
    assert isinstance(error_for_sw(0x6983, "puk"), PukLocked)
    assert isinstance(error_for_sw(0x6982), SecurityStatusNotSatisfied)
    other = error_for_sw(0x6A80)
    assert isinstance(other, CardCommandError) and other.sw == 0x6A80 and "6A80" in str(other)
    with pytest.raises(PinIncorrect, match="0 tries left"):
        check_sw(0x63C0)
