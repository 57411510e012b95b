"""Child process of the crash and concurrency tests: revoke (or hold) serials one by one through
``pki.ca.lifecycle`` and acknowledge each on stdout *after* the call returned (flushed), so the
parent knows exactly which revocations the CA promised.

    python -m tests.reliability.revoker HOME SERIALS_FILE [--hold-every N]

Output lines: ``ACK <serial> <status>`` or ``REFUSED <serial> <code>`` (a lost race in the
concurrency test: the certificate was already revoked by the other process).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.errors import InvalidTransition

REASONS = ("keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged")


def main(argv: list[str]) -> int:
    home, serials_file = Path(argv[0]), Path(argv[1])
    hold_every = int(argv[argv.index("--hold-every") + 1]) if "--hold-every" in argv else 0
    serials = serials_file.read_text().split()
    auth = Authority.open(home)
    try:
        for i, serial in enumerate(serials):
            reason = ("certificateHold" if hold_every and i % hold_every == hold_every - 1
                      else REASONS[i % len(REASONS)])
            try:
                change = lifecycle.revoke(auth, serial, reason, actor="reliability")
            except InvalidTransition as exc:
                print(f"REFUSED {serial} {exc.code}", flush=True)
                continue
            print(f"ACK {change.serial} {change.status}", flush=True)
    finally:
        auth.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
