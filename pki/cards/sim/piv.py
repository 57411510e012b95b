"""PIV (NIST SP 800-73-4) view of the CPS card, so stock OpenSC can use it.

Same keys, PIN and certificates as the CPS application: slot ``9A`` (PIV authentication,
object ``5FC105``) is the CPS authentication key/certificate, slot ``9C`` (digital signature,
object ``5FC10A``) the CPS signature key/certificate. PIN reference ``80`` is the CPS PIN
(padded to 8 bytes with ``FF`` by the host); the PUK (``81``) is the CPS PUK.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pki.cards.apdu import CommandAPDU, iter_tlv, tlv
from pki.cards.sim import keys
from pki.cards.sim.softcard import (
    FID_CERT_AUTH,
    FID_CERT_SIGN,
    KEY_AUTH,
    KEY_SIGN,
    Handler,
    Reply,
    Status,
)

if TYPE_CHECKING:
    from pki.cards.sim.softcard import SoftCard

PIV_PIN_REF, PIV_PUK_REF = 0x80, 0x81
SLOT_TO_KEY = {0x9A: KEY_AUTH, 0x9C: KEY_SIGN}
CERT_OBJECTS = {bytes.fromhex("5FC105"): FID_CERT_AUTH, bytes.fromhex("5FC10A"): FID_CERT_SIGN}
OBJ_CHUID, OBJ_CCC, OBJ_DISCOVERY = bytes.fromhex("5FC102"), bytes.fromhex("5FC107"), b"\x7e"


def application_property_template() -> bytes:
    """SELECT answer: tag 61 with the PIX (4F) and the authority (79/4F, NIST RID)."""
    return tlv(
        0x61,
        tlv(0x4F, bytes.fromhex("0000100001 00".replace(" ", "")))
        + tlv(0x79, tlv(0x4F, bytes.fromhex("A000000308"))),
    )


def _unpad(value: bytes) -> bytes:
    return value.rstrip(b"\xff")


def _chuid(serial: bytes) -> bytes:
    # FASC-N left as the "no agency" value; GUID (34) derived from the card serial so that
    # OpenSC gives every card a distinct, stable token serial.
    fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
    guid = hashlib.sha256(b"cps-guid" + serial).digest()[:16]
    return (
        tlv(0x30, fascn)
        + tlv(0x34, guid)
        + tlv(0x35, b"20991231")
        + tlv(0x3E, b"")
        + tlv(0xFE, b"")
    )


def _ccc(serial: bytes) -> bytes:
    card_id = bytes.fromhex("A000000116FF") + hashlib.sha256(b"cps-ccc" + serial).digest()[:15]
    return (
        tlv(0xF0, card_id)
        + tlv(0xF1, b"\x21")
        + tlv(0xF2, b"\x21")
        + tlv(0xF3, b"")
        + tlv(0xF4, b"\x00")
        + tlv(0xF5, b"\x10")
        + tlv(0xF6, b"")
        + tlv(0xF7, b"")
        + tlv(0xFA, b"")
        + tlv(0xFB, b"")
        + tlv(0xFC, b"")
        + tlv(0xFD, b"")
        + tlv(0xFE, b"")
    )


def handlers(card: SoftCard) -> dict[int, Handler]:
    def get_data(apdu: CommandAPDU) -> Reply:
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise Status(0x6A86)
        try:
            fields = dict(iter_tlv(apdu.data))
        except ValueError:
            raise Status(0x6A80) from None
        tag = fields.get(0x5C)
        if tag is None:
            raise Status(0x6A80)
        if tag == OBJ_DISCOVERY:
            # PIN usage policy 40 00: PIV PIN only, no global PIN.
            return Reply(
                tlv(
                    0x7E,
                    tlv(0x4F, bytes.fromhex("A000000308000010000100")) + tlv(0x5F2F, b"\x40\x00"),
                )
            )
        if tag == OBJ_CHUID:
            return Reply(tlv(0x53, _chuid(card.state.serial)))
        if tag == OBJ_CCC:
            return Reply(tlv(0x53, _ccc(card.state.serial)))
        fid = CERT_OBJECTS.get(tag)
        cert = None if fid is None else card.state.files.get(fid)
        if cert is None:
            raise Status(0x6A82)
        return Reply(tlv(0x53, tlv(0x70, cert) + tlv(0x71, b"\x00") + tlv(0xFE, b"")))

    def verify(apdu: CommandAPDU) -> Reply:
        if apdu.p2 != PIV_PIN_REF or apdu.p1 not in (0x00, 0xFF):
            raise Status(0x6A88 if apdu.p1 == 0x00 else 0x6A86)
        if apdu.p1 == 0xFF:  # SP 800-73-4: reset the PIN's security status
            card.pin_verified = False
            return Reply()
        if not apdu.data:
            return Reply(sw=card.pin_status())
        if len(apdu.data) != 8:
            raise Status(0x6A80)
        return Reply(sw=card.verify_pin(_unpad(apdu.data)))

    def change_reference_data(apdu: CommandAPDU) -> Reply:
        if apdu.p1 != 0x00 or apdu.p2 != PIV_PIN_REF:
            raise Status(0x6A88)
        if len(apdu.data) != 16:
            raise Status(0x6A80)
        return Reply(sw=card.change_pin(_unpad(apdu.data[:8]), _unpad(apdu.data[8:])))

    def reset_retry_counter(apdu: CommandAPDU) -> Reply:
        if apdu.p1 != 0x00 or apdu.p2 != PIV_PIN_REF:
            raise Status(0x6A88)
        if len(apdu.data) != 16:
            raise Status(0x6A80)
        return Reply(sw=card.unblock_pin(_unpad(apdu.data[:8]), _unpad(apdu.data[8:])))

    def general_authenticate(apdu: CommandAPDU) -> Reply:
        ref = SLOT_TO_KEY.get(apdu.p2)
        if ref is None:
            raise Status(0x6A88)
        key = card.private_key(ref)
        if apdu.p1 != keys.algorithm_of(key):
            raise Status(0x6A80)
        try:
            template = dict(iter_tlv(apdu.data)).get(0x7C)
            fields = dict(iter_tlv(template)) if template is not None else {}
        except ValueError:
            raise Status(0x6A80) from None
        challenge = fields.get(0x81)
        if challenge is None or 0x82 not in fields:
            raise Status(0x6A80)
        card.require_pin()
        return Reply(tlv(0x7C, tlv(0x82, keys.sign_piv(key, challenge))))

    return {
        0xCB: get_data,
        0x20: verify,
        0x24: change_reference_data,
        0x2C: reset_retry_counter,
        0x87: general_authenticate,
    }
