"""Time to ready at scale: N certificates, the signer's pre-signing, a fresh status replica.

    .venv/bin/python bench/ready.py [--count 2000000] [--db URL] [--workers 2]
                                    [--populate cli|direct] [--reuse HOME] [--keep]

1. `cps-admin init --key-type p256`, then the population: `cps-admin bench-populate --count N`
   (real issuance: built, linted, signed, audited — hours at 2M on a small machine), or with
   ``--populate direct`` certificate rows written straight into the store (no DER), which is
   all the OCSP side reads; ``--reuse HOME`` skips both (a home kept with ``--keep``);
2. `cps-admin serve --role signer`: time until its socket's /health answers (every record
   pre-signed and written to the store), its peak RSS;
3. a fresh `cps-admin serve --role status`: time from start until /health answers 200, and its
   peak RSS (VmHWM of the process tree) — goal: under 3 minutes and 1 GiB at 2,000,000;
4. reference, same run: a bare Python process reading the same `ocsp_record` rows into a dict
   (SQLAlchemy, streamed) — the floor under what the status replica does at start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # bench/ is sys.path[0] when run as a script

GOAL_SECONDS = 180
GOAL_MIB = 1024

# Run in a fresh interpreter: the bare read of every pre-signed record, its time and peak RSS.
BARE_READ = r"""
import json, sys, time
from pathlib import Path
from sqlalchemy import create_engine, text
started = time.monotonic()
engine = create_engine(sys.argv[1])
records = {}
with engine.connect() as conn:
    result = conn.execution_options(stream_results=True, yield_per=50_000).execute(
        text("SELECT ca_id, serial, record FROM ocsp_record"))
    for ca_id, serial, record in result:
        records[(ca_id, bytes(serial) if not isinstance(serial, int) else serial)] = \
            bytes(record)
took = time.monotonic() - started
peak = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
            if l.startswith("VmHWM:"))
print(json.dumps({"rows": len(records), "seconds": took, "peak_kib": peak}))
"""


def direct(home: Path, db: str | None, count: int, revoked_fraction: float) -> None:
    from pki.ca.authority import Authority

    auth = Authority.open(home, db_url=db)
    try:
        harness.populate_store(auth, count, revoked_fraction, keep=False)
    finally:
        auth.close()


def db_url(home: Path, db: str | None) -> str:
    if db:
        return db
    return f"sqlite:///{(home / 'cps.db').resolve()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--revoked-fraction", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=2, help="bench-populate processes")
    parser.add_argument("--populate", choices=["cli", "direct"], default="cli",
                        help="bench-populate (default) or rows straight into the store")
    parser.add_argument("--db", default=None, help="store URL (default: SQLite in the home)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an already populated home (skips init and bench-populate)")
    parser.add_argument("--keep", action="store_true", help="keep the home afterwards")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ready-bench-"))
    home = args.reuse or tmp / "home"
    try:
        run(args, home, tmp)
    finally:
        if not args.keep and args.reuse is None:
            shutil.rmtree(tmp, ignore_errors=True)
        elif args.keep:
            print(f"home kept: {home}")


def run(args: argparse.Namespace, home: Path, tmp: Path) -> None:
    count = args.count
    if args.reuse is None:
        harness.admin(home, "init", "--key-type", "p256", db=args.db)
        started = time.monotonic()
        if args.populate == "direct":
            direct(home, args.db, count, args.revoked_fraction)
            print(f"population (rows straight into the store): {count} certificates in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    if args.reuse is None and args.populate == "cli":
        out = harness.admin(home, "--json", "bench-populate", "--count", str(count),
                            "--revoked-fraction", str(args.revoked_fraction), "--workers",
                            str(args.workers), db=args.db, timeout=6 * 3600)
        populated = json.loads(out.stdout)
        count = int(populated["certificates"])
        print(f"bench-populate: {count} certificates in {time.monotonic() - started:.0f} s "
              f"({populated['certificates_per_second']:.0f}/s, {args.workers} workers)",
              flush=True)
    sock = home / "run" / "signer.sock"
    signer = harness.start_role(home, "signer", tmp / "signer.log", db=args.db)
    status = None
    try:
        presign = harness.wait_until(lambda: harness.unix_healthy(sock), signer,
                                     tmp / "signer.log", "signer", timeout=6 * 3600)
        signer_peak = harness.tree_kib(signer.pid, "VmHWM") / 1024
        print(f"signer: ready (every record pre-signed) {presign:.1f} s after start, "
              f"peak RSS {signer_peak:.0f} MiB", flush=True)
        bare = subprocess.run([sys.executable, "-c", BARE_READ, db_url(home, args.db)],
                              capture_output=True, text=True, check=False, env=harness.env())
        if bare.returncode != 0:
            raise SystemExit(f"error: bare read failed: {bare.stderr.strip()[-500:]}")
        ref = json.loads(bare.stdout)
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}"
        status = harness.start_role(home, "status", tmp / "status.log", port=port, db=args.db)
        ready = harness.wait_until(lambda: harness.healthy(url), status, tmp / "status.log",
                                   "status", timeout=3600)
        peak = harness.tree_kib(status.pid, "VmHWM") / 1024
        rss = harness.tree_kib(status.pid) / 1024
    finally:
        for proc in (status, signer):
            if proc is not None:
                harness.stop(proc)
    print()
    how = ("home reused: " + str(args.reuse) if args.reuse is not None
           else "bench-populate" if args.populate == "cli" else "rows inserted directly")
    print(f"{count} certificates ({how}; store {args.db or 'SQLite'})")
    print(f"{'':44s} {'seconds':>8s} {'peak MiB':>9s}")
    print(f"{'status replica: start -> /health 200':44s} {ready:8.2f} {peak:9.0f}"
          f"   (RSS once ready {rss:.0f} MiB)")
    print(f"{'reference: bare read of the same rows':44s} {ref['seconds']:8.2f} "
          f"{ref['peak_kib'] / 1024:9.0f}   ({ref['rows']} rows into a dict)")
    print(f"{'signer: start -> every record pre-signed':44s} {presign:8.2f} {signer_peak:9.0f}")
    ok = ready < GOAL_SECONDS and peak < GOAL_MIB
    print(f"goal (status): < {GOAL_SECONDS} s and < {GOAL_MIB} MiB -> "
          f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
