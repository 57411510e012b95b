"""The software CPS card: an APDU processor with three ways in to the same keys, PIN and files.

* its own file system, selected at power-up: IAS-ECC, as a CPS3 answers (``iasecc.py``: what
  stock OpenSC and the PC/SC backend use);
* the CPS personalisation application below (the issuer's commands);
* a PIV view (``piv.py``).

CPS personalisation application (selected by ``E8 28 BD 08 0F 80 25 00 00 01 FF 00 10``),
this card's layout:

=====================  ============================================================================
EF ``D001``            holder data (BER-TLV: 80 RPPS, 81 given name, 82 surname, 83 profession code,
                       84 profession label), free read
EF ``C001`` / ``C002`` authentication / signature certificate (DER), free read
key ``01`` / ``02``    authentication / signature key, generated on the card, never exported
PIN ref ``01``         4 ASCII digits, 3 tries; PUK ref ``02``: 8 ASCII digits, 3 tries
=====================  ============================================================================

Commands: SELECT (AID, or FID with P2 ``0C``/``04``), READ BINARY, VERIFY ``00 20 00 01`` (empty
body reads the counter), CHANGE REFERENCE DATA ``00 24 00 01`` (old||new), RESET RETRY COUNTER
``00 2C 00 01`` (PUK||new PIN) / ``00 2C 01 01`` (PUK), MSE SET ``00 22 41 A4|B6``, PSO CDS
``00 2A 9E 9A``, INTERNAL AUTHENTICATE ``00 88 00 00``, GET DATA ``00 CA 00 5A`` (card serial),
GET RESPONSE; command chaining (CLA ``10``) and response chaining (``61 xx``).

Personalisation (life-cycle state ``personalisation`` only; afterwards ``69 85``):
GENERATE ASYMMETRIC KEY PAIR ``00 47 00 <key ref>`` (body ``80 01 <alg>``, 07 RSA-2048 / 11 P-256;
answers the SubjectPublicKeyInfo), PUT DATA ``00 DA <FID>`` (whole file), CHANGE REFERENCE DATA
``00 24 01 01|02`` (set PIN / PUK), ACTIVATE FILE ``00 44 00 00`` (locks the card into
``operational``; refused until both keys, both certificates, holder data, PIN and PUK exist).
We chose a one-way life-cycle lock over an admin key: there is then no key to protect at the
issuer, and a card in the field can never be re-personalised.

Renewal (``operational``, holder PIN verified): GENERATE KEY ``00 47 00 81|82`` makes a pending
auth / sign key beside the current one, PUT DATA ``00 DA C1 01|C1 02`` writes its certificate (the
card refuses one that does not certify the pending key), and ACTIVATE ``00 44 01 81|82`` swaps
pending for current (key ``01``/``02`` and EF ``C001``/``C002``) in one atomic write: a card
pulled at any step holds either its old key and certificate or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.cards.apdu import CPS3_ATR, CPS_AID, PIV_AID, ApduFormatError, CommandAPDU, iter_tlv, tlv
from pki.cards.card import PIN_LENGTH, PUK_LENGTH
from pki.cards.sim import keys
from pki.cards.sim.store import CardFile, CardState, Credential

KEY_AUTH, KEY_SIGN = 0x01, 0x02
FID_HOLDER, FID_CERT_AUTH, FID_CERT_SIGN = 0xD001, 0xC001, 0xC002
CPS_FILES = (FID_HOLDER, FID_CERT_AUTH, FID_CERT_SIGN)
PIN_REF, PUK_REF = 0x01, 0x02
PENDING = 0x80  # pending key ref = current ref | 80; pending certificate EF = current EF + 0100
MSE_TEMPLATES = {0xA4: KEY_AUTH, 0xB6: KEY_SIGN}


def _certified_spki(der: bytes) -> bytes | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        return None


class Status(Exception):
    """Raised by a handler to answer a bare status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


@dataclass
class Reply:
    data: bytes = b""
    sw: int = 0x9000


Handler = Callable[[CommandAPDU], Reply]


class SoftCard:
    """One card: persistent state in a :class:`CardFile`, volatile state reset on power-up."""

    atr = CPS3_ATR

    def __init__(
        self, card_file: CardFile, applications: tuple[str, ...] = ("cps", "piv", "iasecc")
    ) -> None:
        self.card_file = card_file
        self.applications = applications  # ("piv",) makes a foreign card, for tests
        self.state: CardState = card_file.load()
        self._keys: dict[int, keys.CardPrivateKey] = {}
        self.reset()
        from pki.cards.sim import piv  # local: piv imports this module for Status/Reply

        self._cps: dict[int, Handler] = {
            0xA4: self._select_file,
            0xB0: self._read_binary,
            0x20: self._verify,
            0x24: self._change_reference_data,
            0x2C: self._reset_retry_counter,
            0x22: self._mse_set,
            0x2A: self._pso_cds,
            0x88: self._internal_authenticate,
            0xCA: self._get_data,
            0x47: self._generate_key_pair,
            0xDA: self._put_data,
            0x44: self._activate,
        }
        self._piv: dict[int, Handler] = piv.handlers(self)
        from pki.cards.sim import iasecc  # the card's own (MF) file system: IAS-ECC, as a CPS3

        self.ias = iasecc.IasEcc(self)
        self._mf: dict[int, Handler] = (
            iasecc.handlers(self.ias) if "iasecc" in applications else {}
        )

    # --- volatile state -------------------------------------------------------------------

    def reset(self) -> None:
        self.application: str | None = None
        self.current_ef: int | None = None
        self.pin_verified = False
        self.mse_key: int | None = None
        self._pending = b""
        self._chain: tuple[int, int, int, bytes] | None = None
        if hasattr(self, "ias"):
            self.ias.reset()

    def persist(self) -> None:
        self.card_file.save(self.state)

    # --- APDU entry point -----------------------------------------------------------------

    def process(self, raw: bytes) -> bytes:
        """Answer one command APDU; never raises (malformed input gets a status word)."""
        try:
            reply = self._dispatch(raw)
        except Status as status:
            reply = Reply(sw=status.sw)
        except ApduFormatError as exc:
            reply = Reply(sw=exc.sw)
        except keys.KeyOperationError:
            reply = Reply(sw=0x6A80)
        except OSError:  # the chip's memory failed to write: ISO "memory failure"
            reply = Reply(sw=0x6581)
        return reply.data + reply.sw.to_bytes(2, "big")

    def _dispatch(self, raw: bytes) -> Reply:
        apdu = CommandAPDU.parse(raw)
        if apdu.cla & ~0x10 != 0x00:
            raise Status(0x6E00)
        if apdu.ins == 0xC0 and apdu.cla == 0x00:
            return self._get_response(apdu)
        self._pending = b""
        if apdu.cla & 0x10:
            return self._chain_part(apdu)
        if self._chain is not None:
            ins, p1, p2, head = self._chain
            self._chain = None
            if (ins, p1, p2) != (apdu.ins, apdu.p1, apdu.p2):
                raise Status(0x6883)
            if len(head) + len(apdu.data) > 65535:   # the last part is checked here, not above
                raise Status(0x6700)
            apdu = CommandAPDU(apdu.cla, apdu.ins, apdu.p1, apdu.p2, head + apdu.data, apdu.le)
        select_aid = apdu.ins == 0xA4 and apdu.p1 == 0x04
        if apdu.ins == 0xA4 and (
            apdu.p1 in (0x08, 0x09)
            or (apdu.p1 == 0x00 and apdu.data in (b"", b"\x3f\x00"))
            or (select_aid and self.ias.owns_aid(apdu.data))
        ):
            self.application = None  # the MF, a path or PKCS#15: the card's IAS-ECC file system
        elif select_aid:
            return self._limit(self._select_application(apdu), apdu.le)
        table = (
            self._cps
            if self.application == "cps"
            else self._piv
            if self.application == "piv"
            else self._mf
        )
        handler = table.get(apdu.ins)
        if handler is None:
            raise Status(0x6D00)
        return self._limit(handler(apdu), apdu.le)

    def _chain_part(self, apdu: CommandAPDU) -> Reply:
        if self._chain is None:
            self._chain = (apdu.ins, apdu.p1, apdu.p2, apdu.data)
            return Reply()
        ins, p1, p2, head = self._chain
        if (ins, p1, p2) != (apdu.ins, apdu.p1, apdu.p2):
            self._chain = None
            raise Status(0x6883)
        if len(head) + len(apdu.data) > 65535:
            self._chain = None
            raise Status(0x6700)
        self._chain = (ins, p1, p2, head + apdu.data)
        return Reply()

    def _limit(self, reply: Reply, le: int | None) -> Reply:
        """Response chaining: more than Le bytes go out as ``61 xx`` + GET RESPONSE."""
        if not reply.data or reply.sw != 0x9000:
            return reply
        limit = le or 0
        if len(reply.data) <= limit:
            return reply
        head, self._pending = reply.data[:limit], reply.data[limit:]
        return Reply(head, 0x6100 | min(len(self._pending), 256) & 0xFF)

    def _get_response(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 or apdu.p2:
            raise Status(0x6A86)
        if not self._pending:
            raise Status(0x6985)
        data, self._pending = self._pending, b""
        return self._limit(Reply(data), apdu.le or 256)

    def _select_application(self, apdu: CommandAPDU) -> Reply:
        if apdu.p2 not in (0x00, 0x0C):
            raise Status(0x6A86)
        aid = apdu.data
        if aid == CPS_AID and "cps" in self.applications:
            self.application, self.current_ef, self.mse_key = "cps", None, None
            return Reply(b"" if apdu.p2 == 0x0C else tlv(0x6F, tlv(0x84, CPS_AID)))
        if len(aid) >= 9 and PIV_AID.startswith(aid) and "piv" in self.applications:
            self.application, self.current_ef, self.mse_key = "piv", None, None
            from pki.cards.sim.piv import application_property_template

            return Reply(b"" if apdu.p2 == 0x0C else application_property_template())
        raise Status(0x6A82)

    # --- credentials ----------------------------------------------------------------------

    def check_credential(self, cred: Credential, value: bytes) -> int:
        """Compare ``value`` to ``cred``; a failed try is on the chip before the card answers.

        A real chip decrements before comparing because its power trace can leak the result
        early (tearing attacks). Here the response is the only channel and it is sent after the
        write, so comparing first is as safe and spares a write (~10 ms of fsync) per login.
        """
        if not cred.is_set:
            raise Status(0x6984)
        if cred.blocked:
            raise Status(0x6983)
        if cred.matches(value):
            if cred.tries_left != cred.max_tries:
                cred.tries_left = cred.max_tries
                self.persist()
            return 0x9000
        cred.tries_left -= 1
        self.persist()
        return 0x63C0 | cred.tries_left

    def pin_status(self) -> int:
        pin = self.state.pin
        if not pin.is_set:
            return 0x6984
        if self.pin_verified:
            return 0x9000
        return 0x6983 if pin.blocked else 0x63C0 | pin.tries_left

    def verify_pin(self, value: bytes) -> int:
        self.pin_verified = False
        if len(value) != PIN_LENGTH or not value.isdigit():
            raise Status(0x6A80)
        sw = self.check_credential(self.state.pin, value)
        self.pin_verified = sw == 0x9000
        return sw

    def change_pin(self, old: bytes, new: bytes) -> int:
        if not (old.isdigit() and new.isdigit() and len(old) == len(new) == PIN_LENGTH):
            raise Status(0x6A80)
        sw = self.check_credential(self.state.pin, old)
        if sw == 0x9000:
            self.state.pin.set(new)
            self.persist()
            self.pin_verified = True
        else:
            self.pin_verified = False
        return sw

    def unblock_pin(self, puk: bytes, new_pin: bytes | None) -> int:
        if len(puk) != PUK_LENGTH or not puk.isdigit():
            raise Status(0x6A80)
        if new_pin is not None and (len(new_pin) != PIN_LENGTH or not new_pin.isdigit()):
            raise Status(0x6A80)
        sw = self.check_credential(self.state.puk, puk)
        if sw == 0x9000:
            if new_pin is not None:
                self.state.pin.set(new_pin)
            else:
                self.state.pin.tries_left = self.state.pin.max_tries
            self.persist()
        self.pin_verified = False
        return sw

    def private_key(self, ref: int) -> keys.CardPrivateKey:
        key = self._keys.get(ref)
        if key is None:
            der = self.state.keys.get(ref)
            if der is None:
                raise Status(0x6A88)
            key = self._keys[ref] = keys.from_der(der)
        return key

    def require_pin(self) -> None:
        if not self.pin_verified:
            raise Status(0x6982)

    def require_personalisation(self) -> None:
        if self.state.lifecycle != "personalisation":
            raise Status(0x6985)

    # --- CPS handlers ---------------------------------------------------------------------

    def _select_file(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 not in (0x00, 0x02) or apdu.p2 not in (0x00, 0x04, 0x0C):
            raise Status(0x6A86)
        if len(apdu.data) != 2:
            raise Status(0x6700)
        fid = int.from_bytes(apdu.data, "big")
        content = self.state.files.get(fid)
        if content is None:
            raise Status(0x6A82)
        self.current_ef = fid
        if apdu.p2 == 0x0C:
            return Reply()
        fcp = tlv(0x80, len(content).to_bytes(2, "big")) + tlv(0x82, b"\x01") + tlv(0x83, apdu.data)
        return Reply(tlv(0x62, fcp))

    def _read_binary(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 & 0x80:
            raise Status(0x6A81)  # short-EF addressing is not offered by this card
        if self.current_ef is None:
            raise Status(0x6986)
        content = self.state.files[self.current_ef]
        offset = (apdu.p1 << 8) | apdu.p2
        if offset > len(content):
            raise Status(0x6B00)
        wanted = apdu.le or 256
        chunk = content[offset : offset + wanted]
        return Reply(chunk, 0x9000 if len(chunk) == wanted else 0x6282)

    def _verify(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 != 0x00 or apdu.p2 != PIN_REF:
            raise Status(0x6A86)
        if not apdu.data:
            return Reply(sw=self.pin_status())
        return Reply(sw=self.verify_pin(apdu.data))

    def _change_reference_data(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 == 0x01:  # personalisation: set a reference value
            self.require_personalisation()
            lengths = {PIN_REF: PIN_LENGTH, PUK_REF: PUK_LENGTH}
            if apdu.p2 not in lengths:
                raise Status(0x6A88)
            if len(apdu.data) != lengths[apdu.p2] or not apdu.data.isdigit():
                raise Status(0x6A80)
            (self.state.pin if apdu.p2 == PIN_REF else self.state.puk).set(apdu.data)
            self.persist()
            return Reply()
        if apdu.p1 != 0x00 or apdu.p2 != PIN_REF:
            raise Status(0x6A86)
        if len(apdu.data) != 2 * PIN_LENGTH:
            raise Status(0x6A80)
        return Reply(sw=self.change_pin(apdu.data[:PIN_LENGTH], apdu.data[PIN_LENGTH:]))

    def _reset_retry_counter(self, apdu: CommandAPDU) -> Reply:
        if apdu.p2 != PIN_REF or apdu.p1 not in (0x00, 0x01):
            raise Status(0x6A86)
        if apdu.p1 == 0x01:
            return Reply(sw=self.unblock_pin(apdu.data, None))
        if len(apdu.data) != PUK_LENGTH + PIN_LENGTH:
            raise Status(0x6A80)
        return Reply(sw=self.unblock_pin(apdu.data[:PUK_LENGTH], apdu.data[PUK_LENGTH:]))

    def _mse_set(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 != 0x41 or apdu.p2 not in MSE_TEMPLATES:
            raise Status(0x6A86)
        ref = MSE_TEMPLATES[apdu.p2]
        try:
            fields = dict(iter_tlv(apdu.data))
        except ValueError:
            raise Status(0x6A80) from None
        if 0x84 in fields and fields[0x84] != bytes((ref,)):
            raise Status(0x6A88)
        self.private_key(ref)
        self.mse_key = ref
        return Reply()

    def _sign(self, ref: int, data: bytes) -> Reply:
        key = self.private_key(ref)
        self.require_pin()
        if not data:
            raise Status(0x6700)
        return Reply(keys.sign_digest_info(key, data))

    def _pso_cds(self, apdu: CommandAPDU) -> Reply:
        if (apdu.p1, apdu.p2) != (0x9E, 0x9A):
            raise Status(0x6A86)
        if self.mse_key is None:
            raise Status(0x6985)
        return self._sign(self.mse_key, apdu.data)

    def _internal_authenticate(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 or apdu.p2:
            raise Status(0x6A86)
        return self._sign(KEY_AUTH, apdu.data)

    def _get_data(self, apdu: CommandAPDU) -> Reply:
        if (apdu.p1, apdu.p2) != (0x00, 0x5A):
            raise Status(0x6A88)
        return Reply(self.state.serial)

    def require_renewal(self) -> None:
        if self.state.lifecycle != "operational":
            raise Status(0x6985)
        self.require_pin()

    def _generate_key_pair(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 == 0x00 and apdu.p2 in (PENDING | KEY_AUTH, PENDING | KEY_SIGN):
            self.require_renewal()
        else:
            self.require_personalisation()
        if apdu.p1 != 0x00 or apdu.p2 & ~PENDING not in (KEY_AUTH, KEY_SIGN):
            raise Status(0x6A86)
        try:
            alg = dict(iter_tlv(apdu.data)).get(0x80, b"")
        except ValueError:
            raise Status(0x6A80) from None
        if len(alg) != 1:
            raise Status(0x6A80)
        key = keys.generate(alg[0])
        self.state.keys[apdu.p2] = keys.to_der(key)
        self._keys[apdu.p2] = key
        if apdu.p2 & PENDING:   # a pending certificate certified the key this one replaces
            fid = FID_CERT_AUTH if apdu.p2 & ~PENDING == KEY_AUTH else FID_CERT_SIGN
            self.state.files.pop(fid + 0x100, None)
        self.persist()
        return Reply(keys.public_spki(key))

    def _put_data(self, apdu: CommandAPDU) -> Reply:
        fid = (apdu.p1 << 8) | apdu.p2
        if fid in (FID_CERT_AUTH + 0x100, FID_CERT_SIGN + 0x100):
            self.require_renewal()
            if not apdu.data:
                raise Status(0x6700)
            ref = PENDING | (KEY_AUTH if fid == FID_CERT_AUTH + 0x100 else KEY_SIGN)
            if ref not in self.state.keys:
                raise Status(0x6985)
            if _certified_spki(apdu.data) != keys.public_spki(self.private_key(ref)):
                raise Status(0x6A80)
            self.state.files[fid] = apdu.data
            self.persist()
            return Reply()
        self.require_personalisation()
        if fid not in CPS_FILES:
            raise Status(0x6A88)
        if not apdu.data:
            raise Status(0x6700)
        self.state.files[fid] = apdu.data
        self.persist()
        return Reply()

    def _activate(self, apdu: CommandAPDU) -> Reply:
        if apdu.p1 == 0x01 and apdu.p2 in (PENDING | KEY_AUTH, PENDING | KEY_SIGN):
            return self._activate_pending(apdu.p2)
        if apdu.p1 or apdu.p2:
            raise Status(0x6A86)
        if self.state.lifecycle == "operational":
            return Reply()
        complete = (
            all(ref in self.state.keys for ref in (KEY_AUTH, KEY_SIGN))
            and all(fid in self.state.files for fid in CPS_FILES)
            and self.state.pin.is_set
            and self.state.puk.is_set
        )
        if not complete:
            raise Status(0x6985)
        self.state.lifecycle = "operational"
        self.persist()
        return Reply()

    def _activate_pending(self, ref: int) -> Reply:
        self.require_renewal()
        current = ref & ~PENDING
        fid = FID_CERT_AUTH if current == KEY_AUTH else FID_CERT_SIGN
        if ref not in self.state.keys or fid + 0x100 not in self.state.files:
            raise Status(0x6985)
        self.state.keys[current] = self.state.keys.pop(ref)
        self.state.files[fid] = self.state.files.pop(fid + 0x100)
        self._keys.pop(current, None)
        self._keys.pop(ref, None)
        self.persist()  # one atomic write: the old pair or the new pair, never a mix
        return Reply()
