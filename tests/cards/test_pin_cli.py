"""``cps-login pin change`` / ``cps-login pin unblock``: through the software card in the real
pcscd (run under ``flock /tmp/pcscd.lock``) and on a SoftHSM token-card; OpenSC's PKCS#11 path
in tests/cards/test_opensc_iasecc.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cps_login.cli import main as cps_login
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.personalise import PersonalisationResult
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module
from pki.cards.sim import CardFile, SimulatedCard
from tests.cards.conftest import PIN, READER, SOFTHSM_MODULE, Personalised, SoftHsmHome

PCSC = ["--reader", READER]


def run(args: list[str], stdin: str | None = None) -> Result:
    return CliRunner().invoke(cps_login, ["pin", *args], input=stdin)


def secret(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return str(path)


def tries(personalised: Personalised) -> tuple[int, int]:
    state = CardFile(personalised.path).load()
    return state.pin.tries_left, state.puk.tries_left


def test_change_prompts_without_echo_and_counts_wrong_pins(personalised: Personalised) -> None:
    wrong = run(["change", *PCSC], "9999\n5678\n5678\n")
    assert wrong.exit_code == 1
    last = wrong.output.strip().splitlines()[-1]
    assert last == "error: PIN incorrect, 2 tries left [pin_incorrect]"
    assert "9999" not in wrong.output and "5678" not in wrong.output  # no echo
    done = run(["change", *PCSC], f"{PIN}\n5678\n5678\n")
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1] == "PIN changed"
    with PcscCard.open(READER) as card:
        card.verify_pin("5678")
        assert card.pin_tries_left() == 3


def test_bad_input_never_reaches_the_card(personalised: Personalised, tmp_path: Path) -> None:
    short = run(["change", *PCSC], f"{PIN}\n12\n12\n")
    assert short.exit_code == 2 and "error: PIN must be exactly 4 digits" in short.output
    mismatch = run(["change", *PCSC], f"{PIN}\n5678\n5679\n")  # click asks again, then gives up
    assert mismatch.exit_code == 2
    loose = secret(tmp_path, "puk", personalised.result.puk, 0o644)
    shared = run(["unblock", *PCSC, "--puk-file", loose, "--new-pin-file",
                  secret(tmp_path, "new", "2468")])
    assert shared.exit_code == 2 and "readable by others" in shared.output
    assert tries(personalised) == (3, 3)
    with PcscCard.open(READER) as card:
        card.verify_pin(PIN)


def test_blocked_pin_then_puk_unblock_from_files(
    personalised: Personalised, tmp_path: Path
) -> None:
    for left in (2, 1):
        out = run(["change", *PCSC], "0000\n5678\n5678\n")
        assert f"PIN incorrect, {left} tries left [pin_incorrect]" in out.output
    last = run(["change", *PCSC], "0000\n5678\n5678\n")
    assert ("error: PIN incorrect, 0 tries left; the PIN is now blocked: unblock it with the "
            "PUK: cps-login pin unblock [pin_incorrect]") in last.output
    blocked = run(["change", *PCSC], f"{PIN}\n5678\n5678\n")
    assert blocked.exit_code == 1
    assert ("error: PIN blocked: unblock it with the PUK: cps-login pin unblock [pin_locked]"
            in blocked.output)
    new_pin = secret(tmp_path, "new", "2468")
    wrong = run(["unblock", *PCSC, "--puk-file", secret(tmp_path, "bad", "00000000"),
                 "--new-pin-file", new_pin])
    assert wrong.exit_code == 1
    assert "error: PUK incorrect, 2 tries left [puk_incorrect]" in wrong.output
    good = run(["unblock", *PCSC, "--puk-file", secret(tmp_path, "puk", personalised.result.puk),
                "--new-pin-file", new_pin])
    assert good.exit_code == 0, good.output
    assert "PIN unblocked" in good.output
    assert tries(personalised) == (3, 3)
    with PcscCard.open(READER) as card:
        card.verify_pin("2468")


def test_blocked_puk_says_the_card_must_be_replaced(
    personalised: Personalised, tmp_path: Path
) -> None:
    bad, new_pin = secret(tmp_path, "bad", "00000000"), secret(tmp_path, "new", "2468")
    for _ in range(2):
        run(["unblock", *PCSC, "--puk-file", bad, "--new-pin-file", new_pin])
    last = run(["unblock", *PCSC, "--puk-file", bad, "--new-pin-file", new_pin])
    assert "PUK incorrect, 0 tries left; the PUK is now blocked" in last.output
    good = secret(tmp_path, "puk", personalised.result.puk)
    out = run(["unblock", *PCSC, "--puk-file", good, "--new-pin-file", new_pin])
    assert out.exit_code == 1
    assert out.output.strip() == "error: PUK blocked: the card must be replaced [puk_locked]"


def test_card_pulled_between_puk_and_new_pin(
    sim: SimulatedCard, personalised: Personalised, tmp_path: Path
) -> None:
    args = ["unblock", *PCSC, "--puk-file", secret(tmp_path, "puk", personalised.result.puk),
            "--new-pin-file", secret(tmp_path, "new", "2468")]
    assert sim.link is not None
    before = sim.link.apdu_count
    assert run(args).exit_code == 0  # the PIN is not blocked: unblocking still resets it
    apdus = sim.link.apdu_count - before
    sim.remove_after(apdus - 1)  # the PUK is verified, RESET RETRY COUNTER never answered
    third = run([*args[:-1], secret(tmp_path, "third", "1357")])
    assert third.exit_code == 1
    lines = third.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: card in ")
    assert "the unblock may not have been done: put the card back" in lines[0]
    assert lines[0].endswith("[card_removed]")
    wait_for_card(READER, present=False)
    sim.remove()
    sim.insert()
    wait_for_card(READER, present=True)
    with PcscCard.open(READER) as card:
        card.verify_pin("2468")  # the interrupted unblock left the PIN as it was


# --- PKCS#11: SoftHSM token-card --------------------------------------------------------------

LABEL = "CPS 810003456789"


@pytest.fixture
def token(softhsm: SoftHsmHome) -> Iterator[PersonalisationResult]:
    from tests.cards.test_pkcs11_softhsm import issue_token

    softhsm.init_token(LABEL)
    module = Pkcs11Module()
    try:
        yield issue_token(module, softhsm)
    finally:
        module.finalize()


def _cli(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process: SoftHSM keeps per-process login state."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "cps-login"), "pin", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=dict(os.environ))


def test_pkcs11_softhsm_change_and_unblock(token: PersonalisationResult) -> None:
    p11 = ["--pkcs11-module", str(SOFTHSM_MODULE), "--token-label", LABEL]
    wrong = _cli(["change", *p11], "9999\n5678\n5678\n")
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines()[-1] == (
        "error: PIN incorrect [pin_incorrect]")  # SoftHSM reports no tries left
    assert _cli(["change", *p11], f"{PIN}\n5678\n5678\n").stdout.strip() == "PIN changed"
    bad_puk = _cli(["unblock", *p11], "00000000\n2468\n2468\n")
    assert bad_puk.returncode == 1 and "[puk_incorrect]" in bad_puk.stderr
    done = _cli(["unblock", *p11], f"{token.puk}\n2468\n2468\n")
    assert done.returncode == 0, done.stderr
    module = Pkcs11Module()
    module.lib.reinitialize()  # SoftHSM reads the token files again (the fixture finalizes)
    with Pkcs11Card(module, LABEL) as card:
        card.verify_pin("2468")
    missing = _cli(["change", "--pkcs11-module", str(SOFTHSM_MODULE)], f"{PIN}\n1111\n1111\n")
    assert missing.returncode == 2 and "--token-label is required" in missing.stderr
