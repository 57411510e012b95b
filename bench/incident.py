"""A national card incident: suspend every certificate of one chip model in one command.

    nice .venv/bin/python bench/incident.py [--count 600000] [--control 20000] [--keep]

1. `cps-admin init --key-type p256`, then the population straight into the store (no DER: the
   OCSP and CRL side read rows): ``--count`` certificates on ``count/2`` cards of the weak chip
   model, ``--control`` on cards of another model, a few on "reference" cards;
2. `cps-admin serve --role signer` (pre-signs every answer) and `--role status` (mirrors them);
3. reference, same run: the old way, one `cps-admin cert revoke SERIAL --reason
   certificateHold` per certificate, timed on the reference cards and extrapolated;
4. under wrk load on the status role (requests for affected and control certificates; every
   answer that is not a successful OCSP response counts as a failure), one command:
   `cps-admin cert revoke --card-model WEAK --reason certificateHold`; timed until every
   affected answer is re-signed in the store, sampled answers of the status role say
   certificateHold, and a new full CRL listing them and its delta are published;
5. `openssl ocsp` on a sample of affected and control serials against the status role (signature
   checked against the chain, no nonce: the pre-signed answers), `openssl crl` on both CRLs;
6. peak memory of each process: the command, the signer and its signing processes, the status
   role. Goal: under 120 s, no failed answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # bench/ is sys.path[0] when run as a script
from ocsp import post, request_der

GOAL_SECONDS = 120
WEAK = "3BAC00402A001225006480000310009000"         # the CPS3 ATR of SPEC.md §5 (no spaces)
CONTROL = "3B8F8001804F0CA000000306030001000000006A"
REFERENCE = "REFERENCE-SAMPLE"
SAMPLE = 40                                        # openssl ocsp checks on affected serials
WATCH = 20                                         # status-role answers polled for completion
SCRIPT = Path(__file__).resolve().parent / "wrk" / "ocsp_watch.lua"
CONNECTIONS = 8


def populate(auth: Any, cards: int, model: str, start: int) -> list[str]:
    """``cards`` cards of ``model``, an auth and a sign certificate each; returns the serials."""
    from sqlalchemy import insert

    from pki import ids
    from pki.ca.authority import serial_hex
    from pki.store.models import Card, Certificate, Professional

    ca = auth.issuing_ca("PERSONNES")
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=200)
    serials: list[str] = []
    for first in range(start, start + cards, 10_000):
        last = min(start + cards, first + 10_000)
        pros, rows, certs = [], [], []
        for i in range(first, last):
            pros.append({"id": i + 1, "rpps": ids.luhn_complete(f"9{i:09d}"),
                         "profession_code": 10, "given_name": "G", "surname": f"S{i}",
                         "created_at": now})
            rows.append({"id": i + 1, "card_number": f"B{i:011d}", "professional_id": i + 1,
                         "backend": "pcsc", "location": "bench", "status": "active",
                         "created_at": now, "model": model})
            for profile in ("auth", "sign"):
                serial = serial_hex(secrets.randbits(127) | (1 << 120))
                serials.append(serial)
                certs.append({"serial": serial, "ca_id": ca.id, "profile": profile,
                              "subject": f"CN=8{i}", "professional_id": i + 1,
                              "card_id": i + 1, "not_before": not_before,
                              "not_after": not_before + dt.timedelta(days=1095),
                              "status": "active", "shard": 0, "der": b"",
                              "created_at": not_before})
        with auth.store.session() as session:
            session.execute(insert(Professional), pros)
            session.execute(insert(Card), rows)
            session.execute(insert(Certificate), certs)
    return serials


def held_records(db: Path, ca_id: int) -> int:
    """Records of the served responder that say revoked/certificateHold (header bytes 13-14)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute(
            "SELECT count(*) FROM ocsp_record r JOIN ocsp_responder p "
            "ON p.ca_id = r.ca_id AND p.responder_serial = r.responder_serial "
            "WHERE r.ca_id = ? AND substr(r.record, 13, 2) = x'0106'", (ca_id,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


def newest_crls(db: Path, ca_id: int) -> tuple[tuple[int, int] | None,
                                               tuple[int, int, int] | None]:
    """(number, entries) of the newest full CRL and (number, base, entries) of the newest
    delta."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        full = conn.execute("SELECT number, entries FROM crl WHERE ca_id = ? AND kind = 'full' "
                            "ORDER BY number DESC LIMIT 1", (ca_id,)).fetchone()
        delta = conn.execute("SELECT number, base_number, entries FROM crl WHERE ca_id = ? AND "
                             "kind = 'delta' ORDER BY number DESC LIMIT 1", (ca_id,)).fetchone()
        return (tuple(full) if full else None), (tuple(delta) if delta else None)
    finally:
        conn.close()


def answers_hold(url: str, issuer: Any, serials: list[str]) -> bool:
    from cryptography import x509
    from cryptography.x509 import ocsp

    for serial in serials:
        answer = ocsp.load_der_ocsp_response(post(url + "/ocsp", request_der(issuer, serial)))
        if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL \
                or answer.certificate_status != ocsp.OCSPCertStatus.REVOKED \
                or answer.revocation_reason != x509.ReasonFlags.certificate_hold:
            return False
    return True


def run_measured(cmd: list[str]) -> tuple[float, int, float, str]:
    """Run ``cmd`` and reap it with wait4: (seconds, its own peak RSS in KiB, its CPU
    seconds, stdout+stderr)."""
    with tempfile.TemporaryFile() as out_file:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT,
                                env=harness.env())
        _pid, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        text = out_file.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[1:])} exited {proc.returncode}: {text[-800:]}")
    return took, int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime, text


def openssl_ocsp(url: str, ca_pem: Path, chain_pem: Path, serial: str) -> str:
    out = subprocess.run(["openssl", "ocsp", "-issuer", str(ca_pem), "-serial", f"0x{serial}",
                          "-url", url + "/ocsp", "-CAfile", str(chain_pem), "-no_nonce"],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout + out.stderr


def openssl_crl(path: Path, chain_pem: Path) -> str:
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(path), "-CAfile",
                          str(chain_pem), "-noout"], capture_output=True, text=True,
                         timeout=60, check=False)
    return (out.stdout + out.stderr).strip()


def fetch(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return bytes(resp.read())


def wrk_start(url: str, hexfile: Path, duration: int, log: Path, pause_ms: int
              ) -> subprocess.Popen[Any]:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s", str(SCRIPT),
           url, "--", str(hexfile), str(pause_ms)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wrk_result(proc: subprocess.Popen[Any], log: Path) -> dict[str, float]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)          # wrk stops and prints its summary
    proc.wait(60)
    text = log.read_text()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rate is None:
        raise SystemExit(f"error: wrk failed: {text[-500:]}")
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {int(p): float(v) * units[u] for p, v, u in
           re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    failed = re.search(r"OCSP failures: (\d+) of (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    return {"rate": float(rate.group(1)), "p50": pct.get(50, 0.0), "p99": pct.get(99, 0.0),
            "failures": float(failed.group(1)) if failed else -1.0,
            "answers": float(failed.group(2)) if failed else 0.0,
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def role_of(pid: int) -> str:
    """What a process of the signer's tree is, from its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"gone {pid}"
    if "resource_tracker" in cmdline:
        return f"signer spawn helper {pid}"
    if "multiprocessing" in cmdline or "spawn_main" in cmdline:
        return f"signer signing {pid}"
    return f"signer {pid}"


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process so far (/proc/PID/stat), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600_000,
                        help="affected certificates (two per card)")
    parser.add_argument("--control", type=int, default=20_000,
                        help="certificates of another chip model (must stay good)")
    parser.add_argument("--reference-calls", type=int, default=4,
                        help="one-call-per-serial revocations timed for the reference")
    parser.add_argument("--pause-ms", type=int, default=2,
                        help="wrk: pause per connection between requests (0: flat out; the "
                             "default, 8 connections x 1 request / 2 ms, is ~4k req/s, over "
                             "ten times the national OCSP peak of SPEC.md §1)")
    parser.add_argument("--keep", action="store_true", help="keep the home afterwards")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="incident-bench-"))
    try:
        run(args, tmp)
    finally:
        if args.keep:
            print(f"home kept: {tmp / 'home'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    from pki.ca.authority import Authority

    home = tmp / "home"
    db = home / "cps.db"
    harness.admin(home, "init", "--key-type", "p256")
    started = time.monotonic()
    auth = Authority.open(home)
    try:
        weak = populate(auth, args.count // 2, WEAK, 0)
        control = populate(auth, args.control // 2, CONTROL, args.count // 2)
        reference = populate(auth, max(1, (args.reference_calls + 1) // 2), REFERENCE,
                             args.count // 2 + args.control // 2)
        personnes = auth.issuing_ca("PERSONNES")
        chain = auth.chain(personnes.slug)
    finally:
        auth.close()
    total = len(weak) + len(control) + len(reference)
    print(f"population: {total} certificates in {time.monotonic() - started:.0f} s "
          f"({len(weak)} on weak-chip cards, {len(control)} control, {len(reference)} reference)",
          flush=True)
    ca_pem, chain_pem = tmp / "ca.pem", tmp / "chain.pem"
    ca_pem.write_bytes(pem(personnes.certificate))
    chain_pem.write_bytes(b"".join(pem(c.certificate) for c in chain))
    sock = home / "run" / "signer.sock"
    signer = harness.start_role(home, "signer", tmp / "signer.log")
    status = wrk_proc = None
    try:
        presign = harness.wait_until(lambda: harness.unix_healthy(sock), signer,
                                     tmp / "signer.log", "signer", timeout=3600)
        print(f"signer: every answer pre-signed {presign:.0f} s after start", flush=True)
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}"
        status = harness.start_role(home, "status", tmp / "status.log", port=port)
        harness.wait_until(lambda: harness.healthy(url), status, tmp / "status.log", "status",
                           timeout=600)
        status_before = harness.proc_kib(status.pid, "VmHWM")

        # Reference: the old way, one command per serial.
        ref_times = []
        for serial in reference[:args.reference_calls]:
            took, _, _, _ = run_measured([harness.CPS_ADMIN, "--home", str(home), "cert",
                                          "revoke", serial, "--reason", "certificateHold"])
            ref_times.append(took)
        per_call = sorted(ref_times)[len(ref_times) // 2]

        rng = random.Random(18)
        issuer = personnes.certificate
        load = rng.sample(weak, min(700, len(weak))) + rng.sample(control,
                                                                  min(300, len(control)))
        hexfile = tmp / "requests.hex"
        hexfile.write_text("".join(request_der(issuer, s).hex() + "\n" for s in load))
        base_proc = wrk_start(url, hexfile, 5, tmp / "wrk-base.log", args.pause_ms)
        base_proc.wait(30)
        baseline = wrk_result(base_proc, tmp / "wrk-base.log")
        full_before, delta_before = newest_crls(db, personnes.id)
        held_before = held_records(db, personnes.id)
        watch = [*rng.sample(weak, min(WATCH - 1, len(weak))), weak[-1]]

        wrk_proc = wrk_start(url, hexfile, GOAL_SECONDS * 3, tmp / "wrk.log", args.pause_ms)
        time.sleep(2)
        roles = harness.tree(signer.pid) + harness.tree(status.pid)
        cpu_before = cpu_seconds(roles)
        load_before = os.getloadavg()[0]
        t0 = time.monotonic()
        cmd_seconds, cmd_kib, cmd_cpu, cmd_out = run_measured(
            [harness.CPS_ADMIN, "--home", str(home), "cert", "revoke", "--card-model", WEAK,
             "--reason", "certificateHold"])
        marks: dict[str, float] = {"command": cmd_seconds}
        while time.monotonic() - t0 < GOAL_SECONDS * 3:
            now = time.monotonic() - t0
            if "ocsp" not in marks and \
                    held_records(db, personnes.id) >= held_before + len(weak):
                marks["ocsp"] = time.monotonic() - t0
            if "ocsp" in marks and "status" not in marks and answers_hold(url, issuer, watch):
                marks["status"] = time.monotonic() - t0
            if "crl" not in marks:
                # Either a new full CRL lists them (with a delta on it), or, for a burst
                # smaller than the signer's threshold for a new base, a new delta on the
                # current base lists them.
                full, delta = newest_crls(db, personnes.id)
                new_full = full is not None and full_before is not None \
                    and full[0] > full_before[0] and full[1] >= len(weak)
                new_delta = full is not None and delta is not None and delta[1] == full[0] \
                    and (delta_before is None or delta[0] > delta_before[0])
                if new_delta and (new_full or delta[2] >= len(weak)):
                    marks["crl"] = time.monotonic() - t0
            if {"ocsp", "status", "crl"} <= marks.keys():
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        done = max(marks.values())
        cpu_after = cpu_seconds(roles)
        load_after = os.getloadavg()[0]
        role_cpu = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
        signer_cpu = sum(v for pid, v in role_cpu.items() if pid in harness.tree(signer.pid))
        status_cpu = sum(v for pid, v in role_cpu.items() if pid in harness.tree(status.pid))
        load_result = wrk_result(wrk_proc, tmp / "wrk.log")
        wrk_proc = None

        # Verification with openssl, against the status role.
        checked = {"revoked/certificateHold": 0, "good": 0, "bad": 0}
        sample = [(s, True) for s in rng.sample(weak, min(SAMPLE, len(weak)))] + \
            [(s, False) for s in rng.sample(control, min(10, len(control)))]
        for serial, affected in sample:
            text = openssl_ocsp(url, ca_pem, chain_pem, serial)
            ok = "Response verify OK" in text and (
                ("revoked" in text and "Reason: certificateHold" in text) if affected
                else f"0x{serial}: good" in text)
            key = ("revoked/certificateHold" if affected else "good") if ok else "bad"
            checked[key] += 1
            if not ok:
                print(f"openssl ocsp {serial}:\n{text}", file=sys.stderr)
        slug = personnes.slug
        (tmp / "full.crl").write_bytes(fetch(f"{url}/crl/{slug}.crl"))
        (tmp / "delta.crl").write_bytes(fetch(f"{url}/crl/{slug}-delta.crl"))
        crl_full = openssl_crl(tmp / "full.crl", chain_pem)
        crl_delta = openssl_crl(tmp / "delta.crl", chain_pem)
        from cryptography import x509
        full_entries = len(x509.load_der_x509_crl((tmp / "full.crl").read_bytes()))
        delta_entries = len(x509.load_der_x509_crl((tmp / "delta.crl").read_bytes()))

        signer_mib = {role_of(pid): (harness.proc_kib(pid, "VmHWM") / 1024,
                                     role_cpu.get(pid, 0.0))
                      for pid in harness.tree(signer.pid)}
        status_mib = harness.tree_kib(status.pid, "VmHWM") / 1024
    finally:
        if wrk_proc is not None and wrk_proc.poll() is None:
            wrk_proc.kill()
        for proc in (status, signer):
            if proc is not None:
                harness.stop(proc)

    n = len(weak)
    print()
    print(f"{n} certificates of one chip model suspended (certificateHold) out of {total}; "
          f"SQLite; 2 shared cores")
    print(f"  command `cert revoke --card-model ... --reason certificateHold`: "
          f"{marks['command']:.1f} s  ({cmd_out.strip().splitlines()[-1]})")
    print(f"  every affected OCSP answer re-signed in the store: "
          f"{marks.get('ocsp', float('nan')):.1f} s")
    print(f"  status role answers them (sampled {len(watch)}): "
          f"{marks.get('status', float('nan')):.1f} s")
    print(f"  CRLs listing them published, full ({full_entries} entries) + delta "
          f"({delta_entries}): "
          f"{marks.get('crl', float('nan')):.1f} s")
    print(f"  openssl ocsp via the status role: {checked['revoked/certificateHold']} "
          f"revoked/certificateHold + {checked['good']} good, verify OK; {checked['bad']} wrong")
    print(f"  openssl crl: full {crl_full!r}, delta {crl_delta!r}")
    print()
    print(f"{'':46s} {'seconds':>10s}")
    print(f"{'this run: one command, everything published':46s} {done:10.1f}")
    old = per_call * n
    print(f"{'reference: one CLI call per serial':46s} {old:10.0f}   "
          f"({per_call:.2f} s per call, median of {len(ref_times)}, x {n}; "
          f"{old / 86400:.1f} days)")
    print(f"{'ratio':46s} {old / done:10.0f}x")
    total_cpu = cmd_cpu + signer_cpu + status_cpu
    print(f"CPU seconds spent on it: command {cmd_cpu:.1f}, signer with its signing processes "
          f"{signer_cpu:.1f}, status role (incl. answering wrk) {status_cpu:.1f}: "
          f"{total_cpu:.1f} = {total_cpu / 2:.0f} s of both cores "
          f"(load average {load_before:.1f} -> {load_after:.1f} from other jobs)")
    print()
    print(f"status role under wrk (-t1 -c{CONNECTIONS}, {args.pause_ms} ms pause per "
          f"connection, {len(load)} distinct requests):")
    print(f"  before: {baseline['rate']:.0f} req/s, p50 {baseline['p50']:.2f} ms, "
          f"p99 {baseline['p99']:.2f} ms")
    print(f"  during: {load_result['rate']:.0f} req/s, p50 {load_result['p50']:.2f} ms, "
          f"p99 {load_result['p99']:.2f} ms; failed OCSP answers "
          f"{load_result['failures']:.0f} of {load_result['answers']:.0f}, "
          f"socket errors {load_result['socket_errors']:.0f}")
    print()
    print(f"{'process':30s} {'peak MiB':>9s} {'CPU s':>7s}   (VmHWM / ru_maxrss; CPU during it)")
    print(f"{'revoke command':30s} {cmd_kib / 1024:9.0f} {cmd_cpu:7.1f}")
    for name, (mib, cpu) in signer_mib.items():
        print(f"{name:30s} {mib:9.0f} {cpu:7.1f}")
    print(f"{'status role':30s} {status_mib:9.0f} {status_cpu:7.1f}   "
          f"(before the incident {status_before / 1024:.0f} MiB)")
    ok = done < GOAL_SECONDS and load_result["failures"] == 0 and \
        load_result["socket_errors"] == 0 and checked["bad"] == 0 and len(marks) == 4
    print(f"goal: < {GOAL_SECONDS} s, every answer updated, CRLs published, no failed answer -> "
          f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
