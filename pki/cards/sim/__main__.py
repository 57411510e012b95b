"""``cps-card-sim --vpcd-port 35963 --card-file FILE``: run the software CPS card."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from pki.cards.sim.softcard import SoftCard
from pki.cards.sim.store import CardFile
from pki.cards.sim.vpcd import DEFAULT_PORT, VpcdLink, connect


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cps-card-sim", description="Software CPS card in vpcd's virtual reader."
    )
    p.add_argument("--card-file", required=True, help="the card's chip: created blank if missing")
    p.add_argument(
        "--vpcd-port",
        type=int,
        default=DEFAULT_PORT,
        help="35963 = 'Virtual PCD 00 00', 35964 = '... 00 01'",
    )
    p.add_argument("--vpcd-host", default="127.0.0.1")
    p.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for pcscd's vpcd"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="exit when the reader drops the card instead of re-inserting",
    )
    return p


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.vpcd_port <= 65535:
        print(f"error: --vpcd-port out of range: {args.vpcd_port}", file=sys.stderr)
        return 2
    card_file = CardFile(args.card_file)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        while True:
            card = SoftCard(card_file)  # (re)load the chip on every insertion
            try:
                sock = connect(args.vpcd_host, args.vpcd_port, args.connect_timeout)
            except OSError as exc:
                print(
                    f"error: cannot reach vpcd at {args.vpcd_host}:{args.vpcd_port}: {exc}",
                    file=sys.stderr,
                )
                return 1
            print(
                f"card {card.state.serial.hex()} inserted (vpcd {args.vpcd_host}:{args.vpcd_port})",
                file=sys.stderr,
                flush=True,
            )
            VpcdLink(card, sock).serve()
            print("card removed by the reader", file=sys.stderr, flush=True)
            if args.once:
                return 0
            time.sleep(0.2)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (_Stop, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
