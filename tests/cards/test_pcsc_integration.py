"""Through the real pcscd: the software card in vpcd's reader, read with pyscard and OpenSC."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cps_login.cli import main as cps_login
from pki.cards.errors import CardRemoved, NoCard, NoReader, PinIncorrect, PinLocked, WrongCard
from pki.cards.opensc import OPENSC_PKCS11, opensc_env
from pki.cards.pcsc import CardWatcher, PcscCard, reader_states, wait_for_card
from pki.cards.pcscd import Pcscd
from pki.cards.sim import SimProcess, SimulatedCard
from tests.cards.conftest import EMPTY_READER, HOLDER, PIN, READER, Personalised


def rsa_verify(cert_key: object, sig: bytes, data: bytes) -> None:
    assert isinstance(cert_key, rsa.RSAPublicKey)
    cert_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())


def test_personalise_read_back_and_sign_through_pcscd(personalised: Personalised) -> None:
    with PcscCard.open(READER) as card:
        assert card.holder() == HOLDER
        for usage in ("auth", "sign"):
            assert card.certificate(usage) == personalised.result.certificates[usage]
        assert card.pin_tries_left() == 3
        assert len(card.serial()) == 16
        challenge = os.urandom(32)
        signature = card.authenticate(PIN, challenge)
        rsa_verify(card.certificate("auth").public_key(), signature, challenge)
        rsa_verify(card.certificate("sign").public_key(), card.sign("sign", b"claim"), b"claim")
        rsa_verify(card.certificate("auth").public_key(), card.internal_authenticate(b"n"), b"n")


def test_open_without_a_reader_name_finds_the_card(personalised: Personalised) -> None:
    with PcscCard.open() as card:
        assert card.reader == READER


def test_closing_resets_the_verified_pin(personalised: Personalised) -> None:
    with PcscCard.open(READER) as card:
        card.verify_pin(PIN)
    with PcscCard.open(READER) as card, pytest.raises(Exception) as info:
        card.sign("auth", b"x")
    assert info.value.__class__.__name__ == "SecurityStatusNotSatisfied"


def test_wrong_pin_three_times_locks_and_puk_unlocks(personalised: Personalised) -> None:
    with PcscCard.open(READER) as card:
        for left in (2, 1, 0):
            with pytest.raises(PinIncorrect) as info:
                card.verify_pin("0000")
            assert info.value.retries_left == left
        with pytest.raises(PinLocked):
            card.verify_pin(PIN)
        card.unblock_pin(personalised.result.puk, "2468")
        card.verify_pin("2468")
        assert card.pin_tries_left() == 3


def test_card_pulled_mid_operation(sim: SimulatedCard, personalised: Personalised) -> None:
    before = personalised.path.read_bytes()
    card = PcscCard.open(READER)
    try:
        sim.remove_after(3)  # SELECT, SELECT EF, READ #1 answered; the card leaves during READ #2
        with pytest.raises(CardRemoved):
            card.certificate("auth")
    finally:
        card.close()
    wait_for_card(READER, present=False)
    assert personalised.path.read_bytes() == before
    sim.remove()
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as again:
        assert again.certificate("auth") == personalised.result.certificates["auth"]


def test_card_pulled_during_pin_verification_keeps_the_file_valid(
    sim: SimulatedCard, personalised: Personalised
) -> None:
    card = PcscCard.open(READER)
    try:
        sim.remove_after(1)
        with pytest.raises(CardRemoved):
            card.verify_pin(PIN)
    finally:
        card.close()
    from pki.cards.sim import CardFile

    assert CardFile(personalised.path).load().pin.tries_left == 3


def test_foreign_card_is_refused(pcscd: Pcscd, tmp_path: Path) -> None:
    foreign = SimulatedCard(tmp_path / "foreign.json", applications=("piv",))
    foreign.insert()
    try:
        wait_for_card(READER)
        with pytest.raises(WrongCard):
            PcscCard.open(READER)
        result = CliRunner().invoke(cps_login, ["info", "--reader", READER])
        assert result.exit_code != 0 and "error:" in result.output and "CPS" in result.output
    finally:
        foreign.remove()
        wait_for_card(READER, present=False)


def test_no_reader_and_no_card(pcscd: Pcscd) -> None:
    with pytest.raises(NoReader):
        PcscCard.open("No Such Reader 00 00")
    with pytest.raises(NoCard):
        PcscCard.open(EMPTY_READER)
    runner = CliRunner()
    for args in (["info", "--reader", "No Such Reader"], ["info", "--reader", EMPTY_READER]):
        result = runner.invoke(cps_login, args)
        assert result.exit_code != 0
        assert result.output.startswith("error: ") and result.output.count("\n") == 1


def test_malformed_apdus_through_pcscd(personalised: Personalised) -> None:
    with PcscCard.open(READER) as card:
        assert card.transmit_raw(bytes.fromhex("00A404")) == bytes.fromhex("6700")
        assert card.transmit_raw(bytes.fromhex("80CA9F7F00")) == bytes.fromhex("6E00")
        assert card.transmit_raw(bytes.fromhex("00EE000000")) == bytes.fromhex("6D00")
        assert card.transmit_raw(bytes.fromhex("00A4040005A000")) == bytes.fromhex("6700")
        assert card.holder() == HOLDER  # and the card still works


def test_cli_readers_and_info(personalised: Personalised) -> None:
    runner = CliRunner()
    result = runner.invoke(cps_login, ["readers"])
    assert result.exit_code == 0, result.output
    assert f"{READER}: card present (ATR 3B AC 00 40 2A" in result.output
    assert f"{EMPTY_READER}: no card" in result.output
    result = runner.invoke(cps_login, ["info", "--reader", READER])
    assert result.exit_code == 0, result.output
    assert "holder: Jeanne Martin (810003456789)" in result.output
    serial = f"{personalised.result.certificates['sign'].serial_number:X}"
    assert serial in result.output and "PIN tries left: 3" in result.output


def test_watch_sees_insert_and_remove(sim: SimulatedCard) -> None:
    events: list[tuple[str, str]] = []
    seen = threading.Condition()

    def on_event(event: str, reader: str, atr: bytes) -> None:
        with seen:
            events.append((event, reader))
            seen.notify_all()

    watcher = CardWatcher(on_event)
    try:
        with seen:
            seen.wait_for(lambda: ("inserted", READER) in events, timeout=5)
        sim.remove()
        with seen:
            assert seen.wait_for(lambda: ("removed", READER) in events, timeout=5), events
        sim.insert()
        with seen:
            assert seen.wait_for(lambda: events.count(("inserted", READER)) >= 2, timeout=5), events
    finally:
        watcher.stop()


def test_reader_states(sim: SimulatedCard) -> None:
    states = {s.name: s for s in reader_states()}
    assert states[READER].card_present and states[READER].atr.hex().upper().startswith("3BAC0040")
    assert not states[EMPTY_READER].card_present


# --- OpenSC (PIV view) --------------------------------------------------------------------

needs_opensc = pytest.mark.skipif(
    not Path(OPENSC_PKCS11).exists(), reason="OpenSC not installed (apt-get install opensc)"
)


@needs_opensc
def test_pkcs11_tool_lists_and_signs(personalised: Personalised, tmp_path: Path) -> None:
    env = opensc_env()
    listing = subprocess.run(
        ["pkcs11-tool", "--module", OPENSC_PKCS11, "-O"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("Certificate Object") == 2
    # pkcs11-tool prints each certificate's serial as hex bytes; whether a sign byte is kept
    # (a 15-byte serial with its top bit set, about 1 in 256 random ones) varies, so compare
    # the values, not the text.
    printed = {int(line.split(":", 1)[1], 16) for line in listing.stdout.splitlines()
               if line.strip().startswith("serial:")}
    for cert in personalised.result.certificates.values():
        assert cert.serial_number in printed, (f"{cert.serial_number:X}", listing.stdout)
    challenge = tmp_path / "challenge"
    challenge.write_bytes(b"login challenge")
    sign = [
        "pkcs11-tool",
        "--module",
        OPENSC_PKCS11,
        "--sign",
        "--id",
        "01",
        "-m",
        "SHA256-RSA-PKCS",
        "-i",
        str(challenge),
        "-o",
        str(tmp_path / "sig"),
    ]
    wrong = subprocess.run(
        [*sign, "--login", "--pin", "9999"], env=env, capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode != 0 and "CKR_PIN_INCORRECT" in wrong.stderr
    good = subprocess.run(
        [*sign, "--login", "--pin", PIN], env=env, capture_output=True, text=True, timeout=60
    )
    assert good.returncode == 0, good.stderr
    rsa_verify(
        personalised.result.certificates["auth"].public_key(),
        (tmp_path / "sig").read_bytes(),
        b"login challenge",
    )


_OPENSC_CARD = """
import sys
from pki.cards.opensc import OPENSC_PKCS11, use_opensc_conf
use_opensc_conf()
from pki.cards.errors import PinIncorrect
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module
module = Pkcs11Module(OPENSC_PKCS11)
token = next(t.label for t in module.lib.get_tokens())
card = Pkcs11Card(module, token)
print(card.holder().national_id)
print(f"{card.certificate('auth').serial_number:X}")
try:
    card.verify_pin("9999")
except PinIncorrect as exc:
    print("wrong", exc.retries_left)
card.verify_pin(sys.argv[1])
sys.stdout.write(card.sign("auth", b"through opensc").hex() + "\\n")
"""


@needs_opensc
def test_pkcs11_backend_over_opensc(personalised: Personalised) -> None:
    """Our PKCS#11 backend driving OpenSC driving pcscd driving the card (own process: OpenSC
    keeps per-process state we do not want in the test runner)."""
    import sys

    env = dict(opensc_env(), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", _OPENSC_CARD, PIN],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    national_id, serial, wrong, signature = out.stdout.split("\n")[:4]
    assert national_id == HOLDER.national_id
    assert serial == f"{personalised.result.certificates['auth'].serial_number:X}"
    assert wrong.startswith("wrong")
    rsa_verify(
        personalised.result.certificates["auth"].public_key(),
        bytes.fromhex(signature),
        b"through opensc",
    )


def test_card_sim_subprocess_killed_leaves_a_valid_card(
    pcscd: Pcscd, personalised: Personalised, sim: SimulatedCard
) -> None:
    """`cps-card-sim` as a process: SIGKILL it in the middle of PIN traffic; the file survives."""
    sim.remove()
    wait_for_card(READER, present=False)
    proc = SimProcess.start(personalised.path, log=personalised.path.with_suffix(".log"))
    try:
        wait_for_card(READER, present=True, timeout=15)
        stop = time.monotonic() + 1.0
        killer = threading.Timer(0.4, proc.kill)
        killer.start()
        with pytest.raises((CardRemoved, NoCard)), PcscCard.open(READER) as card:
            while time.monotonic() < stop + 5:
                card.change_pin(PIN, "1111")
                card.change_pin("1111", PIN)
        killer.join()
    finally:
        proc.stop()
    from pki.cards.sim import CardFile

    state = CardFile(personalised.path).load()
    assert state.lifecycle == "operational" and state.pin.tries_left in (2, 3)
    wait_for_card(READER, present=False)
    sim.insert()
