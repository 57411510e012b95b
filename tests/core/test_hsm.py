"""The PKCS#11 signing seam against a real SoftHSM token."""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, ObjectClass

from pki.ca.authority import Authority
from pki.config import Config
from pki.errors import HsmError, HsmKeyNotFound, HsmPinIncorrect
from pki.hsm import Hsm, HsmEcKey, HsmRsaKey, KeyType
from pki.signer import TbsSigner


def _open(home: Path) -> Hsm:
    c = Config.load(home)
    return Hsm(c.hsm.module, c.hsm.token_label, c.read_secret(c.hsm.user_pin_file),
               c.softhsm_conf_path())


@pytest.mark.parametrize("key_type", list(KeyType))
def test_keys_sign_and_verify(home: Path, key_type: KeyType) -> None:
    hsm = _open(home)
    key = hsm.generate_key(f"test:{key_type.value}", key_type)
    data = b"to be signed"
    if isinstance(key, HsmRsaKey):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        assert key.key_size == key_type.rsa_bits
        # Pre-hashed input goes through the same DigestInfo path.
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        sig2 = key.sign(digest.finalize(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        key.public_key().verify(sig2, data, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(ValueError):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            key.sign(data, pss, hashes.SHA256())
    else:
        assert isinstance(key, HsmEcKey)
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(HsmError):
        key.private_bytes(None, None, None)  # type: ignore[arg-type]
    with pytest.raises(HsmError, match="already holds"):
        hsm.generate_key(f"test:{key_type.value}", key_type)


def _open_root(home: Path) -> Hsm:
    c = Config.load(home)
    return Hsm(c.hsm.module, c.hsm.root_token_label, c.read_secret(c.hsm.root_pin_file),
               c.softhsm_conf_path())


def test_ca_keys_are_sensitive_sign_only_and_never_extractable(home: Path) -> None:
    hsm, root_hsm = _open(home), _open_root(home)
    auth = Authority.open(home)
    roots = {ca.key_label for ca in auth.cas() if ca.role == "ROOT"}
    issuing = {ca.key_label for ca in auth.cas() if ca.role != "ROOT"}
    # Each key in its own token: the roots in CPS-ROOT, the issuing CAs in CPS-CA.
    assert set(root_hsm.labels()) == roots
    assert issuing <= set(hsm.labels()) and not roots & set(hsm.labels())
    hsm.generate_key("test:responder", KeyType.P256)     # as pki.ca.responder makes them
    for token in (hsm, root_hsm):
        for obj in token._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
            assert obj[Attribute.SENSITIVE] is True
            assert obj[Attribute.EXTRACTABLE] is False
            assert obj[Attribute.NEVER_EXTRACTABLE] is True
            assert obj[Attribute.TOKEN] is True
            assert obj[Attribute.SIGN] is True
            # Sign only: the token refuses to decrypt, unwrap or derive with a CA key.
            assert obj[Attribute.DECRYPT] is False
            assert obj[Attribute.UNWRAP] is False
            assert obj[Attribute.DERIVE] is False
    root_hsm.close()
    # And no private key material anywhere in the home's plain files.
    for path in home.rglob("*"):
        if path.is_file() and "tokens" not in path.parts:
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_wrong_pin_is_refused(home: Path, tmp_path: Path) -> None:
    c = Config.load(home)
    # A fresh process would see CKR_PIN_INCORRECT; in this process the token may already be
    # logged in, and the seam still refuses a PIN that differs from the one that logged in.
    _open(home)
    with pytest.raises(HsmPinIncorrect):
        Hsm(c.hsm.module, c.hsm.token_label, "not-the-pin", c.softhsm_conf_path())


def test_unknown_token_and_key(home: Path) -> None:
    c = Config.load(home)
    with pytest.raises(HsmError, match="no token"):
        Hsm(c.hsm.module, "NO-SUCH-TOKEN", "x", c.softhsm_conf_path())
    with pytest.raises(HsmKeyNotFound):
        _open(home).key("nope")
    with pytest.raises(HsmError, match="cannot load"):
        Hsm("/nonexistent/module.so", "x", "x", None)


def test_tbs_signer_matches_certificate_key(authority: Authority) -> None:
    ca = authority.issuing_ca("PERSONNES")
    signer = authority.signer(ca.slug)
    assert isinstance(signer, TbsSigner)
    tbs = b"\x30\x03\x02\x01\x01"
    sig = signer.sign(tbs)
    pub = ca.certificate.public_key()
    assert isinstance(ca.certificate, x509.Certificate)
    pub.verify(sig, tbs, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg,union-attr]
    fake = signer.throwaway_sign(tbs)
    assert len(fake) == len(sig)
    with pytest.raises(InvalidSignature):
        pub.verify(fake, tbs, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg,union-attr]


def test_pkcs11_exceptions_do_not_escape(home: Path) -> None:
    hsm = _open(home)
    hsm.close()
    with pytest.raises(HsmError):
        hsm.labels()
    assert issubclass(HsmError, Exception) and not issubclass(HsmError, pkcs11.PKCS11Error)


def test_open_tokens_lists_the_tokens_this_process_holds(home: Path) -> None:
    import gc

    from pki.hsm import open_tokens
    gc.collect()                    # sessions other tests dropped without closing
    before = set(open_tokens())     # (this process may still hold sessions of earlier tests)
    hsm, root_hsm, second_root = _open(home), _open_root(home), _open_root(home)
    assert {"CPS-CA", "CPS-ROOT"} <= set(open_tokens())
    root_hsm.close()
    root_hsm.close()                # closing twice counts once: the second session still holds
    assert "CPS-ROOT" in open_tokens() and "CPS-CA" in open_tokens()
    second_root.close()
    assert ("CPS-ROOT" in open_tokens()) == ("CPS-ROOT" in before)
    with pytest.raises(HsmError, match="closed"):
        root_hsm.labels()
    hsm.close()
    assert set(open_tokens()) == before


@pytest.mark.parametrize("key_type", [KeyType.P256, KeyType.RSA2048])
def test_session_copy_signs_as_the_key_and_is_as_locked_down(home: Path,
                                                              key_type: KeyType) -> None:
    """A key that signs on every request is used as a copy in the session's memory: same
    public key, same sign-only, sensitive, never-extractable attributes, not a token object;
    the token still holds exactly one key of that label, and destroying the key destroys the
    copy."""
    hsm = _open(home)
    label = f"test:copy:{key_type.value}"
    original = hsm.generate_key(label, key_type)
    copy = hsm.key(label, session_copy=True)
    assert copy is hsm.key(label, session_copy=True) and copy is not original
    assert copy._handle[Attribute.TOKEN] is False and original._handle[Attribute.TOKEN] is True
    for attr, value in ((Attribute.SENSITIVE, True), (Attribute.EXTRACTABLE, False),
                        (Attribute.SIGN, True), (Attribute.DECRYPT, False),
                        (Attribute.UNWRAP, False), (Attribute.DERIVE, False),
                        (Attribute.PRIVATE, True)):
        assert copy._handle[attr] is value, attr
    data = b"signed by the copy"
    if isinstance(copy, HsmEcKey):
        original.public_key().verify(copy.sign(data, ec.ECDSA(hashes.SHA256())), data,
                                     ec.ECDSA(hashes.SHA256()))
        # JWS's form (RFC 7518 §3.4): r || s, 32 bytes each for P-256, straight from the token
        raw = copy.sign_raw(data)
        assert len(raw) == 64
        original.public_key().verify(
            encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                 int.from_bytes(raw[32:], "big")),
            data, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(copy, HsmRsaKey)
        original.public_key().verify(copy.sign(data, padding.PKCS1v15(), hashes.SHA256()), data,
                                     padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(HsmError):
        copy.private_bytes(None, None, None)  # type: ignore[arg-type]
    assert hsm.labels().count(label) == 1 and hsm.has_key(label)
    hsm.destroy_key(label)
    assert not hsm.has_key(label)
    assert not list(hsm._session.get_objects({Attribute.LABEL: label}))
    with pytest.raises(HsmKeyNotFound):
        hsm.key(label, session_copy=True)


def test_session_copy_refused_by_the_token_signs_with_the_token_object(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hsm = _open(home)
    label = "test:copy:refused"
    hsm.generate_key(label, KeyType.P256)

    class NoCopy:
        """The token's key object, on a token that refuses C_CopyObject."""

        def __init__(self, obj: object) -> None:
            self.obj = obj

        def copy(self, attrs: object) -> object:
            raise pkcs11.exceptions.FunctionNotSupported()

        def __getattr__(self, name: str) -> object:
            return getattr(self.obj, name)

        def __getitem__(self, attr: Attribute) -> object:
            return self.obj[attr]  # type: ignore[index]

    find = hsm._find_private
    monkeypatch.setattr(hsm, "_find_private", lambda label: NoCopy(find(label)))
    key = hsm.key(label, session_copy=True)
    assert key._handle[Attribute.TOKEN] is True
    key.public_key().verify(key.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x",
                            ec.ECDSA(hashes.SHA256()))
