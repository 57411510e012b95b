"""IAS-ECC view of the software card: the file system and commands a CPS3 card answers.

A real CPS3 is an IAS-ECC card (the ATR ``3B AC 00 40 2A 00 12 25 00 64 80 00 03 10 00 90 00``
that OpenSC's ``iasecc`` driver binds as "IAS/ECC CPx"). This module answers as one, so stock
OpenSC (``opensc-pkcs11.so``, ``pkcs15-tool``) reads the software card through its own driver,
and the project's PC/SC backend uses the same commands a physical card needs. The layout
follows what OpenSC's ``card-iasecc.c`` / ``iasecc-sdo.c`` / ``pkcs15-iasecc.c`` read:

====================  =========================================================================
MF ``3F00``           EF.ATR ``2F01`` (pre-issuing data ``46``, I/O buffer sizes ``E0``),
                      EF.DIR ``2F00`` (one PKCS#15 application), EF.SN (SFI ``1C``, tag ``5A``),
                      DF ``0001`` (where OpenSC looks for the key SDOs of a CPx)
DF ``5000``           the PKCS#15 application, AID ``A0 00 00 00 63 50 4B 43 53 2D 31 35``:
                      ODF ``5031``, TokenInfo ``5032``, AODF ``7001``, PrKDF ``7002``,
                      CDF ``7003``, DODF ``7004``; certificates ``C001`` / ``C002``;
                      data objects ``D001`` (holder), ``D002`` CPS_ID_CARD, ``D003``
                      CPS_NAME_PS, ``D004`` CPS_INFO_PS
CHV SDO ``01`` / 02   PIN (4 digits, 3 tries) / PUK (8 digits, 3 tries), global (in the MF)
RSA SDO ``81`` / 82   authentication key (INTERNAL AUTHENTICATE after PIN) / signature key
                      (PSO HASH + PSO COMPUTE DIGITAL SIGNATURE after PIN, non-repudiation)
SE ``01`` / ``02``    security environments whose AT names the PIN / the PUK
====================  =========================================================================

Commands: SELECT (MF, FID ``P1 00/01/02``, DF name ``04``, path ``08``/``09``; FCP with the
IAS-ECC access rules ``A1/8C``), READ BINARY (offset or SFI), VERIFY ``00 20 00 01|02`` (empty
body: tries left), CHANGE REFERENCE DATA ``00 24 00 01`` (old||new), RESET RETRY COUNTER
``00 2C 00|01|02|03 01`` (``02``/``03`` after a verified PUK), GET DATA ``00 CB 3F FF`` (SDO
public data: ``4D`` / ``70`` / ``BF cls ref`` / tag), MSE SET ``00 22 41 A4|B6|AA``, INTERNAL
AUTHENTICATE ``00 88``, PSO HASH ``00 2A 90 A0`` (``90`` = the SHA-256 or SHA-1 value, as MSE
SET HT/DST chose, or ``90 00`` + ``80`` = the whole message), PSO CDS ``00 2A 9E 9A``,
GET CHALLENGE ``00 84``.

Not offered (a real card has them; nothing here needs them): secure messaging, contactless
access rules, PSO HASH continuing an intermediate SHA state (``90`` of 40 bytes), decipherment.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from pki import der
from pki.cards.apdu import CommandAPDU, iter_tlv, tlv
from pki.cards.card import PIN_LENGTH, PUK_LENGTH
from pki.cards.sim import keys
from pki.cards.sim.softcard import (
    FID_CERT_AUTH,
    FID_CERT_SIGN,
    FID_HOLDER,
    KEY_AUTH,
    KEY_SIGN,
    PIN_REF,
    PUK_REF,
    Handler,
    Reply,
    Status,
)

if TYPE_CHECKING:
    from pki.cards.sim.softcard import SoftCard

PKCS15_AID = bytes.fromhex("A000000063504B43532D3135")
MF = b"\x3f\x00"
APP = MF + b"\x50\x00"
KEYS_DF = MF + b"\x00\x01"
FID_ODF, FID_TOKENINFO = 0x5031, 0x5032
FID_AODF, FID_PRKDF, FID_CDF, FID_DODF = 0x7001, 0x7002, 0x7003, 0x7004
FID_ID_CARD, FID_NAME, FID_INFO = 0xD002, 0xD003, 0xD004
SFI_SN, SFI_ATR, SFI_DIR = 0x1C, 0x1D, 0x1E

SDO_CHV, SDO_RSA_PRIVATE, SDO_RSA_PUBLIC, SDO_SE = 0x01, 0x10, 0x20, 0x7B
LOCAL = 0x80  # IAS-ECC: object reference local to the current DF
KEY_LOCAL_REFS = {LOCAL | KEY_AUTH: KEY_AUTH, LOCAL | KEY_SIGN: KEY_SIGN}
# IAS-ECC algorithm references (iasecc-sdo.h): RSA PKCS#1 v1.5, SHA-1 10, SHA-256 40.
ALG_RSA_PKCS, ALG_SHA1, ALG_SHA256 = 0x02, 0x10, 0x40
SE_PIN, SE_PUK = 0x01, 0x02
DIGEST_INFO_PREFIXES = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}
SCB_NEVER, SCB_ALWAYS, SCB_USER_AUTH = 0xFF, 0x00, 0x10
# EF access rules (IAS-ECC DOCP "8C": AMB then one SCB per set bit): UPDATE never, READ always.
EF_ACL = tlv(0xA1, tlv(0x8C, bytes((0x03, SCB_NEVER, SCB_ALWAYS))))
DF_ACL = tlv(0xA1, tlv(0x8C, bytes((0x42, SCB_NEVER, SCB_NEVER))))  # DELETE / CREATE never

LABEL_AUTH, LABEL_SIGN = "Certificat d'Authentification CPS", "Certificat de Signature CPS"


# --- DER for the PKCS#15 files (ISO/IEC 7816-15) ---------------------------------------------


def _seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _utf8(text: str) -> bytes:
    return tlv(0x0C, text.encode())


def _octets(value: bytes) -> bytes:
    return tlv(0x04, value)


def _bits(*numbers: int) -> bytes:
    """BIT STRING with the named bits set (bit 0 = most significant bit of the first byte)."""
    if not numbers:
        return tlv(0x03, b"\x00")
    size = max(numbers) // 8 + 1
    value = bytearray(size)
    for n in numbers:
        value[n // 8] |= 0x80 >> (n % 8)
    unused = 7 - max(numbers) % 8
    return tlv(0x03, bytes((unused,)) + bytes(value))


def _path(path: bytes) -> bytes:
    return _seq(_octets(path))


def _common(label: str, flags: tuple[int, ...] = (), auth_id: bytes | None = None) -> bytes:
    body = _utf8(label) + _bits(*flags)
    if auth_id is not None:
        body += _octets(auth_id)
    return _seq(body)


def _aodf() -> bytes:
    def pin(
        label: str,
        auth_id: bytes,
        flags: tuple[int, ...],
        ref: int,
        length: int,
        protected_by: bytes | None,
    ) -> bytes:
        attrs = _seq(
            _bits(*flags),
            tlv(0x0A, b"\x01"),  # pinType ascii-numeric
            _int(4 if ref == PIN_REF else length),  # minLength
            _int(length),  # storedLength
            _int(length),  # maxLength
            tlv(0x80, bytes((ref,))),  # pinReference
            _path(MF),
        )
        return _seq(_common(label, (1,), protected_by), _seq(_octets(auth_id)), tlv(0xA1, attrs))

    # pinFlags: initialized(4), needs-padding(5) no, unblockingPin(6); the PIN names its PUK.
    return pin("PIN CPS", b"\x01", (4,), PIN_REF, PIN_LENGTH, b"\x02") + pin(
        "PUK CPS", b"\x02", (4, 6), PUK_REF, PUK_LENGTH, None
    )


def _prkdf(card: SoftCard) -> bytes:
    out = b""
    for ref, label, usage in (
        (KEY_AUTH, "Cle d'Authentification CPS", (2,)),  # sign
        (KEY_SIGN, "Cle de Signature CPS", (2, 9)),  # sign, nonRepudiation
    ):
        if ref not in card.state.keys:
            continue
        key = card.private_key(ref)
        if not keys.is_rsa(key):
            continue  # IAS-ECC (and OpenSC's iasecc driver) know RSA keys only
        common_key = _seq(
            _octets(bytes((ref,))),
            _bits(*usage),
            _bits(0, 2, 3, 4),  # sensitive, alwaysSensitive, neverExtractable, local
            _int(LOCAL | ref),  # keyReference: the RSA private SDO
        )
        rsa_attrs = _seq(_path(KEYS_DF), _int(keys.key_bits(key)))
        out += _seq(_common(label, (0,), b"\x01"), common_key, tlv(0xA1, rsa_attrs))
    return out


def _cdf(card: SoftCard) -> bytes:
    out = b""
    for ref, fid, label in (
        (KEY_AUTH, FID_CERT_AUTH, LABEL_AUTH),
        (KEY_SIGN, FID_CERT_SIGN, LABEL_SIGN),
    ):
        if fid in card.state.files:
            cert_attrs = _seq(_path(APP + fid.to_bytes(2, "big")))
            out += _seq(_common(label), _seq(_octets(bytes((ref,)))), tlv(0xA1, cert_attrs))
    return out


def _dodf() -> bytes:
    out = b""
    for fid, label in (
        (FID_ID_CARD, "CPS_ID_CARD"),
        (FID_NAME, "CPS_NAME_PS"),
        (FID_INFO, "CPS_INFO_PS"),
    ):
        out += _seq(
            _common(label), _seq(_utf8("CPS")), tlv(0xA1, _path(APP + fid.to_bytes(2, "big")))
        )
    return out


def _odf() -> bytes:
    def entry(tag: int, fid: int) -> bytes:
        return tlv(tag, _path(APP + fid.to_bytes(2, "big")))

    return (
        entry(0xA8, FID_AODF)
        + entry(0xA0, FID_PRKDF)
        + entry(0xA4, FID_CDF)
        + entry(0xA7, FID_DODF)
    )


def _tokeninfo(card: SoftCard) -> bytes:
    # supportedAlgorithms: reference, PKCS#11 mechanism, parameters NULL, operations, algRef.
    # OpenSC's CPx fix-up gives a non-repudiation key the SHA-1 and SHA-256 signatures and
    # any other signing key RSA_PKCS, looked up here.
    sign, hash_op = 1, 6  # operations bits: compute-signature, hash

    def algo(ref: int, mechanism: int, op: int, alg_ref: int) -> bytes:
        return _seq(_int(ref), _int(mechanism), tlv(0x05, b""), _bits(op), _int(alg_ref))

    algos = (
        algo(1, 0x0001, sign, ALG_RSA_PKCS)  # CKM_RSA_PKCS
        + algo(2, 0x0006, sign, ALG_RSA_PKCS | ALG_SHA1)  # CKM_SHA1_RSA_PKCS
        + algo(3, 0x0040, sign, ALG_RSA_PKCS | ALG_SHA256)  # CKM_SHA256_RSA_PKCS
        + algo(4, 0x0220, hash_op, ALG_SHA1)  # CKM_SHA_1
        + algo(5, 0x0250, hash_op, ALG_SHA256)  # CKM_SHA256
    )
    return _seq(
        _int(0),
        _octets(card.state.serial),
        _utf8("CPS software card"),
        tlv(0x80, b"CPS3"),  # label [0]
        _bits(0),  # readOnly
        tlv(0xA2, algos),
    )


def _ef_atr() -> bytes:
    # 46: pre-issuing data (IC manufacturer, IC type, OS version, IAS-ECC version);
    # E0: buffer sizes, plain and secure-messaging, command and response.
    sizes = b"".join(tlv(0x02, n.to_bytes(2, "big")) for n in (0xFF, 0xFF, 0x100, 0x100))
    return tlv(0x43, b"\xb8") + tlv(0x46, bytes.fromhex("00000101")) + tlv(0xE0, sizes)


def _ef_dir() -> bytes:
    return tlv(0x61, tlv(0x4F, PKCS15_AID) + tlv(0x50, b"CPS3 PKCS#15") + tlv(0x51, APP))


def _holder_parts(card: SoftCard) -> tuple[bytes, bytes]:
    """The holder file split the way the CPS data objects carry it: (name, info) TLVs."""
    name = info = b""
    for tag, value in iter_tlv(card.state.files.get(FID_HOLDER, b"")):
        if tag in (0x81, 0x82):
            name += tlv(tag, value)
        else:
            info += tlv(tag, value)
    return name, info


class IasEcc:
    """The IAS-ECC application state of one powered-up card (reset with the card)."""

    def __init__(self, card: SoftCard) -> None:
        self.card = card
        self.reset()

    def reset(self) -> None:
        self.current_df: bytes = MF
        self.current_ef: bytes | None = None
        self.puk_verified = False
        self.at_key: int | None = None
        self.dst_key: int | None = None
        self.hash: bytes | None = None
        self.hash_name = "sha256"

    @staticmethod
    def owns_aid(aid: bytes) -> bool:
        """SELECT by DF name of the PKCS#15 application (a prefix selects it too)."""
        return len(aid) >= 5 and PKCS15_AID.startswith(aid)

    # --- file system -----------------------------------------------------------------------

    def files(self) -> dict[bytes, bytes | None]:
        """Path → content (``None`` for a DF); computed from the card's state."""
        card = self.card
        name, info = _holder_parts(card)
        out: dict[bytes, bytes | None] = {
            MF: None,
            MF + b"\x2f\x01": _ef_atr(),
            MF + b"\x2f\x00": _ef_dir(),
            KEYS_DF: None,
            APP: None,
        }
        app_files = {
            FID_ODF: _odf(),
            FID_TOKENINFO: _tokeninfo(card),
            FID_AODF: _aodf(),
            FID_PRKDF: _prkdf(card),
            FID_CDF: _cdf(card),
            FID_DODF: _dodf(),
            FID_ID_CARD: card.state.serial.hex().encode(),
            FID_NAME: name,
            FID_INFO: info,
        }
        for fid in (FID_CERT_AUTH, FID_CERT_SIGN, FID_HOLDER):
            if fid in card.state.files:
                app_files[fid] = card.state.files[fid]
        for fid, content in app_files.items():
            out[APP + fid.to_bytes(2, "big")] = content
        return out

    def _fcp(self, path: bytes, content: bytes | None) -> bytes:
        fid = path[-2:]
        if content is None:
            body = tlv(0x82, b"\x38") + tlv(0x83, fid)
            if path == APP:
                body += tlv(0x84, PKCS15_AID)
            return tlv(0x62, body + tlv(0x8A, b"\x05") + DF_ACL)
        body = tlv(0x80, len(content).to_bytes(2, "big")) + tlv(0x82, b"\x01") + tlv(0x83, fid)
        return tlv(0x62, body + tlv(0x8A, b"\x05") + EF_ACL)

    def select(self, apdu: CommandAPDU) -> Reply:
        if apdu.p2 not in (0x00, 0x04, 0x0C):
            raise Status(0x6A86)
        files = self.files()
        data = apdu.data
        if (apdu.p1 == 0x00 and not data) or (apdu.p1 in (0x00, 0x01, 0x02) and data == MF):
            path = MF
        elif apdu.p1 in (0x00, 0x01, 0x02):
            if len(data) != 2:
                raise Status(0x6A87)
            path = self.current_df + data
            if path not in files and MF + data in files:
                path = MF + data
        elif apdu.p1 == 0x04:
            if data != PKCS15_AID[: len(data)] or not data:
                raise Status(0x6A82)
            path = APP
        elif apdu.p1 in (0x08, 0x09):
            if not data or len(data) % 2:
                raise Status(0x6A87)
            if data.startswith(MF) or apdu.p1 == 0x08:
                path = data if data.startswith(MF) else MF + data
            else:
                path = self.current_df + data
        else:
            raise Status(0x6A86)
        if path not in files:
            raise Status(0x6A82)
        content = files[path]
        if content is None:
            self.current_df, self.current_ef = path, None
        else:
            self.current_df, self.current_ef = path[:-2], path
        return Reply(b"" if apdu.p2 == 0x0C else self._fcp(path, content))

    def read_binary(self, apdu: CommandAPDU) -> Reply:
        files = self.files()
        if apdu.p1 & 0x80:
            sfi = apdu.p1 & 0x1F
            if sfi == SFI_SN:
                content = tlv(0x5A, self.card.state.serial)
            elif sfi in (SFI_ATR, SFI_DIR):
                content = files[MF + (b"\x2f\x01" if sfi == SFI_ATR else b"\x2f\x00")] or b""
            else:
                raise Status(0x6A82)
            offset = apdu.p2
        else:
            if self.current_ef is None:
                raise Status(0x6986)
            content = files.get(self.current_ef) or b""
            offset = (apdu.p1 << 8) | apdu.p2
        if offset > len(content):
            raise Status(0x6B00)
        wanted = apdu.le or 256
        chunk = content[offset : offset + wanted]
        return Reply(chunk, 0x9000 if len(chunk) == wanted else 0x6282)

    # --- credentials -----------------------------------------------------------------------

    def verify(self, apdu: CommandAPDU) -> Reply:
        card = self.card
        if apdu.p1 != 0x00 or apdu.p2 not in (PIN_REF, PUK_REF):
            raise Status(0x6A88 if apdu.p1 == 0x00 else 0x6A86)
        if apdu.p2 == PIN_REF:
            if not apdu.data:
                return Reply(sw=card.pin_status())
            return Reply(sw=card.verify_pin(apdu.data))
        puk = card.state.puk
        if not apdu.data:
            if self.puk_verified:
                return Reply()
            if not puk.is_set:
                raise Status(0x6984)
            return Reply(sw=0x6983 if puk.blocked else 0x63C0 | puk.tries_left)
        self.puk_verified = False
        if len(apdu.data) != PUK_LENGTH or not apdu.data.isdigit():
            raise Status(0x6A80)
        sw = card.check_credential(puk, apdu.data)
        self.puk_verified = sw == 0x9000
        return Reply(sw=sw)

    def change_reference_data(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 != 0x00 or apdu.p2 != PIN_REF:
            raise Status(0x6A86)
        if len(apdu.data) != 2 * PIN_LENGTH:
            raise Status(0x6A80)
        return Reply(sw=self.card.change_pin(apdu.data[:PIN_LENGTH], apdu.data[PIN_LENGTH:]))

    def reset_retry_counter(self, apdu: CommandAPDU) -> Reply:
        card = self.card
        if apdu.p2 != PIN_REF or apdu.p1 not in (0x00, 0x01, 0x02, 0x03):
            raise Status(0x6A86)
        if apdu.p1 == 0x00:
            if len(apdu.data) != PUK_LENGTH + PIN_LENGTH:
                raise Status(0x6A80)
            return Reply(sw=card.unblock_pin(apdu.data[:PUK_LENGTH], apdu.data[PUK_LENGTH:]))
        if apdu.p1 == 0x01:
            return Reply(sw=card.unblock_pin(apdu.data, None))
        # 02 / 03: the PUK was verified before (IAS-ECC access rule of the PIN's RESET).
        if not self.puk_verified:
            raise Status(0x6982)
        new_pin = apdu.data if apdu.p1 == 0x02 else None
        if new_pin is not None and (len(new_pin) != PIN_LENGTH or not new_pin.isdigit()):
            raise Status(0x6A80)
        if new_pin is None and apdu.data:
            raise Status(0x6700)
        if new_pin is not None:
            card.state.pin.set(new_pin)
        else:
            card.state.pin.tries_left = card.state.pin.max_tries
        card.persist()
        card.pin_verified = False
        self.puk_verified = False
        return Reply()

    # --- SDO public data (GET DATA 3F FF) --------------------------------------------------

    def get_data(self, apdu: CommandAPDU) -> Reply:
        """``4D { 70 { BF cls ref L { tag... } } }`` → ``70 { BF cls ref L { data } }``."""
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise Status(0x6A86)
        try:
            template = dict(iter_tlv(dict(iter_tlv(apdu.data)).get(0x4D, b""))).get(0x70, b"")
        except ValueError:
            raise Status(0x6A80) from None
        if len(template) < 5 or template[0] != 0xBF or template[3] != len(template) - 4:
            raise Status(0x6A80)
        sdo_class, ref, asked = template[1] & 0x7F, template[2] & 0x3F, template[4:]
        tag = int.from_bytes(asked[:2], "big") if asked[0] & 0x1F == 0x1F else asked[0]
        body = self._sdo(sdo_class, ref, tag)
        sdo = bytes((0xBF, template[1] | LOCAL, ref)) + _ias_len(len(body)) + body
        return Reply(b"\x70" + _ias_len(len(sdo)) + sdo)

    def _sdo(self, sdo_class: int, ref: int, tag: int) -> bytes:
        card = self.card
        if sdo_class == SDO_CHV and ref in (PIN_REF, PUK_REF):
            cred = card.state.pin if ref == PIN_REF else card.state.puk
            if not cred.is_set:
                raise Status(0x6A88)
            if ref == PIN_REF:
                # CHANGE always (the old PIN is in the command), VERIFY always, RESET after
                # the PUK (user authentication in SE 02).
                acl = bytes((0x70, SCB_ALWAYS, SCB_ALWAYS, SCB_USER_AUTH | SE_PUK))
                sizes = tlv(0x80, bytes((8,))) + tlv(0x81, bytes((PIN_LENGTH,)))
            else:
                acl = bytes((0x60, SCB_NEVER, SCB_ALWAYS))
                sizes = tlv(0x80, bytes((PUK_LENGTH,))) + tlv(0x81, bytes((PUK_LENGTH,)))
            docp = tlv(
                0xA0,
                tlv(0x9A, bytes((cred.max_tries,)))
                + tlv(0x9B, bytes((cred.tries_left,)))
                + tlv(0xA1, tlv(0x8C, acl)),
            )
            return (tlv(0x7F41, sizes) if tag == 0x7F41 else b"") + docp
        if sdo_class in (SDO_RSA_PRIVATE, SDO_RSA_PUBLIC) and ref in (KEY_AUTH, KEY_SIGN):
            if ref not in card.state.keys:
                raise Status(0x6A88)
            key = card.private_key(ref)
            if not keys.is_rsa(key):
                raise Status(0x6A88)
            size = (keys.key_bits(key) // 8).to_bytes(2, "big")
            if sdo_class == SDO_RSA_PUBLIC:
                n, e = keys.rsa_public_numbers(key)
                pub = tlv(0x81, n) + tlv(0x82, e)
                return tlv(0x7F49, pub) + tlv(
                    0xA0, tlv(0x80, size) + tlv(0xA1, tlv(0x8C, b"\x01\x00"))
                )
            user = SCB_USER_AUTH | SE_PIN
            # AMB: PSO signature (40), internal authenticate (20), GET DATA (01).
            if ref == KEY_AUTH:
                acl, non_repudiation = bytes((0x61, SCB_NEVER, user, SCB_ALWAYS)), b"\x00"
            else:
                acl, non_repudiation = bytes((0x61, user, SCB_NEVER, SCB_ALWAYS)), b"\x01"
            return tlv(
                0xA0,
                tlv(0x80, size) + tlv(0x9E, non_repudiation) + tlv(0xA1, tlv(0x8C, acl)),
            )
        if sdo_class == SDO_SE and ref in (SE_PIN, SE_PUK):
            chv = PIN_REF if ref == SE_PIN else PUK_REF
            at = tlv(0xA4, tlv(0x95, b"\x08") + tlv(0x83, bytes((chv,))))
            return tlv(SDO_SE, at)
        raise Status(0x6A88)

    # --- security environment and private-key operations -----------------------------------

    def mse_set(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 == 0xF3:  # RESTORE: the card has one SE; nothing to restore
            return Reply()
        if apdu.p1 != 0x41 or apdu.p2 not in (0xA4, 0xB6, 0xAA):
            raise Status(0x6A86)
        try:
            fields = dict(iter_tlv(apdu.data))
        except ValueError:
            raise Status(0x6A80) from None
        algorithm = fields.get(0x80, b"")
        if len(algorithm) == 1 and algorithm[0] & (ALG_SHA1 | ALG_SHA256):
            self.hash_name = "sha1" if algorithm[0] & ALG_SHA1 else "sha256"
        if apdu.p2 == 0xAA:
            if algorithm and algorithm[0] not in (ALG_SHA1, ALG_SHA256):
                raise Status(0x6A80)
            self.hash = None
            return Reply()
        key_ref = fields.get(0x84, b"")
        if len(key_ref) != 1 or key_ref[0] not in KEY_LOCAL_REFS:
            raise Status(0x6A88)
        ref = KEY_LOCAL_REFS[key_ref[0]]
        self.card.private_key(ref)  # 6A88 when the card holds no such key
        if apdu.p2 == 0xA4:
            self.at_key = ref
        else:
            self.dst_key, self.hash = ref, None
        return Reply()

    def internal_authenticate(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 or apdu.p2:
            raise Status(0x6A86)
        if self.at_key is None:
            raise Status(0x6985)
        if self.at_key != KEY_AUTH:  # the signature key's access rule forbids it
            raise Status(0x6982)
        return self._sign(self.at_key, apdu.data)

    def pso(self, apdu: CommandAPDU) -> Reply:
        if (apdu.p1, apdu.p2) == (0x90, 0xA0):
            return self._pso_hash(apdu.data)
        if (apdu.p1, apdu.p2) != (0x9E, 0x9A):
            raise Status(0x6A86)
        if self.dst_key is None or self.hash is None:
            raise Status(0x6985)
        if self.dst_key != KEY_SIGN:
            raise Status(0x6982)
        digest, self.hash = self.hash, None
        prefix = DIGEST_INFO_PREFIXES[self.hash_name]
        key = self.card.private_key(self.dst_key)
        return self._sign(self.dst_key, digest if not keys.is_rsa(key) else prefix + digest)

    def _pso_hash(self, data: bytes) -> Reply:
        try:
            fields = dict(iter_tlv(data))
        except ValueError:
            raise Status(0x6A80) from None
        partial = fields.get(0x90)
        if partial is None:
            raise Status(0x6A80)
        size = hashlib.new(self.hash_name).digest_size
        if len(partial) == size and 0x80 not in fields:
            self.hash = partial
        elif not partial and 0x80 in fields:
            self.hash = hashlib.new(self.hash_name, fields[0x80]).digest()
        else:  # an intermediate SHA state: not offered by this card
            raise Status(0x6A80)
        return Reply()

    def _sign(self, ref: int, data: bytes) -> Reply:
        key = self.card.private_key(ref)
        self.card.require_pin()
        if not data:
            raise Status(0x6700)
        return Reply(keys.sign_digest_info(key, data))

    def get_challenge(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 or apdu.p2:
            raise Status(0x6A86)
        return Reply(os.urandom(apdu.le or 8))


def _ias_len(n: int) -> bytes:
    return der.length(n)   # the one DER/BER length writer (pki.der)


def handlers(ias: IasEcc) -> dict[int, Handler]:
    return {
        0xA4: ias.select,
        0xB0: ias.read_binary,
        0x20: ias.verify,
        0x24: ias.change_reference_data,
        0x2C: ias.reset_retry_counter,
        0xCB: ias.get_data,
        0x22: ias.mse_set,
        0x88: ias.internal_authenticate,
        0x2A: ias.pso,
        0x84: ias.get_challenge,
    }
