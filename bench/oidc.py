"""OpenID Connect code-flow logins per CPU-second of the broker role, over HTTP.

    .venv/bin/python bench/oidc.py [--logins 3000] [--rounds 3] [--cards 100] [--threads 6]
                                   [--redis URL] [--db postgresql|URL] [--no-isolate]
                                   [--server gunicorn|asyncio|both]

The roles as deployed: a fresh SoftHSM home (SQLite, or ``--db``); the signer and the status
role as their own processes (OCSP pre-signed, live revocation over HTTP), and the broker role
as its own process (``cps-admin serve --role broker``: gunicorn's arbiter, its worker answering
on the project's asyncio server and pinned to one CPU; one worker without Redis; with
``--redis`` two workers sharing challenges and the provider's state in Redis). One confidential
client (client_secret_basic) is registered as the officer does. With two CPUs or more (and no
``--redis``), this process (the load generator), the signer and the status role run on the
CPUs the broker's worker is not pinned to, as they would on other machines.

One login, every step over HTTP as a relying service, a browser and the local agent make them:
``GET /oidc/authorize`` (client, redirect URI, PKCE S256, nonce checked; transaction stored,
cookie set; the page's link to the agent carries the transaction's challenge) → card proof
``POST /oidc/tx/<tx>/proof``
(signature, path, usage, key location, LIVE OCSP revocation from the status process, audit
record) → ``GET /oidc/tx/<tx>/continue`` (cookie + one-time key; code stored) →
``POST /oidc/token`` (client authenticated, code used once, PKCE verified, ES256 ID token and
RFC 9068 access token signed in SoftHSM's broker token, refresh token stored). The card's own
signature is made by this process with a software RSA-2048 key (a card takes ~150 ms for it,
nothing of which is the broker's).

Figures: logins per CPU-second of the broker role's processes (user + system of the gunicorn
arbiter and workers, from /proc), beside, in the same run against the same broker, the card
login of the broker's own protocol (``/login/challenge`` + ``/login``: the same proof checks,
one token) — and beside Keycloak's published sizing guidance, about 15 password-based logins
per second per vCPU (a reference point from its documentation, not measured here). The
machine's speed (OpenSSL RSA-2048 signatures and a fixed Python workload per second) is
printed before and after each server's rounds: this VM's speed drifts by tens of per cent
between runs, and the login figure moves with it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.harness import free_port, tree
from bench.login import ROOT, cpu_seconds, make_cards, start_role, wait_health
from cps_login.oidc.clients import register
from cps_login.proof import login_message
from pki.ca.authority import Authority
from pki.ca.hierarchy import init_home

ASYNCIO_BROKER = """
import sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from bench.harness import serve_in_thread as serve
from cps_login.config import LoginConfig
from cps_login.web import create_broker_app
from pki.http.server import HttpServer
serve(HttpServer([], create_broker_app(LoginConfig.from_home(Path(sys.argv[1])))),
      int(sys.argv[2]))
print("ready", flush=True)
threading.Event().wait()
"""
KEYCLOAK_PER_VCPU = 15.0       # password logins/s per vCPU, Keycloak's sizing guidance
GOAL = 500.0                   # code-flow logins per broker CPU-second (issue 14)
REDIRECT = "https://service.example/cb"
Card = tuple[rsa.RSAPrivateKey, bytes]


class Client:
    """A relying service + browser + agent on one keep-alive connection to the broker."""

    def __init__(self, port: int, issuer: str, client_id: str, secret: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.issuer = issuer
        self.client_id = client_id
        self.basic = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        self.probe: list[int] | None = None        # broker pids: CPU per step, one client
        self.steps: dict[str, float] = {}

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        before = _cpu(self.probe) if self.probe else 0.0
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if self.probe:
            step = path.split("?")[0].rsplit("/", 1)[-1] if "/tx/" in path else \
                path.split("?")[0]
            self.steps[step] = self.steps.get(step, 0.0) + _cpu(self.probe) - before
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def oidc_login(self, card: Card) -> dict[str, Any]:
        key, der = card
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                             ).rstrip(b"=").decode()
        query = urlencode({"response_type": "code", "client_id": self.client_id,
                           "redirect_uri": REDIRECT, "scope": "openid",
                           "state": secrets.token_hex(8), "nonce": secrets.token_hex(8),
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        status, headers, page = self.call("GET", "/oidc/authorize?" + query)
        found = re.search(rb"tx=([A-Za-z0-9_-]+)&amp;challenge=([A-Za-z0-9_-]{43})", page)
        if status != 200 or found is None:
            raise RuntimeError(f"authorize: {status} {page[:200]!r}")
        tx = found.group(1).decode()
        # the agent signs the challenge the page's link carries (no request to ask for it)
        ch = base64.b64encode(base64.urlsafe_b64decode(found.group(2) + b"=")).decode()
        cookie = headers["set-cookie"].split(";", 1)[0]
        signature = key.sign(login_message(base64.b64decode(ch), self.issuer),
                             padding.PKCS1v15(), hashes.SHA256())
        body = json.dumps({"certificate": base64.b64encode(der).decode(), "challenge": ch,
                           "signature": base64.b64encode(signature).decode()}).encode()
        status, _, raw = self.call("POST", f"/oidc/tx/{tx}/proof", body,
                                   {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"proof: {status} {raw[:200]!r}")
        target = urlsplit(json.loads(raw)["continue"])
        status, headers, _ = self.call("GET", f"{target.path}?{target.query}",
                                       headers={"Cookie": cookie})
        if status != 302:
            raise RuntimeError(f"continue: {status}")
        code = parse_qs(urlsplit(headers["location"]).query)["code"][0]
        form = urlencode({"grant_type": "authorization_code", "code": code,
                          "redirect_uri": REDIRECT, "code_verifier": verifier}).encode()
        status, _, raw = self.call("POST", "/oidc/token", form, {
            "Authorization": self.basic,
            "Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise RuntimeError(f"token: {status} {raw[:200]!r}")
        tokens: dict[str, Any] = json.loads(raw)
        return tokens

    def plain_login(self, card: Card) -> None:
        key, der = card
        status, _, raw = self.call("POST", "/login/challenge")
        ch = json.loads(raw)["challenge"]
        signature = key.sign(login_message(base64.b64decode(ch), self.issuer),
                             padding.PKCS1v15(), hashes.SHA256())
        body = json.dumps({"certificate": base64.b64encode(der).decode(), "challenge": ch,
                           "signature": base64.b64encode(signature).decode()}).encode()
        status, _, raw = self.call("POST", "/login", body, {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"login: {status} {raw[:200]!r}")


def request_floor(make: Any, pid: int, count: int = 2000, path: str = "/health") -> float:
    """Broker CPU seconds per ``GET path`` (by default /health: the server, Flask and the
    app's wrappers, nothing else)."""
    client = make()
    cpu0 = broker_cpu(pid)
    for _ in range(count):
        client.call("GET", path)
    return (broker_cpu(pid) - cpu0) / count


def authorize_path(client_id: str) -> str:
    return "/oidc/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": "openid", "state": "s", "code_challenge_method": "S256",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"})


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def steps(make: Any, cards: list[Card], pid: int, count: int = 300) -> dict[str, float]:
    """Broker CPU per request of the code flow (one client, requests one at a time)."""
    client = make()
    client.probe = tree(pid)
    for i in range(count):
        client.oidc_login(cards[i % len(cards)])
    return {k: v / count for k, v in client.steps.items()}


def broker_cpu(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def broker_system(pid: int) -> float:
    """The kernel's share of ``broker_cpu`` (stime)."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return total


def run_logins(make: Any, cards: list[Card], count: int, threads: int, plain: bool,
               pid: int) -> tuple[float, float, float]:
    """(logins per broker CPU-second, logins per wall second, kernel share of the CPU)."""
    clients = [make() for _ in range(threads)]
    counter = iter(range(count))
    lock = threading.Lock()
    errors: list[str] = []

    def worker(client: Client) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or errors:
                return
            try:
                (client.plain_login if plain else client.oidc_login)(cards[i % len(cards)])
            except Exception as exc:
                errors.append(repr(exc))
                return

    cpu0, sys0, t0 = broker_cpu(pid), broker_system(pid), time.perf_counter()
    workers = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - t0, broker_cpu(pid) - cpu0
    system = broker_system(pid) - sys0
    if errors:
        raise RuntimeError(errors[0])
    return count / cpu, count / wall, system / cpu


def start_broker(kind: str, home: Path, port: int, redis: str | None, cpus: set[int] | None,
                 db: str | None = None) -> subprocess.Popen[bytes]:
    """``cpus``: where the broker may run (its gunicorn worker pins itself to the first);
    None: where this process may."""
    if kind == "gunicorn":
        extra = ["--redis", redis, "--workers", "2"] if redis else ["--workers", "1"]
        return start_role(home, db, "broker", "--port", str(port), *extra, cpus=cpus)
    log = open(home / "run" / "bench-broker-asyncio.log", "wb")  # noqa: SIM115
    script = os.environ.get("BENCH_BROKER_SCRIPT")
    command = [sys.executable, script] if script else [sys.executable, "-c", ASYNCIO_BROKER]
    one = {min(cpus)} if cpus else None         # pinned as the gunicorn worker pins itself
    return subprocess.Popen([*command, str(home), str(port),
                             str(ROOT)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, one)) if one else None)


def measure(kind: str, home: Path, port: int, args: argparse.Namespace, cards: list[Card],
            client_id: str, secret: str, cpus: set[int] | None) -> None:
    issuer = f"http://127.0.0.1:{port}"
    broker = start_broker(kind, home, port, args.redis, cpus, args.db)
    try:
        wait_health(issuer, broker)

        def make() -> Client:
            return Client(port, issuer, client_id, secret)

        warm = make()
        for _attempt in range(600):       # until the signer has pre-signed every card
            try:
                for card in cards:
                    warm.plain_login(card)
                break
            except (RuntimeError, OSError):
                time.sleep(0.5)
                warm = make()
        for card in cards[:20]:
            warm.oidc_login(card)
        server = ("gunicorn (the broker role as deployed: cps-admin serve --role broker, "
                  + ("2 workers, Redis)" if args.redis else "1 worker, state in memory)")
                  if kind == "gunicorn" else
                  "the project's asyncio HTTP server (pki.http.server, as bench/login.py "
                  "serves the broker app), state in memory")
        print(f"--- broker on {server}")
        # Rounds alternate the two logins: this machine's speed drifts by ±10 % over minutes,
        # and the figure is the median round of each, with the range beside it.
        plain_rounds, oidc_rounds = [], []
        for _round in range(args.rounds):
            plain_rounds.append(run_logins(make, cards, args.logins, args.threads, True,
                                           broker.pid))
            oidc_rounds.append(run_logins(make, cards, args.logins, args.threads, False,
                                          broker.pid))
        plain_cpu = statistics.median(r[0] for r in plain_rounds)
        oidc_cpu, oidc_wall, kernel = sorted(oidc_rounds)[len(oidc_rounds) // 2]
        spread = (f"rounds {min(r[0] for r in oidc_rounds):.0f}–"
                  f"{max(r[0] for r in oidc_rounds):.0f}, median of {len(oidc_rounds)}")
        floor = request_floor(make, broker.pid)
        per_step = steps(make, cards, broker.pid)
        page = request_floor(make, broker.pid, 1000, authorize_path(client_id))
        print(f"OIDC code flow (authorize, card proof, continue, token): "
              f"{oidc_cpu:6.0f} logins per broker CPU-second ({1e6 / oidc_cpu:5.0f} µs); "
              f"{oidc_wall:5.0f}/s wall; {args.logins} logins a round ({spread}); "
              f"goal >= {GOAL:.0f}; kernel {kernel:.0%} of the broker's CPU")
        print(f"same broker, its own card login (/login/challenge + /login), same run: "
              f"{plain_cpu:6.0f} logins per broker CPU-second ({1e6 / plain_cpu:5.0f} µs); "
              f"OIDC/own = {oidc_cpu / plain_cpu:.2f}")
        print("broker CPU per request, one client at a time: " + ", ".join(
            f"{k} {v * 1e6:.0f} µs" for k, v in per_step.items()))
        print(f"HTTP floor of this server: {floor * 1e6:.0f} µs CPU per request "
              f"(GET /health, answered without the app); a code-flow login makes 4 "
              f"requests, the own card login 2; "
              f"the authorization page alone, nothing else running: {page * 1e6:.0f} µs")
        print(f"the HTTP server alone (4 x the floor): {4 * floor * 1e6:.0f} µs of the "
              f"{1e6 / oidc_cpu:.0f} µs a code-flow login costs ({4 * floor * oidc_cpu:.0%}); "
              f"the goal ({GOAL:.0f} per CPU-second) allows {1e6 / GOAL:.0f} µs for everything")
        print(f"reference: Keycloak's published sizing guidance, ~{KEYCLOAK_PER_VCPU:.0f} "
              f"password-based logins per second per vCPU (not measured here): "
              f"OIDC card logins here = {oidc_cpu / KEYCLOAK_PER_VCPU:.0f}x that")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(30)


def machine_speed(seconds: float = 1.0) -> str:
    """This machine's speed now, on this process's CPU, for comparing runs made at other
    times or on other machines (this VM's speed drifts by tens of per cent between runs):
    OpenSSL RSA-2048 signatures per second and a fixed pure-Python workload (JSON round
    trip of a small dict) per second — most of the broker's CPU is Python."""
    key = rsa.generate_private_key(65537, 2048)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        key.sign(b"reference", padding.PKCS1v15(), hashes.SHA256())
        count += 1
    rsa_rate = count / (time.perf_counter() - t0)
    sample = {"sub": "810002345678", "amr": ["sc", "pin"], "n": list(range(20)), "x": "y" * 80}
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        for _ in range(100):
            json.loads(json.dumps(sample))
        count += 100
    return (f"machine speed now: OpenSSL RSA-2048 {rsa_rate:,.0f} signatures/s, Python "
            f"{count / (time.perf_counter() - t0) / 1000:,.0f}k JSON round trips/s (one CPU)")


def _admin_sql(statement: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                         autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logins", type=int, default=3000, help="logins a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--server", choices=("gunicorn", "asyncio", "both"), default="both")
    parser.add_argument("--redis", default=None, help="Redis URL: two gunicorn workers")
    parser.add_argument("--db", default=None,
                        help="store URL (default: SQLite in the home); 'postgresql': a new "
                             "database on 127.0.0.1:5432, dropped at the end")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="let the load generator share the broker worker's CPU")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-oidc-"))
    home = tmp / "home"
    port, broker_port = free_port(), free_port()
    base, issuer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{broker_port}"
    created = None
    if args.db == "postgresql":         # a database of its own on the local server, dropped after
        created = f"bench_oidc_{secrets.token_hex(4)}"
        _admin_sql(f"CREATE DATABASE {created}")
        args.db = f"postgresql+psycopg://postgres@127.0.0.1:5432/{created}"
    init_home(home, key_type="rsa2048", base_url=base, db_url=args.db)
    (home / "run").mkdir(exist_ok=True, mode=0o700)
    # every login of the bench comes from 127.0.0.1: no per-address bound on transactions
    login_json = {"issuer": issuer, "redis_prefix": f"bench-oidc-{secrets.token_hex(4)}:",
                  "extra": {"oidc_tx_per_client": 10**9}}
    (home / "login.json").write_text(json.dumps(login_json))
    auth = Authority.open(home, args.db)
    cards = make_cards(auth, args.cards)
    client = register(auth.store, name="Bench service", redirect_uris=[REDIRECT])
    auth.close()
    # The load generator (this process: relying service, browser, agent and the cards'
    # signatures), the signer and the status role run on the CPUs the broker's worker does not
    # pin itself to, as they would run on other machines: on a shared CPU they would evict the
    # broker's caches and the figure would be theirs as much as the broker's.
    everything = os.sched_getaffinity(0)
    broker_cpus: set[int] | None = None
    if args.isolate and len(everything) >= 2 and not args.redis:
        broker_cpus = everything
        os.sched_setaffinity(0, everything - {min(everything)})
    procs = [start_role(home, args.db, "signer"),
             start_role(home, args.db, "status", "--port", str(port))]
    try:
        wait_health(base, procs[1])
        print(f"home: {home}  store: {'SQLite' if not args.db else args.db.split(':')[0]}"
              f"  cards: {args.cards} (RSA-2048)  client threads: {args.threads}"
              f"  CPU cores: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}  "
              + (f"broker worker on CPU {min(broker_cpus)}, load generator, signer and status "
                 f"on CPUs {sorted(os.sched_getaffinity(0))}" if broker_cpus else
                 "load generator, signer, status and broker share the CPUs"))
        kinds = ("gunicorn", "asyncio") if args.server == "both" else (args.server,)
        print(machine_speed())
        for kind in kinds:
            measure(kind, home, broker_port, args, cards, client.client_id,
                    str(client.client_secret), broker_cpus)
            print(machine_speed())
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        if created is not None:
            _admin_sql(f"DROP DATABASE IF EXISTS {created} WITH (FORCE)")
        if args.redis:          # this run's keys only (refresh tokens would stay 8 hours)
            import redis

            r = redis.Redis.from_url(args.redis)
            for key in r.scan_iter(str(login_json["redis_prefix"]) + "*", count=1000):
                r.delete(key)


if __name__ == "__main__":
    main()
