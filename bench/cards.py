"""Card middleware bench: APDU round trips through pcscd, signatures/s per backend, and the time
of a full card authentication (select, verify PIN, sign). Bounded: ~2 s per measurement.

    .venv/bin/python bench/cards.py

Goals: APDU round trip < 1 ms; full authentication < 20 ms.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pki.cards.card import HolderData
from pki.cards.opensc import OPENSC_PKCS11, use_opensc_conf
from pki.cards.pcsc import PcscCard, wait_for_card
from pki.cards.pcscd import Pcscd
from pki.cards.personalise import personalise
from pki.cards.sim import SimulatedCard
from pki.cards.testing import ThrowawayIssuer

READER = "Virtual PCD 00 00"
PIN = "1234"
HOLDER = HolderData("10003456789", "Jeanne", "Martin", 10, "Médecin")
BUDGET = 2.0


def rate(fn: Callable[[], object], budget: float = BUDGET) -> tuple[float, list[float]]:
    """Calls per second over ``budget`` seconds, and the per-call latencies (s)."""
    latencies: list[float] = []
    end = time.perf_counter() + budget
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
    return len(latencies) / sum(latencies), latencies


def show(name: str, per_s: float, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1 if len(ms) > 1 else 0]
    print(f"{name:<52} {per_s:>9.1f}/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   (n={len(ms)})")


def bench_pcsc(tmp: Path, issuer: ThrowawayIssuer) -> None:
    sim = SimulatedCard(tmp / "card.json")
    sim.insert()
    wait_for_card(READER)
    try:
        with PcscCard.open(READER) as card:
            personalise(card, HOLDER, issuer.callback(HOLDER), PIN)
        with PcscCard.open(READER) as card:
            status = bytes.fromhex("0020000100")[:4]  # VERIFY, no body: reads the PIN counter
            show(
                "PC/SC sim: APDU round trip (VERIFY status)",
                *rate(lambda: card.transmit_raw(status)),
            )
            card.verify_pin(PIN)
            show(
                "PC/SC sim: RSA-2048 signatures (MSE+PSO, in txn)",
                *rate(lambda: card.sign("auth", b"x")),
            )
            show(
                "PC/SC sim: full auth, open connection",
                *rate(lambda: card.authenticate(PIN, os.urandom(32))),
            )

        def connect_and_authenticate() -> None:
            with PcscCard.open(READER) as fresh:
                fresh.authenticate(PIN, os.urandom(32))

        show("PC/SC sim: full auth incl. connect+disconnect", *rate(connect_and_authenticate))
        if Path(OPENSC_PKCS11).exists():
            bench_opensc(tmp)
    finally:
        sim.remove()


def bench_opensc(tmp: Path) -> None:
    """OpenSC in a child process (its PKCS#11 state stays out of this one); the card is served
    by this process's vpcd thread meanwhile."""
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pki.cards.opensc import OPENSC_PKCS11, use_opensc_conf
use_opensc_conf()
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module
m = Pkcs11Module(OPENSC_PKCS11)
card = Pkcs11Card(m, next(t.label for t in m.lib.get_tokens()))
card.verify_pin({PIN!r})
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < {BUDGET}:
    card.sign("auth", b"x"); n += 1
print(n / (time.perf_counter() - t0))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        per_s = float(out.stdout.strip())
        print(
            f"{'OpenSC PKCS#11 (PIV view of the sim): signatures':<52} {per_s:>9.1f}/s"
            f"   ~{1000 / per_s:7.3f} ms each"
        )
    else:
        print(f"OpenSC PKCS#11: failed: {out.stderr.strip().splitlines()[-1:]}")


def bench_softhsm(tmp: Path, issuer: ThrowawayIssuer) -> None:
    tokens = tmp / "tokens"
    tokens.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "BENCH",
            "--so-pin",
            "87654321",
            "--pin",
            "0000",
        ],
        check=True,
        capture_output=True,
    )
    from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module, Pkcs11Personaliser

    module = Pkcs11Module()
    personalise(
        Pkcs11Personaliser(module, "BENCH", "87654321", "0000"),
        HOLDER,
        issuer.callback(HOLDER),
        PIN,
    )
    with Pkcs11Card(module, "BENCH") as card:
        card.verify_pin(PIN)
        show("SoftHSM token: RSA-2048 signatures", *rate(lambda: card.sign("auth", b"x")))
    module.finalize()


def main() -> None:
    started = time.perf_counter()
    issuer = ThrowawayIssuer()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        use_opensc_conf()
        with Pcscd.ensure(log=tmp / "pcscd.log") as daemon:
            print(
                "pcscd:",
                "started for the bench" if daemon.started_here else "already running, reused",
            )
            bench_pcsc(tmp, issuer)
        if Path("/usr/lib/softhsm/libsofthsm2.so").exists():
            (tmp / "hsm").mkdir()
            bench_softhsm(tmp / "hsm", issuer)
    print(
        "goals: APDU round trip < 1 ms, full authentication < 20 ms;",
        f"bench took {time.perf_counter() - started:.1f} s",
    )


if __name__ == "__main__":
    main()
