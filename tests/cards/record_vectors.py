"""Record the APDU traces in tests/vectors/cps3-*.json (run under the pcscd lock)::

    flock /tmp/pcscd.lock .venv/bin/python -m tests.cards.record_vectors

A freshly personalised software card goes into vpcd's reader; each client below talks to it
through the real pcscd while the card writes down every command and its answer. A vector holds
the card's chip (its JSON file) as it was before the client ran, the client's command line and
the exchanges; ``test_vectors.py`` replays them against the simulator, no pcscd needed.
OpenSC runs with no OPENSC_CONF (its own ``iasecc`` driver), except for the unblock vector
(pki/cards/data/opensc-unblock.conf: OpenSC's PKCS#11 unblock switch, nothing card-specific).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pki.cards.card import SHA256_DIGEST_INFO_PREFIX
from pki.cards.errors import PinIncorrect, PinLocked
from pki.cards.opensc import OPENSC_PKCS11, OPENSC_UNBLOCK_CONF, stock_env
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.pcscd import Pcscd
from pki.cards.personalise import personalise
from pki.cards.sim import CardFile, SimulatedCard, SoftCard
from pki.cards.testing import ThrowawayIssuer
from tests.cards.conftest import HOLDER, PIN, READER, LoopbackCard

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NEW_PIN = "2468"


def _run(argv: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout}{out.stderr}")


def record(name: str, card_path: Path, client: str, action: Callable[[], None]) -> None:
    before = json.loads(card_path.read_text())
    trace: list[tuple[str, str]] = []
    sim = SimulatedCard(card_path, trace=trace)
    sim.insert()
    wait_for_card(READER, present=True)
    try:
        action()
    finally:
        sim.remove()
        wait_for_card(READER, present=False)
    vector = {"client": client, "card": before, "apdus": trace}
    (VECTORS / f"cps3-{name}.json").write_text(json.dumps(vector, indent=1) + "\n")
    print(f"{name}: {sum(1 for c, _ in trace if c != 'power')} APDUs")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cps3-vectors-"))
    card_path = work / "card.json"
    issuer = ThrowawayIssuer()
    loop = LoopbackCard(SoftCard(CardFile(card_path)))
    puk = personalise(loop, HOLDER, issuer.callback(HOLDER), PIN).puk
    digest_info = work / "digest-info"
    digest_info.write_bytes(SHA256_DIGEST_INFO_PREFIX + hashlib.sha256(b"login challenge").digest())
    m = ["pkcs11-tool", "--module", OPENSC_PKCS11]
    stock = stock_env()
    with Pcscd.ensure(log=work / "pcscd.log"):
        record(
            "opensc-pkcs15-tool",
            card_path,
            "pkcs15-tool -D (OpenSC 0.23, iasecc driver, no OPENSC_CONF)",
            lambda: _run(["pkcs15-tool", "-D"], stock),
        )
        sign = [*m, "--sign", "--id", "01", "-m", "RSA-PKCS", "-i", str(digest_info)]
        record(
            "opensc-pkcs11-sign",
            card_path,
            "pkcs11-tool -O, then --sign --id 01 -m RSA-PKCS --login --pin 1234 (no OPENSC_CONF)",
            lambda: (
                _run([*m, "-O"], stock),
                _run([*sign, "-o", str(work / "sig"), "--login", "--pin", PIN], stock),
            )[-1],
        )

        def sign_with_the_signature_key() -> None:
            # Expected to fail inside OpenSC 0.23 + OpenSSL 3 (iasecc_qsign_data_sha256 is not
            # supported): the trace shows the card accepting MSE SET HT and DST, then nothing.
            message = work / "message"
            message.write_bytes(b"document")
            argv = [*m, "--sign", "--id", "02", "-m", "SHA256-RSA-PKCS", "-i", str(message)]
            out = subprocess.run(
                [*argv, "-o", str(work / "sig3"), "--login", "--pin", PIN],
                env=stock,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if out.returncode == 0 or "CKR_FUNCTION_NOT_SUPPORTED" not in out.stderr:
                raise SystemExit(f"expected OpenSC to stop before PSO HASH:\n{out.stderr}")

        record(
            "opensc-sign-key-stops",
            card_path,
            "pkcs11-tool --sign --id 02 -m SHA256-RSA-PKCS --login (no OPENSC_CONF): OpenSC 0.23 "
            "built with OpenSSL 3 stops after MSE SET DST (CKR_FUNCTION_NOT_SUPPORTED)",
            sign_with_the_signature_key,
        )

        def block_and_unlock() -> None:
            for _ in range(3):
                subprocess.run(
                    [*m, "--login", "--pin", "9999", "-O"],
                    env=stock,
                    capture_output=True,
                    timeout=120,
                )
            _run(
                [*m, "--unlock-pin", "--puk", puk, "--new-pin", NEW_PIN],
                dict(stock, OPENSC_CONF=str(OPENSC_UNBLOCK_CONF)),
            )
            _run([*sign, "-o", str(work / "sig2"), "--login", "--pin", NEW_PIN], stock)

        record(
            "opensc-unlock-pin",
            card_path,
            "3 wrong PINs (pkcs11-tool --login --pin 9999), pkcs11-tool --unlock-pin --puk PUK "
            f"--new-pin {NEW_PIN} (OPENSC_CONF=opensc-unblock.conf), then a signature",
            block_and_unlock,
        )

        def project() -> None:
            with PcscCard.open(READER) as card:
                card.holder()
                card.certificate("auth")
                card.certificate("sign")
                card.serial()
                card.pin_tries_left()
                card.authenticate(NEW_PIN, b"login challenge")
                card.sign("sign", b"document")
                for _ in range(3):
                    with contextlib.suppress(PinIncorrect, PinLocked):
                        card.verify_pin("0000")
                card.unblock_pin(puk, PIN)
                card.verify_pin(PIN)

        record(
            "project-pcsc",
            card_path,
            "pki.cards.pcsc.PcscCard: holder, certificates, serial, tries, login, signature, "
            "3 wrong PINs, PUK unblock",
            project,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
