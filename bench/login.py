"""Login broker, card login and access-decision throughput, in one run.

    .venv/bin/python bench/login.py [--logins 5000] [--seconds 5] [--cards 200] [--threads 8]
                                    [--no-card]

The roles as deployed: the officer (this script) makes a fresh SoftHSM home (SQLite unless
--db) and issues the cards, then starts the signer and the status role as their own processes
(``cps-admin serve --role signer`` / ``--role status`` on the home's base URL). The broker's
services run in THIS process, built like the broker role builds them: no Authority, its own
token CPS-BROKER, revocation over HTTP OCSP from the status process.

* broker logins per CPU-second — ``LoginService.login`` in this process, per login: a fresh
  challenge (issue + atomic consume), parse of the certificate, the card's RSA-2048 PKCS#1 v1.5
  signature verified, path validation to the home's root (cached per leaf after its first
  validation; the uncached cost is printed too), key usage + policy, LIVE revocation: an OCSP
  request over HTTP keep-alive to the status process, the answer's signature, CertID and
  freshness verified in full; then the ES256 access token signed in SoftHSM (broker token) and
  the audit record committed to the hash chain (group commit, SQLite synchronous=FULL) before
  returning. Software keys stand in for cards (``--cards`` distinct certificates, round robin).

  Two figures: logins per CPU-second of this process (``time.process_time``: user + system
  time of all its threads) — the broker's cost, the goal is at least 1,000 — and logins per
  wall-clock second. The status process's own CPU per login is printed beside (from
  /proc/PID/stat), so the whole cost of a login is visible. Which revocation source answered
  is counted from the audit records (all must be ``ocsp``).
* card login p50/p99 — ``cps_login.client.card_login`` against the broker over HTTP: PIN
  verification and RSA-2048 signature by the software CPS card through the real pcscd
  (vpcd reader), challenge and login round trips, full verification as above (``--no-card``
  skips it: it starts pcscd).
* access decisions/s — ``cps_login.access.decide`` (pure function) over a mix of requests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # bench/ is sys.path[0] when run as a script
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cps_login import access
from cps_login.broker import LoginRequest
from cps_login.config import LoginConfig
from cps_login.proof import login_message
from cps_login.services import build_broker_services
from cps_login.web import create_broker_app
from pki import ids
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.http.server import HttpServer
from pki.store.models import Professional

ROOT = Path(__file__).resolve().parents[1]


def make_cards(auth: Authority, n: int) -> list[tuple[rsa.RSAPrivateKey, bytes]]:
    key = rsa.generate_private_key(65537, 2048)   # one key, n certificates: signing cost same
    rpps_list = [ids.luhn_complete(f"2{i:09d}") for i in range(n)]
    with auth.store.session() as session:
        for rpps in rpps_list:
            session.add(Professional(rpps=rpps, profession_code=10, given_name="Bench",
                                     surname="Card", created_at=dt.datetime.now(dt.UTC)))
    issued = auth.issue_many(IssueRequest(profile="auth", public_key=key.public_key(),
                                          rpps=r) for r in rpps_list)
    return [(key, i.der) for i in issued]


def revocation_sources(auth: Authority, after_seq: int) -> dict[str, int]:
    """How many login.success records since ``after_seq`` were answered by OCSP, by a CRL."""
    from sqlalchemy import func, select

    from pki.store.models import AuditRecord

    counts: dict[str, int] = {}
    with auth.store.read() as session:
        for source in ("ocsp", "crl"):
            counts[source] = int(session.execute(
                select(func.count()).select_from(AuditRecord).where(
                    AuditRecord.seq > after_seq, AuditRecord.action == "login.success",
                    AuditRecord.details.like(f'%"revocation_source":"{source}"%'))).scalar_one())
    return counts


def start_role(home: Path, db: str | None, role: str, *args: str,
               cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    """``cps-admin serve --role ROLE`` as its own process (its output to the home's run/);
    ``cpus``: the CPUs it may run on (default: this process's)."""
    log = open(home / "run" / f"bench-{role}.log", "wb")   # noqa: SIM115 - lives with the child
    command = [sys.executable, "-m", "pki.cli.admin", "--home", str(home),
               *(["--db", db] if db else []), "serve", "--role", role, *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the role exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: not ready after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audit_seq(auth: Authority) -> int:
    from sqlalchemy import select

    from pki.store.models import AuditHead

    with auth.store.read() as session:
        return int(session.execute(select(AuditHead.seq)).scalar_one())


def bench_broker(services: object, cards: list[tuple[rsa.RSAPrivateKey, bytes]],
                 count: int, threads: int, issuer: str) -> tuple[float, float, int]:
    """Time ``count`` logins; challenges are fetched and signed by the "cards" beforehand (the
    card's signature is the client's cost, not the broker's: it is printed separately)."""
    login = services.login  # type: ignore[attr-defined]
    requests = []
    for i in range(count):
        key, der = cards[i % len(cards)]
        ch = login.challenge().value
        sig = key.sign(login_message(ch, issuer), padding.PKCS1v15(), hashes.SHA256())
        requests.append(LoginRequest(der, (), ch, sig))
    it = iter(requests)
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                req = next(it, None)
            if req is None:
                return
            try:
                login.login(req)
            except Exception as exc:
                errors.append(repr(exc))
                return

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    cpu_started = time.process_time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if errors:
        raise SystemExit(f"login failed during the bench: {errors[0]}")
    return count / elapsed, count / cpu, count


def bench_client_signing(cards: list[tuple[rsa.RSAPrivateKey, bytes]], n: int = 300) -> float:
    key = cards[0][0]
    t0 = time.perf_counter()
    for _ in range(n):
        key.sign(b"x" * 100, padding.PKCS1v15(), hashes.SHA256())
    return (time.perf_counter() - t0) / n


def bench_decisions(seconds: float) -> float:
    now = dt.datetime.now(dt.UTC)
    doc = access.DocumentState(1, "report", "810000000001")
    record = access.RecordState("295059912345646", care_team=frozenset({"810000000001"}),
                                blocked=frozenset({"810000000009"}),
                                consents={"810000000002": None})
    reqs = [access.AccessRequest(access.Actor("professional", f"81000000000{i % 10}", 10),
                                 "read", now, doc, "break_glass" if i % 7 == 0 else "normal",
                                 "arrest" if i % 7 == 0 else None) for i in range(100)]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for r in reqs:
            access.decide(r, record)
        n += len(reqs)
    return n / (time.perf_counter() - t0)


def bench_card(base: str, auth: Authority, seconds: float, tmp: Path) -> list[float] | str:
    try:
        from cps_login.client import card_login
        from pki.cards.card import HolderData
        from pki.cards.pcsc import PcscCard, wait_for_card
        from pki.cards.pcscd import Pcscd, pcscd_binary
        from pki.cards.personalise import personalise
        from pki.cards.sim import SimulatedCard
    except ImportError as exc:
        return f"card layer unavailable ({exc})"
    if pcscd_binary() is None:
        return "pcscd not installed"
    daemon = Pcscd.ensure(log=tmp / "pcscd.log")
    reader = "Virtual PCD 00 00"
    rpps = ids.luhn_complete("3000000001")
    with auth.store.session() as session:
        session.add(Professional(rpps=rpps, profession_code=10, given_name="Carte",
                                 surname="Bench", created_at=dt.datetime.now(dt.UTC)))
    sim = SimulatedCard(tmp / "card.json")
    sim.insert()
    try:
        wait_for_card(reader, present=True)
        with PcscCard.open(reader) as pc:
            personalise(pc, HolderData(rpps, "Carte", "Bench", 10, "Médecin"),
                        lambda usage, key: auth.issue(IssueRequest(
                            profile=usage, public_key=key, rpps=rpps)).der,  # type: ignore[arg-type]
                        "1234")
        time.sleep(1.0)   # the OCSP responder's watcher picks the new certificate up
        card = PcscCard.open(reader)
        samples: list[float] = []
        stop = time.monotonic() + seconds
        try:
            while time.monotonic() < stop or len(samples) < 20:
                t0 = time.perf_counter()
                card_login(card, "1234", base)
                samples.append(time.perf_counter() - t0)
        finally:
            card.close()
        return samples
    finally:
        sim.remove()
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--logins", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--db", default=None)
    parser.add_argument("--no-card", action="store_true", help="skip the pcscd card login")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-login-"))
    home = tmp / "home"
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    init_home(home, key_type="rsa2048", base_url=base, db_url=args.db)
    (home / "run").mkdir(exist_ok=True, mode=0o700)
    auth = Authority.open(home, args.db)      # the officer: issues the cards
    cards = make_cards(auth, args.cards)
    auth.close()      # its CA session ends here (reopened only for the pcscd card, if measured)
    signer = start_role(home, args.db, "signer")
    status = start_role(home, args.db, "status", "--port", str(port))
    procs = [signer, status]
    try:
        wait_health(base, status)
        run(args, home, base, auth, cards, status, tmp)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def run(args: argparse.Namespace, home: Path, base: str, auth: Authority,
        cards: list[tuple[rsa.RSAPrivateKey, bytes]], status: subprocess.Popen[bytes],
        tmp: Path) -> None:
    broker_port = harness.free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    config = LoginConfig.from_home(home, db_url=args.db, issuer=broker_url)
    services = build_broker_services(config)
    app = create_broker_app(config, services=services)
    harness.serve_in_thread(HttpServer([], app), broker_port)
    print(f"home: {home}  db: {auth.store.dialect}  cards: {args.cards}  "
          f"threads: {args.threads}  CPU cores: {os.cpu_count()}  "
          f"load average: {os.getloadavg()[0]:.1f}")
    print("broker: this process (services built without an Authority, broker token "
          f"CPS-BROKER); status: pid {status.pid} at {base}; CPU figures: time.process_time() "
          "of this process (all threads, user + system); the status process's CPU from /proc")
    for _attempt in range(600):       # until the signer has pre-signed every card's record
        try:
            bench_broker(services, cards, len(cards), args.threads, broker_url)  # warm-up
            break
        except SystemExit:
            time.sleep(0.5)
    start_seq = audit_seq(auth)
    status_cpu = cpu_seconds(status.pid)
    rate, per_cpu, n = bench_broker(services, cards, args.logins, args.threads, broker_url)
    status_cpu = cpu_seconds(status.pid) - status_cpu
    paths = services.login._paths
    took = revocation_sources(auth, start_seq)
    print(f"broker, revocation over HTTP OCSP: {per_cpu:6.0f} logins per CPU-second "
          f"({1e6 / per_cpu:5.0f} µs CPU per login; goal >= 1,000), {rate:6.0f} logins/s wall "
          f"({1e3 / rate * args.threads:.1f} ms per login at {args.threads} threads); "
          f"{n} logins, answered by OCSP {took['ocsp']}, by a CRL {took['crl']}; path cache "
          f"hits {paths.cache_hits}, misses {paths.cache_misses}; status process "
          f"{status_cpu / n * 1e6:.0f} µs CPU per login")

    # uncached path validation cost, for reference
    from cryptography import x509

    from cps_login.pathcheck import PathValidator
    pv = PathValidator(services.trust.anchors, services.trust.intermediates, cache_size=0)
    leaves = [x509.load_der_x509_certificate(d) for _, d in cards[:100]]
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    for leaf in leaves:
        pv.validate(leaf, [], now)
    print(f"uncached path validation: {(time.perf_counter() - t0) / len(leaves) * 1e6:.0f} µs"
          f" per certificate (RSA-2048 CAs)")
    print(f"client-side card signature (software RSA-2048, not in the broker figure): "
          f"{bench_client_signing(cards) * 1e3:.2f} ms")

    samples = "skipped (--no-card)" if args.no_card else \
        bench_card(broker_url, auth, args.seconds, tmp)
    if isinstance(samples, str):
        print(f"card login through pcscd: not measured: {samples}")
    else:
        q = statistics.quantiles(samples, n=100)
        print(f"card login through pcscd (software card, vpcd): n={len(samples)} "
              f"p50 {statistics.median(samples) * 1e3:.1f} ms  p99 {q[98] * 1e3:.1f} ms")
    print(f"access decisions/s: {bench_decisions(args.seconds):,.0f}")
    services.close()


if __name__ == "__main__":
    main()
    os._exit(0)     # the in-thread broker server has no stop
