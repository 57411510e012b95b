"""The PKCS#11 key store and the one signing seam.

Every CA key (roots, issuing CAs, OCSP responders, the token-signing key) is generated inside the
token as sensitive and non-extractable. ``HsmRsaKey`` / ``HsmEcKey`` subclass cryptography's
private-key interfaces so that cryptography's certificate, CRL and OCSP builders sign through
PKCS#11: one class signs everything, and no private key ever exists outside the token.

python-pkcs11 sessions are not safe for concurrent use from several threads (SoftHSM crashes), so
each ``Hsm`` serialises calls on its session with a lock; throughput scales with processes, each
of which opens its own session (see ``pki.ca.batch``).

The lock has two levels (issue 13): a thread inside ``background()`` (the signer's live OCSP
answers to anonymous clients) waits while any other caller (status-change pre-signing, CRLs,
issuance) waits, so a flood of live requests cannot queue ahead of a revocation's records.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from pki import pkcs11lib
from pki.errors import HsmError, HsmKeyNotFound, HsmPinIncorrect
from pki.keytypes import KeyType as KeyType

# DER DigestInfo prefixes (RFC 8017 §9.2 note 1): the host hashes, the token pads and signs.
_DIGEST_INFO_PREFIX = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
}

_P256_PARAMS = encode_named_curve_parameters("1.2.840.10045.3.1.7")
# What a session copy of a key must share with the key (besides being sensitive, not
# extractable and not a token object): it may sign, and do nothing else.
_COPY_MUST_KEEP = (Attribute.KEY_TYPE, Attribute.SIGN, Attribute.DECRYPT, Attribute.UNWRAP,
                   Attribute.DERIVE, Attribute.PRIVATE)
log = logging.getLogger(__name__)

# A token stays logged in for the whole process once any session logged in (PKCS#11 login state
# is per application), so a later open with another PIN must be checked against the first one.
_LOGGED_IN: dict[tuple[str, str], bytes] = {}

# Labels of the tokens this process holds an open session on (label -> open Hsm count), so that
# a public role can refuse to start in a process that could reach a CA key (docs/roles.md).
_OPEN_TOKENS: dict[str, int] = {}
_OPEN_LOCK = threading.Lock()
_PRIORITY = threading.local()      # .background: this thread's HSM calls yield to the others


@contextmanager
def background() -> Iterator[None]:
    """HSM calls made by this thread inside the block go after every other waiting caller."""
    before = getattr(_PRIORITY, "background", False)
    _PRIORITY.background = True
    try:
        yield
    finally:
        _PRIORITY.background = before


class PriorityLock:
    """A lock whose background holders wait for every waiting foreground one (then FIFO-ish:
    whoever the condition wakes). Not re-entrant, like the lock it replaces."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting = 0           # foreground callers waiting

    @contextmanager
    def hold(self, background: bool = False) -> Iterator[None]:
        with self._cond:
            if background:
                while self._held or self._waiting:
                    self._cond.wait()
            else:
                self._waiting += 1
                try:
                    while self._held:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


def open_tokens() -> list[str]:
    """Labels of the tokens on which this process has an open ``Hsm`` session."""
    with _OPEN_LOCK:
        return sorted(label for label, count in _OPEN_TOKENS.items() if count > 0)


def _load_lib(module: str, softhsm_conf: Path | None) -> Any:
    if softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(softhsm_conf)
    try:
        return pkcs11lib.load(module)
    except (RuntimeError, OSError) as exc:
        raise HsmError(f"cannot load PKCS#11 module {module}: {exc}") from None


def _hash_name(algorithm: hashes.HashAlgorithm) -> str:
    name = algorithm.name.lower()
    if name not in _DIGEST_INFO_PREFIX:
        raise ValueError(f"unsupported hash for HSM signing: {algorithm.name}")
    return name


HashChoice = hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo
Data = bytes | bytearray | memoryview


def _digest(data: Data, algorithm: HashChoice) -> tuple[str, bytes]:
    if isinstance(algorithm, utils.Prehashed):
        return _hash_name(algorithm._algorithm), bytes(data)
    if not isinstance(algorithm, hashes.HashAlgorithm):
        raise ValueError("the HSM signing seam always signs a DigestInfo")
    name = _hash_name(algorithm)
    return name, hashlib.new(name, data).digest()


@contextmanager
def _softhsm_open_lock(softhsm_conf: Path | None) -> Iterator[None]:
    """Serialise token opening across processes sharing one SoftHSM token directory.

    SoftHSM reads the token files at C_Initialize/C_Login; two processes doing so at the same
    instant (parallel bench workers, ``serve`` and ``cps-admin``) intermittently see "no token"
    or crash. Signing afterwards runs concurrently. Real HSMs (no SoftHSM conf) take no lock.
    """
    if softhsm_conf is None:
        yield
        return
    with file_lock(softhsm_conf.parent / ".softhsm-open.lock"):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created 0600) for the block: across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)     # releases the lock


class Hsm:
    """An open, logged-in session on one token; the only holder of CA signing handles."""

    def __init__(self, module: str, token_label: str, user_pin: str,
                 softhsm_conf: Path | None = None) -> None:
        self.module = module
        self.token_label = token_label
        with _softhsm_open_lock(softhsm_conf):
            lib = _load_lib(module, softhsm_conf)
            try:
                token = lib.get_token(token_label=token_label)
            except pkcs11.NoSuchToken:
                raise HsmError(f"no token labelled {token_label!r} in {module}") from None
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot list tokens of {module}: {type(exc).__name__}") from None
            pin_hash = hashlib.sha256(user_pin.encode()).digest()
            try:
                self._session = token.open(rw=True, user_pin=user_pin)
                _LOGGED_IN[(module, token_label)] = pin_hash
            except pkcs11.PinIncorrect:
                raise HsmPinIncorrect(f"wrong user PIN for HSM token {token_label!r}") from None
            except pkcs11.PinLocked:
                raise HsmPinIncorrect(f"user PIN of HSM token {token_label!r} is locked") from None
            except pkcs11.UserAlreadyLoggedIn:
                if _LOGGED_IN.get((module, token_label)) != pin_hash:
                    raise HsmPinIncorrect(f"wrong user PIN for HSM token {token_label!r}") from None
                self._session = token.open(rw=True)
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot log in to token {token_label!r}: "
                               f"{type(exc).__name__}") from None
        self._lock = PriorityLock()
        self._closed = False
        with _OPEN_LOCK:
            _OPEN_TOKENS[token_label] = _OPEN_TOKENS.get(token_label, 0) + 1
        self._keys: dict[str, HsmRsaKey | HsmEcKey] = {}
        self.sign_count = 0

    # --- key management ----------------------------------------------------------------
    def generate_key(self, label: str, key_type: KeyType) -> HsmRsaKey | HsmEcKey:
        """Generate a key pair inside the token: private half sensitive, non-extractable and
        sign-only: CKA_DECRYPT, CKA_UNWRAP and CKA_DERIVE false, so whoever holds the session
        can make the token do nothing with a CA or responder key but sign."""
        key_id = hashlib.sha256(label.encode()).digest()[:16]
        private_template = {
            Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: False,
            Attribute.UNWRAP: False, Attribute.DERIVE: False, Attribute.ID: key_id,
            Attribute.LABEL: label,
        }
        public_template = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ID: key_id,
                           Attribute.LABEL: label}
        with self._guard("generate key"):
            # Under the session lock like every other call: an unguarded object search beside
            # another thread's C_Sign on the same session crashes SoftHSM.
            if self._find_private(label) is not None:
                raise HsmError(f"HSM already holds a key labelled {label!r}")
            if key_type.is_rsa:
                self._session.generate_keypair(
                    P11KeyType.RSA, key_type.rsa_bits, store=True,
                    public_template=public_template, private_template=private_template)
            else:
                params = self._session.create_domain_parameters(
                    P11KeyType.EC, {Attribute.EC_PARAMS: _P256_PARAMS}, local=True)
                params.generate_keypair(store=True, public_template=public_template,
                                        private_template=private_template)
        return self.key(label)

    def key(self, label: str, *, session_copy: bool = False) -> HsmRsaKey | HsmEcKey:
        """The signing key labelled ``label`` (cached: one lookup per process).

        ``session_copy``: sign with a copy of the key made inside the token for this session
        (``C_CopyObject`` with ``CKA_TOKEN`` false). The copy never leaves the token either:
        it keeps the original's attributes (sensitive, not extractable, sign only: checked,
        else the original is used) and is gone when the session closes. For a key signing on
        every request: a file-backed token (SoftHSM) re-reads a token object's file before
        each use, ~17 system calls a signature, none for a session object."""
        cache_key = label + "\0copy" if session_copy else label
        cached = self._keys.get(cache_key)
        if cached is not None:
            return cached
        with self._guard("find key"):
            private = self._find_private(label)
            if private is None:
                raise HsmKeyNotFound(f"no private key labelled {label!r} in token "
                                     f"{self.token_label!r}")
            if session_copy:
                private = self._session_copy(private)
            public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            if private.key_type == P11KeyType.RSA:
                pub = serialization.load_der_public_key(encode_rsa_public_key(public))
                assert isinstance(pub, rsa.RSAPublicKey)
                key: HsmRsaKey | HsmEcKey = HsmRsaKey(self, label, private, pub)
            elif private.key_type == P11KeyType.EC:
                pub_ec = serialization.load_der_public_key(encode_ec_public_key(public))
                assert isinstance(pub_ec, ec.EllipticCurvePublicKey)
                key = HsmEcKey(self, label, private, pub_ec)
            else:
                raise HsmError(f"key {label!r} has unsupported type {private.key_type}")
        self._keys[cache_key] = key
        return key

    def _session_copy(self, private: Any) -> Any:
        """``private`` copied into a session object, or ``private`` itself when the token
        refuses the copy or the copy would be weaker than the original (under the guard)."""
        try:
            copy = private.copy({Attribute.TOKEN: False})
        except pkcs11.PKCS11Error as exc:
            log.info("HSM token %r: no session copy of key (%s), signing with the token "
                     "object", self.token_label, type(exc).__name__)
            return private
        try:
            same = all(copy[attr] == private[attr] for attr in _COPY_MUST_KEEP)
        except pkcs11.PKCS11Error:
            same = False
        if same and copy[Attribute.SENSITIVE] and not copy[Attribute.EXTRACTABLE] \
                and not copy[Attribute.TOKEN]:
            return copy
        with suppress(pkcs11.PKCS11Error):
            copy.destroy()
        log.warning("HSM token %r: the session copy of a key differed from it; signing with "
                    "the token object", self.token_label)
        return private

    def labels(self) -> list[str]:
        with self._guard("list keys"):
            return sorted({str(obj[Attribute.LABEL]) for obj in self._session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: True})})

    def has_key(self, label: str) -> bool:
        with self._guard("find key"):
            return self._find_private(label) is not None

    def destroy_key(self, label: str) -> None:
        with self._guard("destroy key"):
            # the token's objects and this session's copies of them
            for obj in list(self._session.get_objects({Attribute.LABEL: label})):
                obj.destroy()
        self._keys.pop(label, None)
        self._keys.pop(label + "\0copy", None)

    def _find_private(self, label: str) -> Any:
        objs = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                               Attribute.LABEL: label, Attribute.TOKEN: True}))
        return objs[0] if objs else None

    # --- signing -----------------------------------------------------------------------
    def raw_sign(self, private: Any, data: bytes, mechanism: Mechanism) -> bytes:
        with self._guard("sign"):
            signature: bytes = private.sign(data, mechanism=mechanism)
            self.sign_count += 1
            return signature

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with self._lock.hold(getattr(_PRIORITY, "background", False)):
            if self._closed:
                raise HsmError(f"HSM {what} failed: the session is closed")
            try:
                yield
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"HSM {what} failed: {type(exc).__name__}") from None

    def close(self) -> None:
        with self._lock.hold():
            if self._closed:
                return
            self._closed = True
            with _OPEN_LOCK:
                _OPEN_TOKENS[self.token_label] -= 1
            with suppress(pkcs11.PKCS11Error):
                self._session.close()


def _no_export(*_: Any) -> NoReturn:
    raise HsmError("HSM private keys cannot be exported")


class HsmRsaKey(rsa.RSAPrivateKey):
    """An RSA key in the token, usable wherever cryptography takes an RSA private key."""

    def __init__(self, hsm: Hsm, label: str, handle: Any, public: rsa.RSAPublicKey) -> None:
        self.hsm = hsm
        self.label = label
        self._handle = handle
        self._public = public

    def sign(self, data: Data, padding: padding.AsymmetricPadding,
             algorithm: HashChoice) -> bytes:
        if not isinstance(padding, _PKCS1v15):
            raise ValueError("the HSM signing seam signs with PKCS#1 v1.5 only")
        name, digest = _digest(data, algorithm)
        return self.hsm.raw_sign(self._handle, _DIGEST_INFO_PREFIX[name] + digest,
                                 Mechanism.RSA_PKCS)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise HsmError("CA keys are for signing only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        _no_export()

    def __copy__(self) -> HsmRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmRsaKey:
        return self


class HsmEcKey(ec.EllipticCurvePrivateKey):
    """A P-256 key in the token (no CKM_ECDSA_SHA256 there: hash here, sign with CKM_ECDSA)."""

    def __init__(self, hsm: Hsm, label: str, handle: Any,
                 public: ec.EllipticCurvePublicKey) -> None:
        self.hsm = hsm
        self.label = label
        self._handle = handle
        self._public = public

    def sign(self, data: Data, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("only ECDSA is supported")
        _, digest = _digest(data, signature_algorithm.algorithm)
        raw = self.hsm.raw_sign(self._handle, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                          int.from_bytes(raw[half:], "big"))

    def sign_raw(self, data: bytes) -> bytes:
        """ECDSA with SHA-256 over ``data``: the token's own r || s (each as long as the
        curve's order), as JWS wants it (RFC 7518 §3.4) — no DER to build and take apart."""
        _, digest = _digest(data, hashes.SHA256())
        return self.hsm.raw_sign(self._handle, digest, Mechanism.ECDSA)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise HsmError("CA keys are for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export()

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        _no_export()

    def __copy__(self) -> HsmEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmEcKey:
        return self


_PKCS1v15 = padding.PKCS1v15

SigningKey = HsmRsaKey | HsmEcKey

