"""Card renewal (`cps-admin card renew`): successors generated and written on the card, the old
certificates superseded only afterwards; a failure at any step leaves the card with certificates
the store holds valid, and a rerun finishes.

The software card through the PC/SC host code (loopback, no pcscd) and a SoftHSM token through
the PKCS#11 path; tests/cards/test_renew_pcscd.py does the same through the real pcscd and logs in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from pkcs11 import Attribute, ObjectClass
from sqlalchemy import select

from pki.ca.authority import Authority, serial_hex
from pki.cards.card import USAGES, Usage
from pki.cards.errors import CardRemoved, SecurityStatusNotSatisfied
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module, Pkcs11Personaliser
from pki.cards.sim import CardFile, SoftCard
from pki.cards.testing import ThrowawayIssuer
from pki.cli.admin import main
from pki.issuance.cards import issue_card
from pki.issuance.renew import PcscRenewal, Pkcs11Renewal, RenewableCard, renew_card
from pki.store.models import Card, Certificate
from tests.cards.conftest import HOLDER, PIN, SOFTHSM_MODULE, LoopbackCard, SoftHsmHome
from tests.conftest import add_professional


def verify(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def store_rows(auth: Authority, number: str) -> dict[str, Certificate]:
    with auth.store.read() as session:
        card = session.execute(select(Card).where(Card.card_number == number)).scalar_one()
        rows = session.execute(select(Certificate).where(Certificate.card_id == card.id)
                               ).scalars().all()
        session.expunge_all()
        return {r.serial: r for r in rows}


def serial(cert: x509.Certificate) -> str:
    return serial_hex(cert.serial_number)


class Failing:
    """A RenewableCard that is pulled out of the reader at its ``fail_at``-th command."""

    def __init__(self, inner: RenewableCard, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def call(*args: Any) -> Any:
            self.calls += 1
            if self.calls == self.fail_at:
                raise CardRemoved("card pulled mid-way (test)")
            return method(*args)

        return call


# --- software card, PC/SC host code (loopback) -----------------------------------------------


@pytest.fixture
def pcsc_card(authority: Authority, tmp_path: Path) -> Iterator[tuple[LoopbackCard, str]]:
    rpps = add_professional(authority)
    card = LoopbackCard(SoftCard(CardFile(tmp_path / "card.json")))
    number = card.serial().upper()
    issue_card(authority, rpps, card, PIN, backend="pcsc", location="loopback",
               card_number=number, key_type="p256")
    card.soft.reset()
    yield card, number


def on_card(card: LoopbackCard) -> dict[Usage, x509.Certificate]:
    card._certs.clear()
    return {u: card.certificate(u) for u in USAGES}


def test_renew_writes_successors_then_supersedes(authority: Authority,
                                                 pcsc_card: tuple[LoopbackCard, str]) -> None:
    card, number = pcsc_card
    before = on_card(card)
    result = renew_card(authority, number, PcscRenewal(card, PIN))
    after = on_card(card)
    rows = store_rows(authority, number)
    for usage in USAGES:
        old, new = rows[serial(before[usage])], rows[serial(after[usage])]
        assert result.renewed[usage] == new.serial != old.serial
        assert (old.status, old.reason) == ("revoked", "superseded")
        assert new.status == "active" and new.renewed_from_id == old.id
        assert after[usage].public_key() != before[usage].public_key()   # a new key on the card
    assert sorted(result.superseded) == sorted(serial(c) for c in before.values())
    card.soft.reset()
    card.verify_pin(PIN)
    verify(after["auth"], card.sign("auth", b"login"), b"login")   # the new key signs
    verify(after["sign"], card.sign("sign", b"doc"), b"doc")


def test_every_failure_point_leaves_valid_certificates_and_a_rerun_finishes(
        authority: Authority, pcsc_card: tuple[LoopbackCard, str]) -> None:
    card, number = pcsc_card
    first = on_card(card)
    fail_at = 1
    while True:
        card.soft.reset()
        device = Failing(PcscRenewal(card, PIN), fail_at)
        try:
            renew_card(authority, number, device)   # type: ignore[arg-type]
        except CardRemoved:
            rows = store_rows(authority, number)
            for cert in on_card(card).values():
                assert rows[serial(cert)].status == "active", f"failure at step {fail_at}"
            fail_at += 1
            continue
        break
    assert fail_at > 8   # every step was interrupted once: settle, read, generate, write...
    # the last run finished: the card holds one successor generation, the only active certs
    now = on_card(card)
    rows = store_rows(authority, number)
    assert {s for s, r in rows.items() if r.status == "active"} == {serial(c) for c in now.values()}
    for usage in USAGES:
        new = rows[serial(now[usage])]
        assert new.renewed_from_id == rows[serial(first[usage])].id
        assert rows[serial(first[usage])].reason == "superseded"
    orphans = [r for r in rows.values() if r.reason == "cessationOfOperation"]
    assert orphans   # successors issued by interrupted runs never reached the card: revoked


def test_a_second_renewal_renews_again(authority: Authority,
                                       pcsc_card: tuple[LoopbackCard, str]) -> None:
    card, number = pcsc_card
    renew_card(authority, number, PcscRenewal(card, PIN))
    middle = on_card(card)
    card.soft.reset()
    result = renew_card(authority, number, PcscRenewal(card, PIN))
    assert set(result.superseded) == {serial(c) for c in middle.values()}


def test_renew_refuses_another_card_and_a_blocked_card(authority: Authority,
                                                       pcsc_card: tuple[LoopbackCard, str],
                                                       tmp_path: Path) -> None:
    card, number = pcsc_card
    other = LoopbackCard(SoftCard(CardFile(tmp_path / "other.json")))
    rpps2 = add_professional(authority, "1000345679")
    issue_card(authority, rpps2, other, PIN, backend="pcsc", location="x",
               card_number=other.serial().upper(), key_type="p256")
    other.soft.reset()
    with pytest.raises(Exception, match="is not card"):
        renew_card(authority, number, PcscRenewal(other, PIN))
    from pki.issuance.cards import block_card

    block_card(authority, number)
    card.soft.reset()
    with pytest.raises(Exception, match="only an active card"):
        renew_card(authority, number, PcscRenewal(card, PIN))
    assert all(r.status != "revoked" for r in store_rows(authority, number).values())


def test_the_card_guards_its_pending_keys(pcsc_card: tuple[LoopbackCard, str]) -> None:
    card, _ = pcsc_card
    card.soft.reset()
    renewal = PcscRenewal.__new__(PcscRenewal)
    renewal.card = card
    with pytest.raises(SecurityStatusNotSatisfied):     # no PIN: no new key
        renewal.generate_pending_key("auth", "p256")
    card.verify_pin(PIN)
    renewal.generate_pending_key("auth", "p256")
    current = card.certificate("sign")
    with pytest.raises(Exception, match="6A80"):       # a certificate of another key
        renewal.write_pending_certificate("auth", current.public_bytes(Encoding.DER))
    with pytest.raises(Exception, match="6985"):       # nothing to activate
        renewal.activate_pending("auth")
    # a certificate written for a pending key goes when the pending key is generated anew
    from pki.issuance.renew import _spki

    stand_in = ThrowawayIssuer().callback(HOLDER)("auth", renewal.generate_pending_key(
        "auth", "p256"))
    renewal.write_pending_certificate("auth", stand_in)
    assert renewal.pending_certificate("auth") is not None
    fresh = renewal.generate_pending_key("auth", "p256")
    assert renewal.pending_certificate("auth") is None
    with pytest.raises(Exception, match="6985"):
        renewal.activate_pending("auth")
    assert _spki(card.certificate("auth").public_key()) != _spki(fresh)


def test_cli_cert_renew_of_a_card_certificate_points_to_card_renew(
        home: Path, authority: Authority, pcsc_card: tuple[LoopbackCard, str]) -> None:
    card, number = pcsc_card
    auth_serial = serial(on_card(card)["auth"])
    out = CliRunner().invoke(main, ["--home", str(home), "cert", "renew", auth_serial])
    assert out.exit_code != 0
    assert f"cps-admin card renew {number}" in out.output
    assert {r.status for r in store_rows(authority, number).values()} == {"active"}


# --- PKCS#11 token (SoftHSM) ------------------------------------------------------------------


@dataclass
class TokenCard:
    auth: Authority
    module: Pkcs11Module
    number: str


@pytest.fixture
def token_card(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenCard]:
    """A token-card personalised by this CA. One SoftHSM configuration per process: the token
    lives beside the CA's, created before the CA opens (personalisation re-initialises the
    library, so the CA is opened again for the test, as a new `cps-admin` process would)."""
    monkeypatch.setenv("SOFTHSM2_CONF", str((home / "softhsm2.conf").resolve()))
    softhsm = SoftHsmHome(home / "softhsm2.conf")
    softhsm.init_token("cps-renew")
    with closing(Authority.open(home)) as auth:
        rpps = add_professional(auth)
        module = Pkcs11Module(str(SOFTHSM_MODULE))
        device = Pkcs11Personaliser(module, "cps-renew", softhsm.so_pin, softhsm.transport_pin)
        result = issue_card(auth, rpps, device, PIN, backend="pkcs11", location="cps-renew",
                            key_type="p256")
        with auth.store.read() as session:
            number = session.execute(select(Card.card_number).join(
                Certificate, Certificate.card_id == Card.id).where(
                Certificate.serial == serial(result.certificates["auth"]))).scalar_one()
    with closing(Authority.open(home)) as auth:
        yield TokenCard(auth, Pkcs11Module(str(SOFTHSM_MODULE)), number)


def token_certs(module: Pkcs11Module) -> dict[Usage, x509.Certificate]:
    with Pkcs11Card(module, "cps-renew") as card:
        return {u: card.certificate(u) for u in USAGES}


def test_pkcs11_renew_and_the_token_signs_with_the_new_key(
        token_card: TokenCard) -> None:
    authority, module, number = token_card.auth, token_card.module, token_card.number
    before = token_certs(module)
    renewal = Pkcs11Renewal(module, "cps-renew", PIN)
    try:
        result = renew_card(authority, number, renewal)
    finally:
        renewal.close()
    after = token_certs(module)
    rows = store_rows(authority, number)
    for usage in USAGES:
        assert serial(after[usage]) == result.renewed[usage]
        assert rows[serial(before[usage])].reason == "superseded"
        assert rows[serial(after[usage])].status == "active"
    with Pkcs11Card(module, "cps-renew") as card:
        card.verify_pin(PIN)
        data = hashlib.sha256(b"x").digest()
        verify(after["auth"], card.sign("auth", data), data)
        verify(after["sign"], card.sign("sign", data), data)


def test_pkcs11_every_failure_point_reruns_to_the_end(
        token_card: TokenCard) -> None:
    authority, module, number = token_card.auth, token_card.module, token_card.number
    fail_at = 1
    while True:
        renewal = Pkcs11Renewal(module, "cps-renew", PIN)
        try:
            renew_card(authority, number, Failing(renewal, fail_at))  # type: ignore[arg-type]
        except CardRemoved:
            fail_at += 1
            continue
        finally:
            renewal.close()
        break
    assert fail_at > 8
    now = token_certs(module)
    rows = store_rows(authority, number)
    assert {s for s, r in rows.items() if r.status == "active"} == {serial(c) for c in now.values()}


@pytest.mark.parametrize("cert_moved", [False, True])
def test_pkcs11_activation_stopped_half_way_is_finished_by_settle(
        token_card: TokenCard, cert_moved: bool) -> None:
    """PKCS#11 has no transaction: stop after the old objects retired and the new certificate
    moved, before the new keys did; the next run finishes the activation."""
    authority, module, number = token_card.auth, token_card.module, token_card.number
    renewal = Pkcs11Renewal(module, "cps-renew", PIN)
    try:
        # calls: settle, current, pending, generate, write, activate <- pulled here
        with pytest.raises(CardRemoved):
            renew_card(authority, number, Failing(renewal, 6))  # type: ignore[arg-type]
        session = renewal.session
        for old in session.get_objects({Attribute.ID: b"\x01"}):
            old[Attribute.ID] = b"\x41"
        for cert in session.get_objects({Attribute.ID: b"\x81",
                                         Attribute.CLASS: ObjectClass.CERTIFICATE}):
            if cert_moved:
                cert[Attribute.ID] = b"\x01"
    finally:
        renewal.close()
    renewal = Pkcs11Renewal(module, "cps-renew", PIN)
    try:
        renew_card(authority, number, renewal)
    finally:
        renewal.close()
    rows = store_rows(authority, number)
    now = token_certs(module)
    assert {s for s, r in rows.items() if r.status == "active"} == {serial(c) for c in now.values()}
    with Pkcs11Card(module, "cps-renew") as card:
        card.verify_pin(PIN)
        data = hashlib.sha256(b"x").digest()
        verify(now["auth"], card.sign("auth", data), data)


def test_cli_card_renew_on_a_token(token_card: TokenCard, home: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    before = token_certs(token_card.module)
    token_card.module.finalize()   # the CLI is its own process; let it have the token
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)
    cli = str(Path(sys.executable).with_name("cps-admin"))
    proc = subprocess.run([cli, "--home", str(home), "--json", "card", "renew",
                           token_card.number, "--token-label", "cps-renew", "--pin-file",
                           str(pin_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert sorted(answer["superseded"]) == sorted(serial(c) for c in before.values())
    after = token_certs(Pkcs11Module(str(SOFTHSM_MODULE)))
    assert answer["certificates"] == {u: serial(c) for u, c in after.items()}
    wrong = tmp_path / "wrong"
    wrong.write_text("0000")
    wrong.chmod(0o600)
    proc = subprocess.run([cli, "--home", str(home), "card", "renew", token_card.number,
                           "--token-label", "cps-renew", "--pin-file", str(wrong)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.splitlines()) == 1 and "PIN" in proc.stderr, proc.stderr


def test_a_failure_while_superseding_leaves_both_and_a_rerun_renews_nothing_again(
        authority: Authority, pcsc_card: tuple[LoopbackCard, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pki.ca import lifecycle

    card, number = pcsc_card
    before = on_card(card)
    real, calls = lifecycle.change_in, []

    def second_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError("store went away (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "change_in", second_fails)
    with pytest.raises(OSError):
        renew_card(authority, number, PcscRenewal(card, PIN))
    monkeypatch.setattr(lifecycle, "change_in", real)
    written = on_card(card)
    rows = store_rows(authority, number)
    assert {rows[serial(c)].status for c in before.values()} == {"active"}   # neither superseded
    card.soft.reset()
    result = renew_card(authority, number, PcscRenewal(card, PIN))
    assert on_card(card) == written                  # the rerun renewed nothing again
    assert result.renewed == {u: serial(c) for u, c in written.items()}
    rows = store_rows(authority, number)
    assert {rows[serial(c)].reason for c in before.values()} == {"superseded"}
