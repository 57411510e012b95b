"""The PKCS#11 backend on a SoftHSM token standing for a CPS card (own SOFTHSM2_CONF per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import Attribute, ObjectClass, TokenFlag

from pki.cards.errors import NoCard, PinIncorrect, PukIncorrect, SecurityStatusNotSatisfied
from pki.cards.personalise import PersonalisationResult, personalise
from pki.cards.pkcs11_card import CPS_LABELS, Pkcs11Card, Pkcs11Module, Pkcs11Personaliser
from pki.cards.testing import ThrowawayIssuer
from tests.cards.conftest import HOLDER, PIN, SoftHsmHome

LABEL = "CPS 810003456789"


@pytest.fixture
def module(softhsm: SoftHsmHome) -> Iterator[Pkcs11Module]:
    softhsm.init_token(LABEL)
    mod = Pkcs11Module()
    yield mod
    mod.finalize()


def issue_token(
    module: Pkcs11Module, softhsm: SoftHsmHome, key_type: str = "rsa2048"
) -> PersonalisationResult:
    issuer = ThrowawayIssuer()
    personaliser = Pkcs11Personaliser(module, LABEL, softhsm.so_pin, softhsm.transport_pin)
    return personalise(personaliser, HOLDER, issuer.callback(HOLDER), PIN, key_type=key_type)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", ["rsa2048", "p256"])
def test_token_card_personalise_read_and_sign(
    module: Pkcs11Module, softhsm: SoftHsmHome, key_type: str
) -> None:
    result = issue_token(module, softhsm, key_type)
    with Pkcs11Card(module, LABEL) as card:
        assert card.holder() == HOLDER
        for usage in ("auth", "sign"):
            assert card.certificate(usage) == result.certificates[usage]
        with pytest.raises(SecurityStatusNotSatisfied):
            card.sign("auth", b"x")
        card.verify_pin(PIN)
        for usage in ("auth", "sign"):
            sig = card.sign(usage, b"challenge")
            key = card.certificate(usage).public_key()
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, b"challenge", padding.PKCS1v15(), hashes.SHA256())
            else:
                assert isinstance(key, ec.EllipticCurvePublicKey)
                key.verify(sig, b"challenge", ec.ECDSA(hashes.SHA256()))


def test_token_keys_are_generated_in_the_token_and_not_extractable(
    module: Pkcs11Module, softhsm: SoftHsmHome
) -> None:
    issue_token(module, softhsm)
    token = module.token(LABEL)
    with token.open(user_pin=PIN) as session:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        assert len(keys) == 2
        for key in keys:
            assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
            assert key[Attribute.LOCAL]  # generated on the token, never imported
        labels = {
            c[Attribute.LABEL]
            for c in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
        }
        assert labels == set(CPS_LABELS.values())
        data = {
            d[Attribute.LABEL] for d in session.get_objects({Attribute.CLASS: ObjectClass.DATA})
        }
        assert data == {"CPS_ID_CARD", "CPS_NAME_PS", "CPS_INFO_PS"}


def test_token_wrong_pin_and_puk_unblock(module: Pkcs11Module, softhsm: SoftHsmHome) -> None:
    result = issue_token(module, softhsm)
    with Pkcs11Card(module, LABEL) as card:
        with pytest.raises(PinIncorrect) as info:
            card.verify_pin("9999")
        assert info.value.retries_left is None  # SoftHSM keeps no retry counter flags
        with pytest.raises(PukIncorrect):
            card.unblock_pin("00000000", "4321")
        with pytest.raises(PukIncorrect):
            card.unblock_pin(softhsm.so_pin, "4321")  # the transport SO PIN was replaced by the PUK
        card.unblock_pin(result.puk, "4321")
    module.lib.reinitialize()
    with Pkcs11Card(module, LABEL) as card:
        with pytest.raises(PinIncorrect):
            card.verify_pin(PIN)
        card.verify_pin("4321")
        card.sign("auth", b"ok")


def test_token_change_pin(module: Pkcs11Module, softhsm: SoftHsmHome) -> None:
    issue_token(module, softhsm)
    with Pkcs11Card(module, LABEL) as card:
        with pytest.raises(PinIncorrect):
            card.change_pin("0000", "5678")
        card.change_pin(PIN, "5678")
        card.verify_pin("5678")


def test_unknown_token_is_no_card(module: Pkcs11Module) -> None:
    with pytest.raises(NoCard):
        Pkcs11Card(module, "no such token")


def test_softhsm_cannot_tell_tries_and_says_so(
    module: Pkcs11Module, softhsm: SoftHsmHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM keeps no retry counter: five wrong PINs, then the right one still works; the
    backend answers None with the reason, and `cps-login info` prints that reason."""
    issue_token(module, softhsm)
    with Pkcs11Card(module, LABEL) as card:
        for _ in range(5):
            with pytest.raises(PinIncorrect):
                card.verify_pin("9999")
        assert card.pin_tries_left() is None and not card.reports_pin_tries
        note = card.pin_tries_note()
        assert note is not None and "SoftHSM" in note and "module" in note
        card.verify_pin(PIN)
    from click.testing import CliRunner

    from cps_login.cli import main as cps_login

    out = CliRunner().invoke(
        cps_login,
        ["info", "--pkcs11-module", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", LABEL],
    )
    assert out.exit_code == 0, out.output
    assert "PIN tries left: not reported by the PKCS#11 module (SoftHSM" in out.output
    assert "unknown" not in out.output


@pytest.mark.parametrize(
    ("flags", "left"),
    [
        (0, None),
        (TokenFlag.USER_PIN_COUNT_LOW, 2),
        (TokenFlag.USER_PIN_COUNT_LOW | TokenFlag.USER_PIN_FINAL_TRY, 1),
        (TokenFlag.USER_PIN_FINAL_TRY, 1),
        (TokenFlag.USER_PIN_LOCKED | TokenFlag.USER_PIN_COUNT_LOW, 0),
    ],
)
def test_tries_from_token_flags(flags: int, left: int | None) -> None:
    from pki.cards.pkcs11_card import _retries_from_flags

    assert _retries_from_flags(int(flags) | int(TokenFlag.LOGIN_REQUIRED)) == left
