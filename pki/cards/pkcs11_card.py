"""PKCS#11 backend: a CPS "card" reached through any PKCS#11 module.

Two uses: a SoftHSM token standing for a card (personalised by :class:`Pkcs11Personaliser`,
CPS labels and data objects), and OpenSC's ``opensc-pkcs11.so`` reading a card in a reader
(PIV labels). Objects are found by CPS label first, then PIV label, then CKA_ID (01 auth,
02 sign: the IDs both OpenSC's PIV view and our personaliser use).

The PUK of a token-card is its SO PIN: unblocking is ``C_Login(SO, puk)`` + ``C_InitPIN``.
One lock serialises every call: SoftHSM crashes when threads share a python-pkcs11 session.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from pki import pkcs11lib
from pki.cards.card import (
    PIN_MAX_TRIES,
    USAGES,
    HolderData,
    Usage,
    check_pin,
    check_puk,
    sha256_digest_info,
)
from pki.cards.card import KeyType as CardKeyType
from pki.cards.errors import (
    CardError,
    NoCard,
    PinIncorrect,
    PinLocked,
    PukIncorrect,
    PukLocked,
    SecurityStatusNotSatisfied,
    WrongCard,
)
from pki.cards.opensc import OPENSC_UNBLOCK_CONF

CPS_LABELS: dict[Usage, str] = {
    "auth": "Certificat d'Authentification CPS",
    "sign": "Certificat de Signature CPS",
}
PIV_LABELS: dict[Usage, str] = {
    "auth": "Certificate for PIV Authentication",
    "sign": "Certificate for Digital Signature",
}
KEY_IDS: dict[Usage, bytes] = {"auth": b"\x01", "sign": b"\x02"}
DATA_ID_CARD, DATA_NAME, DATA_INFO = "CPS_ID_CARD", "CPS_NAME_PS", "CPS_INFO_PS"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

T = TypeVar("T")


class Pkcs11Module:
    """One loaded PKCS#11 library. For SoftHSM, set ``SOFTHSM2_CONF`` before creating it."""

    def __init__(self, path: str = SOFTHSM_MODULE) -> None:
        if not os.path.exists(path):
            raise CardError(f"PKCS#11 module not found: {path}")
        self.path = path
        self.lib = pkcs11lib.load(path)
        self.lock = threading.RLock()

    def token(self, label: str) -> pkcs11.Token:
        with self.lock:
            try:
                return self.lib.get_token(token_label=label)
            except p11e.NoSuchToken:
                pass
            # A token created since the library was initialised (a card just personalised,
            # a token just set up) is only listed after a re-initialisation.
            self.lib = pkcs11lib.refresh(self.path)
            try:
                return self.lib.get_token(token_label=label)
            except p11e.NoSuchToken:
                raise NoCard(f"no token labelled {label!r} in {self.path}") from None
            except p11e.MultipleTokensReturned:
                raise CardError(f"several tokens labelled {label!r}") from None

    def finalize(self) -> None:
        with self.lock:
            if self.lib.initialized:
                self.lib.finalize()


def _retries_from_flags(flags: int) -> int | None:
    """PIN tries left as the token flags tell them (PKCS#11 2.40 §5.3, CK_TOKEN_INFO).

    ``USER_PIN_LOCKED`` → 0; ``USER_PIN_FINAL_TRY`` → 1; ``USER_PIN_COUNT_LOW`` (a wrong PIN
    since the last good one) → one fewer than a CPS card's :data:`PIN_MAX_TRIES`, exact for a
    3-try PIN; none of them → ``None`` (all tries left, or a module that never says).
    """
    if flags & TokenFlag.USER_PIN_LOCKED:
        return 0
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return 1
    if flags & TokenFlag.USER_PIN_COUNT_LOW:
        return PIN_MAX_TRIES - 1
    return None


# Modules known to keep no PIN retry counter of their own, so their flags say nothing: SoftHSM
# v2 sets USER_PIN_COUNT_LOW after a wrong PIN but never FINAL_TRY or LOCKED: it never locks.
SILENT_MODULES = ("SoftHSM",)


def _ec_raw_to_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def _public_key(key: Any) -> PublicKeyTypes:
    if key.key_type == KeyType.RSA:
        n = int.from_bytes(key[Attribute.MODULUS], "big")
        e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    return load_der_public_key(encode_ec_public_key(key))


class Pkcs11Card:
    """A CPS card behind a PKCS#11 token (implements :class:`pki.cards.card.Card`)."""

    def __init__(self, module: Pkcs11Module, token_label: str) -> None:
        self.module = module
        self.token_label = token_label
        self._token = module.token(token_label)
        with module.lock:
            self._session = self._token.open()
        self._logged_in = False
        self._certs: dict[Usage, x509.Certificate] = {}

    @classmethod
    def open(cls, module_path: str, token_label: str) -> Pkcs11Card:
        return cls(Pkcs11Module(module_path), token_label)

    def close(self) -> None:
        with self.module.lock:
            self._session.close()

    def __enter__(self) -> Pkcs11Card:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        with self.module.lock:
            try:
                return fn()
            except (p11e.TokenNotPresent, p11e.DeviceRemoved, p11e.SessionHandleInvalid) as exc:
                raise NoCard(f"token {self.token_label!r} is gone: {exc!r}") from exc

    def _token_flags(self) -> int:
        return int(self.module.token(self.token_label).flags)

    # --- objects ---------------------------------------------------------------------------

    def _find_one(self, object_class: ObjectClass, usage: Usage) -> Any:
        for label in (CPS_LABELS[usage], PIV_LABELS[usage]):
            found = list(
                self._session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label})
            )
            if found:
                return found[0]
        found = list(
            self._session.get_objects({Attribute.CLASS: object_class, Attribute.ID: KEY_IDS[usage]})
        )
        if not found:
            raise WrongCard(f"token {self.token_label!r} holds no {usage} certificate")
        return found[0]

    def certificate(self, usage: Usage) -> x509.Certificate:
        cert = self._certs.get(usage)
        if cert is None:
            obj = self._call(lambda: self._find_one(ObjectClass.CERTIFICATE, usage))
            cert = x509.load_der_x509_certificate(bytes(obj[Attribute.VALUE]))
            self._certs[usage] = cert
        return cert

    def _data_object(self, label: str) -> bytes | None:
        def find() -> bytes | None:
            found = list(
                self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}
                )
            )
            return bytes(found[0][Attribute.VALUE]) if found else None

        return self._call(find)

    def holder(self) -> HolderData:
        info, name = self._data_object(DATA_INFO), self._data_object(DATA_NAME)
        if info is not None and name is not None:
            return HolderData.from_bytes(info + name)
        return holder_from_certificate(self.certificate("auth"))

    def serial(self) -> str:
        value = self._data_object(DATA_ID_CARD)
        return value.decode() if value is not None else str(self._token.serial.hex())

    # --- PIN -------------------------------------------------------------------------------

    @property
    def reports_pin_tries(self) -> bool:
        """Whether the module keeps (and flags) a PIN retry counter: not SoftHSM."""
        maker = str(self._token.manufacturer_id)
        return not any(name.lower() in maker.lower() for name in SILENT_MODULES)

    def _tries_left(self) -> int | None:
        if not self.reports_pin_tries:
            return None
        left = _retries_from_flags(self._token_flags())
        return PIN_MAX_TRIES if left is None else left

    def pin_tries_left(self) -> int | None:
        """From the token flags; ``None`` when the module cannot tell (:meth:`pin_tries_note`)."""
        return self._call(self._tries_left)

    def pin_tries_note(self) -> str | None:
        """Why :meth:`pin_tries_left` is ``None``, for ``cps-login info``."""
        if self.reports_pin_tries:
            return None
        maker = str(self._token.manufacturer_id).strip()
        return (
            f"not reported by the PKCS#11 module ({maker}): the module, not this middleware, "
            "enforces PIN tries, and this one keeps no retry counter"
        )

    def verify_pin(self, pin: str) -> None:
        check_pin(pin)

        def login() -> None:
            try:
                session = self._token.open(user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                return  # PKCS#11 login is per application, not per session
            except p11e.PinIncorrect:
                raise PinIncorrect(self._tries_left()) from None
            except p11e.PinLocked:
                raise PinLocked() from None
            self._session.close()
            self._session = session

        self._call(login)
        self._logged_in = True

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        check_pin(old_pin)
        check_pin(new_pin)

        def change() -> None:
            with self._token.open(rw=True) as session:
                try:
                    session.set_pin(old_pin, new_pin)
                except p11e.PinIncorrect:
                    raise PinIncorrect(self._tries_left()) from None
                except p11e.PinLocked:
                    raise PinLocked() from None

        self._call(change)

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        check_puk(puk)
        check_pin(new_pin)

        def unblock() -> None:
            # PKCS#11 refuses an SO login while read-only sessions exist, and python-pkcs11
            # leaks the session of a failed C_Login: only C_Finalize clears them all. Unblocking
            # is rare; other handles on this module must reopen afterwards.
            self.module.lib.reinitialize()
            self._token = self.module.token(self.token_label)
            try:
                if self.is_opensc:
                    opensc_unblock()
                else:
                    so_unblock()
            finally:
                self._session = self._token.open()
                self._logged_in = False

        def so_unblock() -> None:
            try:
                session = self._token.open(rw=True, so_pin=puk)
            except p11e.PinIncorrect:
                flags = self._token_flags()
                left = (
                    0
                    if flags & TokenFlag.SO_PIN_LOCKED
                    else 1
                    if flags & TokenFlag.SO_PIN_FINAL_TRY
                    else None
                )
                raise PukIncorrect(left) from None
            except p11e.PinLocked:
                raise PukLocked() from None
            except p11e.UserAlreadyLoggedIn:
                raise CardError(
                    "log the user out before unblocking (PKCS#11 forbids SO login)"
                ) from None
            with session:
                session.init_pin(new_pin)

        def opensc_unblock() -> None:
            # OpenSC (a card with a PUK, no SO PIN): C_SetPIN(PUK, new PIN) in a session not
            # logged in, which OpenSC turns into VERIFY PUK + RESET RETRY COUNTER only with
            # user_pin_unblock_style = set_pin_in_unlogged_session (opensc-unblock.conf). Its
            # default takes the call for a PIN change and refuses the 8-digit "old PIN" before
            # the card sees it (CKR_PIN_LEN_RANGE): no try is spent either way.
            with self._token.open(rw=True) as session:
                try:
                    session.set_pin(puk, new_pin)
                except p11e.PinLenRange:
                    raise CardError(
                        "OpenSC does not unblock through PKCS#11 by default: run with "
                        f"OPENSC_CONF={OPENSC_UNBLOCK_CONF} "
                        "(user_pin_unblock_style = set_pin_in_unlogged_session)"
                    ) from None
                except p11e.PinIncorrect:
                    raise PukIncorrect(None) from None
                except p11e.PinLocked:
                    raise PukLocked() from None

        self._call(unblock)

    @property
    def is_opensc(self) -> bool:
        return "opensc" in os.path.basename(self.module.path).lower()

    # --- signing ---------------------------------------------------------------------------

    def sign(self, usage: Usage, data: bytes) -> bytes:
        """SHA-256 on the host; the token signs DigestInfo (RSA_PKCS) or the hash (ECDSA)."""

        def do_sign() -> bytes:
            key = self._find_one(ObjectClass.PRIVATE_KEY, usage)
            try:
                if key.key_type == KeyType.RSA:
                    return bytes(key.sign(sha256_digest_info(data), mechanism=Mechanism.RSA_PKCS))
                raw = bytes(key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
                return _ec_raw_to_der(raw)
            except p11e.UserNotLoggedIn:
                raise SecurityStatusNotSatisfied("verify the PIN first") from None

        if not self._logged_in:
            raise SecurityStatusNotSatisfied("verify the PIN first")
        return self._call(do_sign)


def holder_from_certificate(cert: x509.Certificate) -> HolderData:
    """Holder from the certificate subject (OpenSC's PIV view carries no CPS data objects)."""
    from cryptography.x509.oid import NameOID

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        if not values:
            raise WrongCard(f"certificate subject lacks {oid._name}")
        return str(values[0].value)

    cn = attr(NameOID.COMMON_NAME)
    if not (len(cn) == 12 and cn.startswith("8")):
        raise WrongCard(f"certificate CN {cn!r} is not 8+RPPS")
    profession = cert.extensions
    code = 0
    for ext in profession:
        if ext.oid.dotted_string == "1.2.250.1.71.1.2.7" and isinstance(
            ext.value, x509.UnrecognizedExtension
        ):
            code = int.from_bytes(ext.value.value[2:], "big")  # DER INTEGER, short form
    return HolderData(
        rpps=cn[1:],
        given_name=attr(NameOID.GIVEN_NAME),
        surname=attr(NameOID.SURNAME),
        profession_code=code,
        profession_label=attr(NameOID.TITLE)
        if cert.subject.get_attributes_for_oid(NameOID.TITLE)
        else "",
    )


def generate_card_key(session: Any, key_id: bytes, label: str, key_type: CardKeyType
                      ) -> PublicKeyTypes:
    """A signing key pair generated in the token (sensitive, never extractable)."""
    private = {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
    }
    public = {Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.TOKEN: True}
    if key_type == "rsa2048":
        pub, _ = session.generate_keypair(
            KeyType.RSA, 2048, id=key_id, label=label, store=True,
            public_template=public, private_template=private,
        )
    else:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        pub, _ = params.generate_keypair(
            id=key_id, label=label, store=True, public_template=public, private_template=private,
        )
    return _public_key(pub)


def certificate_object(label: str, key_id: bytes, der: bytes) -> dict[Attribute, Any]:
    """The token object template of an X.509 certificate (public, on the token)."""
    cert = x509.load_der_x509_certificate(der)
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.ISSUER: cert.issuer.public_bytes(),
        Attribute.VALUE: der,
    }


class Pkcs11Personaliser:
    """Personalise a blank token as a CPS card (implements ``PersonalisableCard``).

    The token was initialised with ``so_pin`` and a transport user PIN; keys are generated in
    the token (sensitive, never extractable). ``set_credentials`` turns the transport PIN into
    the holder's PIN and the SO PIN into the PUK.
    """

    def __init__(
        self, module: Pkcs11Module, token_label: str, so_pin: str, transport_pin: str
    ) -> None:
        self.module = module
        self.token_label = token_label
        self.so_pin = so_pin
        self.transport_pin = transport_pin
        self._token = module.token(token_label)

    @contextmanager
    def _user(self) -> Iterator[Any]:
        with self.module.lock:
            try:
                session = self._token.open(rw=True, user_pin=self.transport_pin)
            except p11e.UserAlreadyLoggedIn:
                session = self._token.open(rw=True)
            with session:
                yield session

    def generate_key_pair(self, usage: Usage, key_type: CardKeyType) -> PublicKeyTypes:
        with self._user() as session:
            for old in session.get_objects({Attribute.ID: KEY_IDS[usage]}):
                old.destroy()
            return generate_card_key(
                session, KEY_IDS[usage], CPS_LABELS[usage].replace("Certificat", "Cle"), key_type
            )

    def write_certificate(self, usage: Usage, der: bytes) -> None:
        with self._user() as session:
            session.create_object(certificate_object(CPS_LABELS[usage], KEY_IDS[usage], der))

    def write_holder(self, holder: HolderData) -> None:
        values = {
            DATA_ID_CARD: self._token.serial.hex().encode()
            if isinstance(self._token.serial, bytes)
            else b"",
            DATA_NAME: holder.name_tlv(),
            DATA_INFO: holder.info_tlv(),
        }
        with self._user() as session:
            for label, value in values.items():
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: False,
                        Attribute.LABEL: label,
                        Attribute.APPLICATION: "CPS",
                        Attribute.VALUE: value,
                    }
                )

    def set_credentials(self, pin: str, puk: str) -> None:
        check_pin(pin)
        check_puk(puk)
        with self._user() as session:
            session.set_pin(self.transport_pin, pin)
        with self.module.lock:
            self.module.lib.reinitialize()  # drop the transport login before the SO logs in
            self._token = self.module.token(self.token_label)
            with self._token.open(rw=True, so_pin=self.so_pin) as session:
                session.set_pin(self.so_pin, puk)

    def finish_personalisation(self) -> None:
        """Nothing to lock on a token: the SO PIN is now the PUK, known only to the holder."""
        with self.module.lock:
            self.module.lib.reinitialize()


__all__ = [
    "CPS_LABELS",
    "KEY_IDS",
    "PIV_LABELS",
    "USAGES",
    "Pkcs11Card",
    "Pkcs11Module",
    "Pkcs11Personaliser",
    "certificate_object",
    "generate_card_key",
    "holder_from_certificate",
]
