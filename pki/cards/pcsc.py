"""PC/SC backend: a CPS card in a reader, through pcscd and pyscard.

Every multi-APDU operation runs inside an ``SCardBeginTransaction`` so another PC/SC client
(OpenSC, a second process) cannot change the selected application or key in between.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key
from smartcard import scard

from pki.cards.apdu import CPS_AID, CommandAPDU, ResponseAPDU, iter_tlv, parse_tlv, tlv
from pki.cards.card import (
    PIN_MAX_TRIES,
    HolderData,
    KeyType,
    Usage,
    check_pin,
    check_puk,
    sha256_digest_info,
)
from pki.cards.errors import (
    CardError,
    CardRemoved,
    CredentialKind,
    NoCard,
    NoReader,
    WrongCard,
    check_sw,
)

FID_HOLDER, FID_CERT = 0xD001, {"auth": 0xC001, "sign": 0xC002}
KEY_REF: dict[Usage, int] = {"auth": 0x01, "sign": 0x02}
MSE_TEMPLATE: dict[Usage, int] = {"auth": 0xA4, "sign": 0xB6}
PIN_REF, PUK_REF = 0x01, 0x02
# The card as a CPS3 answers (IAS-ECC, pki/cards/README.md). Where its objects are is read
# from the card's PKCS#15 structures (EF.DIR, ODF, TokenInfo, PrKDF, CDF, DODF), as OpenSC does:
# nothing below but the PKCS#15 AID, the MF and the IAS-ECC defaults is assumed.
PKCS15_AID = bytes.fromhex("A000000063504B43532D3135")
MF, EF_DIR = b"\x3f\x00", b"\x3f\x00\x2f\x00"
SFI_SERIAL = 0x1C
DATA_NAME, DATA_INFO = "CPS_NAME_PS", "CPS_INFO_PS"
ALG_RSA_PKCS, ALG_SHA256 = 0x02, 0x40  # IAS-ECC algorithm references (TokenInfo's, if given)
CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS = 0x0001, 0x0040
_NON_REPUDIATION = 9  # PKCS#15 KeyUsageFlags bit
_UNBLOCKING_PIN = 6  # PKCS#15 PinFlags bit


@dataclass(frozen=True)
class Pkcs15Layout:
    """Where a CPS3's objects are, as its PKCS#15 application describes them."""

    app_path: bytes
    cert_paths: dict[Usage, bytes]
    key_refs: dict[Usage, int]
    data_paths: dict[str, bytes]
    alg_refs: dict[int, int]  # PKCS#11 mechanism -> IAS-ECC algorithm reference
    pin_ref: int = PIN_REF
    puk_ref: int = PUK_REF


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    try:
        return list(iter_tlv(data))
    except ValueError as exc:
        raise WrongCard(f"PKCS#15 structure unreadable: {exc}") from exc


def _first(data: bytes, tag: int) -> bytes | None:
    return next((v for t, v in _fields(data) if t == tag), None)


def _path_of(value: bytes) -> bytes:
    """A PKCS#15 Path (SEQUENCE { OCTET STRING ... }) → the path bytes."""
    inner = _first(value, 0x30)
    path = _first(value if inner is None else inner, 0x04)
    if not path:
        raise WrongCard("PKCS#15 path missing")
    return path


def _bit(bit_string: bytes | None, number: int) -> bool:
    if not bit_string or len(bit_string) < 2:
        return False
    byte = 1 + number // 8
    return byte < len(bit_string) and bool(bit_string[byte] & (0x80 >> (number % 8)))
KEY_ALG: dict[KeyType, int] = {"rsa2048": 0x07, "p256": 0x11}
_CHUNK = 0xE0  # READ BINARY / PUT DATA chunk: fits every reader's short-APDU buffer

_NO_SERVICE = {scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED}
_NO_READER = {scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_UNKNOWN_READER}
_NO_READER |= {scard.SCARD_E_READER_UNAVAILABLE}
_GONE = {scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_RESET_CARD}
_GONE |= {scard.SCARD_W_UNPOWERED_CARD, scard.SCARD_W_UNRESPONSIVE_CARD}
_GONE |= {scard.SCARD_E_NOT_TRANSACTED, scard.SCARD_E_COMM_DATA_LOST}


def _u32(code: int) -> int:
    return code & 0xFFFFFFFF


def pcsc_error(hresult: int, what: str) -> CardError:
    """Map a PC/SC return code outside a card session to a typed error."""
    code = _u32(hresult)
    if code in {_u32(c) for c in _NO_SERVICE}:
        return NoReader("PC/SC service not running (start pcscd)")
    if code in {_u32(c) for c in _NO_READER}:
        return NoReader(f"no such smart card reader ({what})")
    if code in {_u32(c) for c in _GONE}:
        return NoCard(f"no card in the reader ({what})")
    return CardError(f"{what}: {scard.SCardGetErrorMessage(hresult)} ({code:#010x})")


@contextmanager
def pcsc_context() -> Iterator[Any]:
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, "establish context")
    try:
        yield context
    finally:
        scard.SCardReleaseContext(context)


def list_readers() -> list[str]:
    """Reader names; [] when pcscd runs without readers; NoReader when pcscd is absent."""
    with pcsc_context() as context:
        hresult, readers = scard.SCardListReaders(context, [])
        if _u32(hresult) == _u32(scard.SCARD_E_NO_READERS_AVAILABLE):
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "list readers")
        return list(readers)


@dataclass(frozen=True)
class ReaderState:
    name: str
    card_present: bool
    atr: bytes


def reader_states() -> list[ReaderState]:
    with pcsc_context() as context:
        hresult, readers = scard.SCardListReaders(context, [])
        if _u32(hresult) == _u32(scard.SCARD_E_NO_READERS_AVAILABLE):
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "list readers")
        query = [(name, scard.SCARD_STATE_UNAWARE) for name in readers]
        hresult, states = scard.SCardGetStatusChange(context, 0, query)
        if hresult not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
            raise pcsc_error(hresult, "reader status")
        return [
            ReaderState(name, bool(state & scard.SCARD_STATE_PRESENT), bytes(atr))
            for name, state, atr in states
        ]


def wait_for_card(reader: str, present: bool = True, timeout: float = 10.0) -> None:
    """Block until a card is (or is no longer) in ``reader``."""
    with pcsc_context() as context:
        state = scard.SCARD_STATE_UNAWARE
        remaining_ms = int(timeout * 1000)
        while True:
            hresult, states = scard.SCardGetStatusChange(context, remaining_ms, [(reader, state)])
            if _u32(hresult) == _u32(scard.SCARD_E_TIMEOUT):
                what = "inserted" if present else "removed"
                raise (NoCard if present else CardError)(f"card not {what} in {reader!r} in time")
            if hresult != scard.SCARD_S_SUCCESS:
                raise pcsc_error(hresult, f"watch {reader!r}")
            _, state, _ = states[0]
            if bool(state & scard.SCARD_STATE_PRESENT) == present and not (
                state & scard.SCARD_STATE_MUTE
            ):
                return
            state &= ~scard.SCARD_STATE_CHANGED


class PcscCard:
    """A CPS card in a PC/SC reader. Use :meth:`open`; close (or ``with``) when done."""

    def __init__(self, context: Any, handle: Any, protocol: int, reader: str) -> None:
        self._context = context
        self._handle = handle
        self._protocol = protocol
        self.reader = reader
        self._lock = threading.RLock()
        self._holder: HolderData | None = None
        self._certs: dict[Usage, x509.Certificate] = {}
        self._layout: Pkcs15Layout | None = None

    # --- connection ------------------------------------------------------------------------

    @classmethod
    def open(cls, reader: str | None = None) -> PcscCard:
        """Connect to ``reader`` (default: the first reader holding a card) and select CPS."""
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "establish context")
        try:
            name = reader or cls._first_reader_with_card()
            protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            hresult, handle, protocol = scard.SCardConnect(
                context, name, scard.SCARD_SHARE_SHARED, protocols
            )
            if hresult != scard.SCARD_S_SUCCESS:
                raise pcsc_error(hresult, f"connect to {name!r}")
        except BaseException:
            scard.SCardReleaseContext(context)
            raise
        card = cls(context, handle, protocol, name)
        try:
            card.select_ias()
        except BaseException:
            card.close()
            raise
        return card

    @staticmethod
    def _first_reader_with_card() -> str:
        states = reader_states()
        if not states:
            raise NoReader("no smart card reader")
        for state in states:
            if state.card_present:
                return state.name
        raise NoCard("no card in any reader")

    def close(self, reset: bool = True) -> None:
        """Disconnect; by default reset the card so its verified-PIN state does not linger."""
        with self._lock:
            if self._handle is None:
                return
            disposition = scard.SCARD_RESET_CARD if reset else scard.SCARD_LEAVE_CARD
            scard.SCardDisconnect(self._handle, disposition)
            scard.SCardReleaseContext(self._context)
            self._handle = None

    def __enter__(self) -> PcscCard:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._handle is None:
                raise CardError("card connection closed")
            hresult = scard.SCardBeginTransaction(self._handle)
            if hresult != scard.SCARD_S_SUCCESS:
                raise self._session_error(hresult, "begin transaction")
            try:
                yield
            finally:
                scard.SCardEndTransaction(self._handle, scard.SCARD_LEAVE_CARD)

    def _session_error(self, hresult: int, what: str) -> CardError:
        code = _u32(hresult)
        if code in {_u32(c) for c in _GONE} or code == _u32(scard.SCARD_E_INVALID_HANDLE):
            return CardRemoved(f"card removed from {self.reader!r} during {what}")
        return pcsc_error(hresult, what)

    # --- APDU exchange ---------------------------------------------------------------------

    def transmit_raw(self, raw: bytes) -> bytes:
        with self._lock:
            if self._handle is None:
                raise CardError("card connection closed")
            hresult, response = scard.SCardTransmit(self._handle, self._protocol, list(raw))
            if hresult != scard.SCARD_S_SUCCESS:
                raise self._session_error(hresult, f"command {raw[:4].hex()}")
            if len(response) < 2:
                # vpcd (and some readers) report a vanished card as an empty, "successful" answer
                raise CardRemoved(f"card in {self.reader!r} stopped answering (removed?)")
            return bytes(response)

    def transmit(self, apdu: CommandAPDU) -> ResponseAPDU:
        """Send ``apdu``; follow ``61 xx`` (GET RESPONSE) and ``6C xx`` (wrong Le) transparently."""
        response = ResponseAPDU.parse(self.transmit_raw(apdu.encode()))
        if response.sw1 == 0x6C:
            fixed = CommandAPDU(
                apdu.cla, apdu.ins, apdu.p1, apdu.p2, apdu.data, response.sw2 or 256
            )
            response = ResponseAPDU.parse(self.transmit_raw(fixed.encode()))
        data = response.data
        while response.sw1 == 0x61:
            get_response = CommandAPDU(0x00, 0xC0, 0x00, 0x00, le=response.sw2 or 256)
            response = ResponseAPDU.parse(self.transmit_raw(get_response.encode()))
            data += response.data
        return ResponseAPDU(data, response.sw)

    def command(
        self,
        ins: int,
        p1: int,
        p2: int,
        data: bytes = b"",
        le: int | None = None,
        kind: CredentialKind = "pin",
    ) -> bytes:
        response = self.transmit(CommandAPDU(0x00, ins, p1, p2, data, le))
        check_sw(response.sw, kind)
        return response.data

    def _chained(self, ins: int, p1: int, p2: int, data: bytes, le: int | None = None) -> bytes:
        """Command chaining (CLA 10) for bodies over 255 bytes."""
        while len(data) > 255:
            response = self.transmit(CommandAPDU(0x10, ins, p1, p2, data[:255]))
            check_sw(response.sw)
            data = data[255:]
        return self.command(ins, p1, p2, data, le)

    # --- CPS application ------------------------------------------------------------------

    def select(self) -> None:
        """The CPS personalisation application (issuer commands: keys, files, credentials)."""
        response = self.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x0C, CPS_AID))
        if response.sw in (0x6A82, 0x6A81, 0x6D00, 0x6E00, 0x6A86):
            raise WrongCard(f"card in {self.reader!r} has no CPS application")
        check_sw(response.sw)

    def select_ias(self) -> None:
        """The card's IAS-ECC PKCS#15 application, what a CPS3 answers to in the field."""
        response = self.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x0C, PKCS15_AID))
        if response.sw in (0x6A82, 0x6A81, 0x6D00, 0x6E00, 0x6A86):
            raise WrongCard(f"card in {self.reader!r} is not a CPS card (no IAS-ECC PKCS#15)")
        check_sw(response.sw)

    def _read_selected(self, fcp_answer: bytes) -> bytes:
        fcp = parse_tlv(fcp_answer)
        size = int.from_bytes(parse_tlv(fcp.get(0x62, fcp.get(0x6F, b""))).get(0x80, b""), "big")
        out = bytearray()
        while len(out) < size:
            want = min(_CHUNK, size - len(out))
            offset = len(out)
            out += self.command(0xB0, offset >> 8, offset & 0xFF, le=want)
        return bytes(out)

    def read_file(self, fid: int) -> bytes:
        """An EF of the CPS personalisation application (the issuer's side, e.g. renewal)."""
        with self.transaction():
            self.select()
            return self._read_selected(
                self.command(0xA4, 0x02, 0x04, fid.to_bytes(2, "big"), le=256)
            )

    def read_path(self, path: bytes) -> bytes:
        """SELECT by path from the MF (``00 A4 09 04``, what OpenSC sends a CPx), READ BINARY."""
        if not path.startswith(MF):
            path = self.layout().app_path + path
        with self.transaction():
            return self._read_selected(self.command(0xA4, 0x09, 0x04, path, le=256))

    def layout(self) -> Pkcs15Layout:
        """Read the card's PKCS#15 description once: EF.DIR → application → ODF → DFs."""
        if self._layout is None:
            self._layout = self._discover()
        return self._layout

    def _discover(self) -> Pkcs15Layout:
        app_path = None
        for tag, record in _fields(self.read_path(EF_DIR)):
            if tag == 0x61 and _first(record, 0x4F) == PKCS15_AID:
                app_path = _first(record, 0x51)
        if not app_path:
            raise WrongCard(f"card in {self.reader!r} lists no CPS PKCS#15 application")
        odf_entries = _fields(self.read_path(app_path + b"\x50\x31"))
        odf = {tag: _path_of(value) for tag, value in odf_entries}
        alg_refs = {CKM_RSA_PKCS: ALG_RSA_PKCS, CKM_SHA256_RSA_PKCS: ALG_RSA_PKCS | ALG_SHA256}
        token_info = _first(self.read_path(app_path + b"\x50\x32"), 0x30) or b""
        for algo in _fields(_first(token_info, 0xA2) or b""):
            ints = [int.from_bytes(v, "big") for t, v in _fields(algo[1]) if t == 0x02]
            if len(ints) >= 3:  # reference, mechanism, ..., algRef
                alg_refs[ints[1]] = ints[-1]
        key_refs: dict[Usage, int] = {}
        key_ids: dict[bytes, Usage] = {}
        for _, key in _fields(self.read_path(odf[0xA0])) if 0xA0 in odf else []:
            parts = [v for t, v in _fields(key) if t == 0x30]
            if len(parts) < 2:
                continue
            key_attrs = _fields(parts[1])
            key_id = next((v for t, v in key_attrs if t == 0x04), b"")
            usage_bits = next((v for t, v in key_attrs if t == 0x03), None)
            ref = next((v for t, v in key_attrs if t == 0x02), None)
            usage: Usage = "sign" if _bit(usage_bits, _NON_REPUDIATION) else "auth"
            if ref is not None and usage not in key_refs:
                key_refs[usage] = int.from_bytes(ref, "big")
                key_ids[key_id] = usage
        # A key the PrKDF does not describe (the software card's P-256 keys: IAS-ECC and
        # OpenSC's driver know RSA only) keeps the IAS-ECC defaults: ID 01/02, local SDO 81/82.
        defaults: tuple[tuple[bytes, Usage], ...] = ((b"\x01", "auth"), (b"\x02", "sign"))
        for default_id, default_usage in defaults:
            if default_usage not in key_refs:
                key_refs[default_usage] = 0x80 | default_id[0]
                key_ids.setdefault(default_id, default_usage)
        cert_paths: dict[Usage, bytes] = {}
        for _, cert in _fields(self.read_path(odf[0xA4])) if 0xA4 in odf else []:
            cert_fields = _fields(cert)
            attrs = [v for t, v in cert_fields if t == 0x30]
            type_attrs = next((v for t, v in cert_fields if t == 0xA1), b"")
            cert_id = _first(attrs[1], 0x04) if len(attrs) > 1 else None
            if cert_id in key_ids and key_ids[cert_id] not in cert_paths:
                cert_paths[key_ids[cert_id]] = _path_of(_first(type_attrs, 0x30) or b"")
        data_paths: dict[str, bytes] = {}
        for _, obj in _fields(self.read_path(odf[0xA7])) if 0xA7 in odf else []:
            data_fields = _fields(obj)
            data_common = next((v for t, v in data_fields if t == 0x30), b"")
            label = (_first(data_common, 0x0C) or b"").decode(errors="replace")
            data_type = next((v for t, v in data_fields if t == 0xA1), b"")
            if data_type:
                data_paths[label] = _path_of(data_type)
        pin_ref, puk_ref = PIN_REF, PUK_REF
        for _, auth in _fields(self.read_path(odf[0xA8])) if 0xA8 in odf else []:
            pin_attrs = _first(next((v for t, v in _fields(auth) if t == 0xA1), b""), 0x30)
            ref = _first(pin_attrs or b"", 0x80)
            if ref:
                if _bit(_first(pin_attrs or b"", 0x03), _UNBLOCKING_PIN):
                    puk_ref = int.from_bytes(ref, "big")
                else:
                    pin_ref = int.from_bytes(ref, "big")
        if set(key_refs) != {"auth", "sign"} or set(cert_paths) != {"auth", "sign"}:
            raise WrongCard(f"card in {self.reader!r}: PKCS#15 lacks a CPS key or certificate")
        return Pkcs15Layout(
            app_path, cert_paths, key_refs, data_paths, alg_refs, pin_ref, puk_ref
        )

    def holder(self) -> HolderData:
        """The CPS data objects CPS_INFO_PS + CPS_NAME_PS; else the certificate subject."""
        if self._holder is None:
            paths = self.layout().data_paths
            try:
                self._holder = HolderData.from_bytes(
                    self.read_path(paths[DATA_INFO]) + self.read_path(paths[DATA_NAME])
                )
            except (KeyError, ValueError):
                from pki.cards.pkcs11_card import holder_from_certificate

                self._holder = holder_from_certificate(self.certificate("auth"))
        return self._holder

    def certificate(self, usage: Usage) -> x509.Certificate:
        cert = self._certs.get(usage)
        if cert is None:
            try:
                cert = x509.load_der_x509_certificate(
                    self.read_path(self.layout().cert_paths[usage])
                )
            except ValueError as exc:
                raise WrongCard(f"{usage} certificate unreadable: {exc}") from exc
            self._certs[usage] = cert
        return cert

    def serial(self) -> str:
        """EF.SN (READ BINARY by SFI 1C): ``5A`` + the card number."""
        with self.transaction():
            self.select_ias()
            response = self.transmit(CommandAPDU(0x00, 0xB0, 0x80 | SFI_SERIAL, 0x00, le=256))
        if response.sw != 0x6282:  # end of file before Le bytes: the whole (short) EF.SN
            check_sw(response.sw)
        data = parse_tlv(response.data)
        if 0x5A not in data:
            raise WrongCard("card serial number (EF.SN) unreadable")
        return data[0x5A].hex()

    def pin_tries_left(self) -> int | None:
        """Retry counter (VERIFY with no body); 3 after a verified PIN, 0 when blocked."""
        layout = self.layout()  # before the transaction: reading it is a few of its own
        with self.transaction():
            self.select_ias()
            response = self.transmit(CommandAPDU(0x00, 0x20, 0x00, layout.pin_ref))
        if response.sw == 0x9000:
            return PIN_MAX_TRIES
        if response.sw & 0xFFF0 == 0x63C0:
            return response.sw & 0x0F
        if response.sw == 0x6983:
            return 0
        check_sw(response.sw)
        return None

    def verify_pin(self, pin: str) -> None:
        check_pin(pin)
        layout = self.layout()
        with self.transaction():
            self.select_ias()
            self.command(0x20, 0x00, layout.pin_ref, pin.encode())

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        check_pin(old_pin)
        check_pin(new_pin)
        layout = self.layout()
        with self.transaction():
            self.select_ias()
            self.command(0x24, 0x00, layout.pin_ref, old_pin.encode() + new_pin.encode())

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        check_puk(puk)
        check_pin(new_pin)
        # IAS-ECC: VERIFY the PUK, then RESET RETRY COUNTER with the new PIN (P1 02).
        layout = self.layout()
        with self.transaction():
            self.select_ias()
            self.command(0x20, 0x00, layout.puk_ref, puk.encode(), kind="puk")
            self.command(0x2C, 0x02, layout.pin_ref, new_pin.encode())

    def _private_key_operation(self, usage: Usage, data: bytes) -> bytes:
        """In a transaction, PIN already verified: MSE SET + the key's IAS-ECC operation.

        Authentication key: MSE SET AT (``A4``) + INTERNAL AUTHENTICATE over the DigestInfo
        (EC: the hash). Signature key (non-repudiation): MSE SET DST (``B6``) + PSO HASH with
        the SHA-256 value computed here (``90``) + PSO COMPUTE DIGITAL SIGNATURE.
        """
        ec_key = isinstance(self.certificate(usage).public_key(), ec.EllipticCurvePublicKey)
        layout = self.layout()
        key_ref = bytes((layout.key_refs[usage],))
        digest = hashlib.sha256(data).digest()
        if usage == "auth":
            algorithm = bytes((layout.alg_refs[CKM_RSA_PKCS],))
            self.command(0x22, 0x41, 0xA4, tlv(0x84, key_ref) + tlv(0x80, algorithm))
            card_input = digest if ec_key else sha256_digest_info(data)
            return self.command(0x88, 0x00, 0x00, card_input, le=256)  # ECDSA: DER already
        algorithm = bytes((layout.alg_refs[CKM_SHA256_RSA_PKCS],))
        self.command(0x22, 0x41, 0xB6, tlv(0x84, key_ref) + tlv(0x80, algorithm))
        self.command(0x2A, 0x90, 0xA0, tlv(0x90, digest))
        return self.command(0x2A, 0x9E, 0x9A, le=256)

    def sign(self, usage: Usage, data: bytes) -> bytes:
        """Sign SHA-256(``data``) with the ``usage`` key (the PIN must have been verified)."""
        self.certificate(usage)  # outside the transaction: it is one of its own
        with self.transaction():
            self.select_ias()
            return self._private_key_operation(usage, data)

    def internal_authenticate(self, challenge: bytes) -> bytes:
        """INTERNAL AUTHENTICATE with the authentication key over SHA-256(challenge)."""
        return self.sign("auth", challenge)

    def authenticate(self, pin: str, challenge: bytes) -> bytes:
        """Select, verify the PIN and sign ``challenge`` with the authentication key, in one
        card transaction (what a login does)."""
        check_pin(pin)
        self.certificate("auth")
        layout = self.layout()
        with self.transaction():
            self.select_ias()
            self.command(0x20, 0x00, layout.pin_ref, pin.encode())
            return self._private_key_operation("auth", challenge)

    # --- personalisation (refused by the card once activated) -----------------------------

    def generate_key_pair(self, usage: Usage, key_type: KeyType) -> PublicKeyTypes:
        with self.transaction():
            self.select()
            spki = self.command(
                0x47, 0x00, KEY_REF[usage], tlv(0x80, bytes((KEY_ALG[key_type],))), le=256
            )
        self._certs.pop(usage, None)
        return load_der_public_key(spki)

    def write_certificate(self, usage: Usage, der: bytes) -> None:
        self._put(FID_CERT[usage], der)
        self._certs.pop(usage, None)

    def write_holder(self, holder: HolderData) -> None:
        self._put(FID_HOLDER, holder.to_bytes())
        self._holder = None

    def _put(self, fid: int, content: bytes) -> None:
        with self.transaction():
            self.select()
            self._chained(0xDA, fid >> 8, fid & 0xFF, content)

    def set_credentials(self, pin: str, puk: str) -> None:
        check_pin(pin)
        check_puk(puk)
        with self.transaction():
            self.select()
            self.command(0x24, 0x01, PIN_REF, pin.encode())
            self.command(0x24, 0x01, PUK_REF, puk.encode())

    def finish_personalisation(self) -> None:
        """ACTIVATE: the card refuses every personalisation command from now on."""
        with self.transaction():
            self.select()
            self.command(0x44, 0x00, 0x00)


class CardWatcher:
    """Insert/remove notifications through pyscard's CardMonitor (observer pattern)."""

    def __init__(self, on_event: Callable[[str, str, bytes], None]) -> None:
        from smartcard.CardMonitoring import (
            CardMonitor,
            CardObserver,
        )

        callback = on_event

        class _Observer(CardObserver):  # type: ignore[misc]
            def update(self, observable: Any, handlers: tuple[list[Any], list[Any]]) -> None:
                added, removed = handlers
                for card in added:
                    callback("inserted", str(card.reader), bytes(card.atr))
                for card in removed:
                    callback("removed", str(card.reader), bytes(card.atr))

        self._monitor = CardMonitor()
        self._observer = _Observer()
        self._monitor.addObserver(self._observer)

    def stop(self) -> None:
        self._monitor.deleteObserver(self._observer)
