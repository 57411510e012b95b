"""The supervisor and its front, with stand-in role children (no CA, no token: fast).

The stand-ins are small HTTP servers that say which role they are; the supervisor is the real
``pki.roles.supervisor.Supervisor`` run in its own process (it installs signal handlers), so
these tests check routing, readiness, restarts, stops and orphans without the real roles. The
real roles behind the supervisor are tested in tests/serve/test_serve.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pki.roles.front import Front, FrontLimits, route
from tests.roles.processes import alive, free_port, serve_pids

STANDIN = r'''
import http.server, os, signal, socketserver, sys, time
role = sys.argv[1]
where = sys.argv[sys.argv.index("--port") + 1] if "--port" in sys.argv else sys.argv[2]
if os.environ.get("STANDIN_IGNORE_TERM") == role:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("STANDIN_FAIL") == role:
    sys.exit(3)
if os.environ.get("STANDIN_FAIL_ONCE") == role:
    marker = os.environ["STANDIN_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(4)
from pki.cli.serve import die_with_supervisor
die_with_supervisor()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_HEAD(self): self.do_GET()
    def do_GET(self):
        if self.path.endswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/slow":
            time.sleep(5)
        body = ("%s %s %s %s %s" % (role, os.getpid(), self.command, self.path,
                self.headers.get("X-Forwarded-For"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

if where.startswith("/"):
    class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    class UH(H):
        def address_string(self): return "unix"
    if os.path.exists(where): os.unlink(where)
    S(where, UH).serve_forever()
else:
    socketserver.TCPServer.allow_reuse_address = True
    http.server.ThreadingHTTPServer(("127.0.0.1", int(where)), H).serve_forever()
'''

RUNNER = r'''
import os, sys
from pathlib import Path
from pki.cli.serve import RoleOptions
from pki.roles import supervisor as sup
sup.STOP_TIMEOUT = 2.0
sup.BASE_BACKOFF = 0.1
standin, tmp, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
trusted = tuple(n for n in os.environ.get("STANDIN_TRUSTED", "").split(",") if n)
children = []
for role in ("signer", "status", "broker", "patient"):
    child = sup.Child(role, [], f"stand-in {role}")
    child.argv = [sys.executable, os.environ.get("STANDIN_" + role.upper(), standin), role]
    if role == "signer":
        child.socket_path = tmp / "signer.sock"
        child.argv.append(str(child.socket_path))
    else:
        child.port = sup.free_port()
    children.append(child)
try:
    import asyncio
    asyncio.run(sup.Supervisor(children, RoleOptions(port=port), trusted).run())
except sup.SupervisorFailed as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
'''

# A patient stand-in with the real pieces that name a client: the trusted list as run_patient
# builds it (login.json's, here STANDIN_TRUSTED, plus the supervisor's front), TrustedProxies,
# and the sign-in throttle keyed by the address they give. Answers "client scheme".
PATIENT = r'''
import os, sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from cps_login.errors import RateLimited
from cps_login.ratelimit import MemoryFailureCounts, SigninThrottle, ThrottlePolicy
from cps_login.roles import trusted_proxies
from cps_login.web.proxy import TrustedProxies
from pki.cli.serve import die_with_supervisor
from pki.clock import SYSTEM_CLOCK
die_with_supervisor()
port = int(sys.argv[sys.argv.index("--port") + 1])
configured = [n for n in os.environ.get("STANDIN_TRUSTED", "").split(",") if n]
throttle = SigninThrottle(MemoryFailureCounts(SYSTEM_CLOCK), SYSTEM_CLOCK, ThrottlePolicy())

def app(environ, start_response):
    status = "200 OK"
    if environ["PATH_INFO"] != "/health":      # every sign-in fails: a wrong password
        client, account = environ["REMOTE_ADDR"], environ.get("QUERY_STRING", "")
        try:
            throttle.check(account, client)
            throttle.failed(account, client)
            status = "401 Unauthorized"
        except RateLimited:
            status = "429 Too Many Requests"
    body = ("%s %s" % (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"])).encode()
    start_response(status, [("Content-Length", str(len(body)))])
    return [body]

class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
class Quiet(WSGIRequestHandler):
    def log_message(self, *args): pass
make_server("127.0.0.1", port, TrustedProxies(app, trusted_proxies(configured)),
            server_class=Server, handler_class=Quiet).serve_forever()
'''


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    base: str
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        """The latest pid of each role, from the supervisor's start-up lines."""
        return serve_pids(self.log)


Start = Callable[..., Running]


def _request(port: int, method: str, path: str, body: bytes | None = None,
             timeout: float = 10) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def _wait_ready(run: Running, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, run.text()
        try:
            if _request(run.port, "GET", "/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("supervisor never ready:\n" + run.text())


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[Running] = []
    (tmp_path / "standin.py").write_text(STANDIN)
    (tmp_path / "runner.py").write_text(RUNNER)
    (tmp_path / "patient.py").write_text(PATIENT)

    def _start(**env: str) -> Running:
        port = free_port()
        log = tmp_path / f"supervisor-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "standin.py"),
                 str(tmp_path), str(port)], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **env})
        run = Running(proc, f"http://127.0.0.1:{port}", port, log)
        started.append(run)
        return run

    yield _start
    for run in started:
        pids = run.pids().values()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_routes_every_path_to_its_role_and_keeps_the_connection(start: Start) -> None:
    run = start()
    _wait_ready(run)
    head = run.text().splitlines()
    assert head[0].startswith("supervisor pid ") and "front on http://127.0.0.1:" in head[0]
    assert {line.split()[0] for line in head[1:5]} == {"signer", "status", "broker", "patient"}
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    expected = {"/ocsp": "status", "/ocsp/MEMwQTA": "status", "/crl/x.crl": "status",
                "/ca/x.crt": "status", "/login/challenge": "broker",
                "/.well-known/jwks.json": "broker", "/introspect": "broker",
                "/api/whoami": "broker", "/openapi.json": "broker", "/patient/signin": "patient",
                "/espace/records/1/": "patient", "/espace": "patient", "/": "broker"}
    for path, role in expected.items():          # one keep-alive connection for all of them
        conn.request("GET", path)
        resp = conn.getresponse()
        answer = resp.read().decode().split()
        assert resp.status == 200 and answer[0] == role and answer[3] == path, (path, answer)
        assert answer[4] == "127.0.0.1"         # X-Forwarded-For set by the front
    conn.request("POST", "/api/patients", body=b"x" * 100_000)
    resp = conn.getresponse()
    assert resp.status == 201 and resp.read() == b"x" * 100_000
    conn.request("GET", "/api/chunked")
    resp = conn.getresponse()
    assert resp.read() == b"hello chunked world"
    conn.request("HEAD", "/crl/x.crl")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    conn.close()
    status, body, _ = _request(run.port, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def _sign_in(port: int, source: str, account: str,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
    """A failing sign-in through the front from the loopback address ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("POST", f"/patient/signin?{account}", body=b"", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_clients_behind_the_front_keep_their_own_sign_in_bucket(start: Start,
                                                                 tmp_path: Path) -> None:
    """Issue 13 #3: the patient child trusts the front, so 30 failures from one client no
    longer lock every client out (before: all were 127.0.0.1, one bucket)."""
    run = start(STANDIN_PATIENT=str(tmp_path / "patient.py"), STANDIN_TRUSTED="127.0.0.9")
    _wait_ready(run)
    for i in range(30):                       # client_max_failures, on as many accounts
        assert _sign_in(run.port, "127.0.0.2", f"a{i}") == (401, "127.0.0.2 http")
    assert _sign_in(run.port, "127.0.0.2", "a99")[0] == 429
    # Another client: its own bucket. Its own X-Forwarded-* are not believed (it is no proxy).
    assert _sign_in(run.port, "127.0.0.3", "a99",
                    {"X-Forwarded-For": "127.0.0.2", "X-Forwarded-Proto": "https"}) == \
        (401, "127.0.0.3 http")
    # A proxy before the front (login.json's trusted_proxies): its client and scheme pass.
    assert _sign_in(run.port, "127.0.0.9", "a99",
                    {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}) == \
        (401, "198.51.100.7 https")


def test_a_killed_child_is_restarted_and_its_urls_answer_again(start: Start) -> None:
    run = start()
    _wait_ready(run)
    old = run.pids()["status"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = run.pids().get("status")
        if new != old:
            break
        time.sleep(0.1)
    assert new != old and f"status pid {old} exited with status -9" in run.text()
    _wait_ready(run)
    status, body, _ = _request(run.port, "GET", "/ocsp/abc")
    assert status == 200 and body.split()[:2] == [b"status", str(new).encode()]
    assert not alive(old)


def test_sigterm_stops_every_child_even_one_that_ignores_it(start: Start) -> None:
    run = start(STANDIN_IGNORE_TERM="broker")
    _wait_ready(run)
    pids = run.pids()
    assert len(pids) == 5
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=20) == 0, run.text()
    assert "role(s) still running after" in run.text()       # the broker needed SIGKILL
    assert [role for role, pid in pids.items() if alive(pid)] == []


def test_children_die_with_a_killed_supervisor(start: Start) -> None:
    run = start()
    _wait_ready(run)
    pids = run.pids()
    run.proc.kill()
    run.proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [role for role, pid in pids.items() if alive(pid)] == []


def test_a_role_that_never_starts_stops_the_server_with_one_error(start: Start) -> None:
    run = start(STANDIN_FAIL="patient")
    assert run.proc.wait(timeout=30) == 1
    errors = [line for line in run.text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "patient role exited 5 times" in errors[0], run.text()
    assert errors[0].endswith("(last status 3)")
    assert [role for role, pid in run.pids().items() if alive(pid)] == []


def test_a_role_that_failed_to_start_gets_a_fresh_port(start: Start, tmp_path: Path) -> None:
    run = start(STANDIN_FAIL_ONCE="patient", STANDIN_MARKER=str(tmp_path / "failed-once"))
    _wait_ready(run)
    ports = [line.rsplit(":", 1)[1] for line in run.text().splitlines()
             if line.startswith("patient pid ") and "http://" in line]
    assert len(ports) == 2 and ports[0] != ports[1], run.text()
    status, body, _ = _request(run.port, "GET", "/espace")
    assert status == 200 and body.startswith(b"patient ")


# --- the front alone, against misbehaving backends -----------------------------------------

class _Loop:
    """An event loop in a thread, for the front under test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _front(backends: dict[str, int], waiting: list[str] | None = None,
           limits: FrontLimits | None = None) -> tuple[_Loop, int]:
    loop = _Loop()
    front = Front(backends, lambda: waiting or [], limits)

    async def go() -> int:
        server = await front.start("127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    return loop, int(loop.run(go()))  # type: ignore[call-overload]


def _listener(behaviour: str) -> tuple[socket.socket, threading.Thread]:
    """A backend that accepts and then hangs or closes without an answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        conns = []
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            if behaviour == "close":
                conn.close()
            else:
                conns.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


def test_front_answers_503_at_once_for_a_dead_role_and_502_504_for_broken_ones() -> None:
    dead = free_port()
    closing, _ = _listener("close")
    hanging, _ = _listener("hang")
    loop, port = _front({"status": dead, "broker": closing.getsockname()[1],
                         "patient": hanging.getsockname()[1]},
                        limits=FrontLimits(backend_timeout=1.0))
    try:
        began = time.monotonic()
        status, body, headers = _request(port, "GET", "/ocsp/x")
        assert status == 503 and json.loads(body)["role"] == "status"
        assert headers.get("Retry-After") == "1" and time.monotonic() - began < 1.5
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("HEAD", "/crl/x.crl")                  # no body: the connection stays
        resp = conn.getresponse()
        assert resp.status == 503 and resp.read() == b""
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
        assert _request(port, "GET", "/api/whoami")[0] == 502
        began = time.monotonic()
        assert _request(port, "GET", "/espace")[0] == 504
        assert time.monotonic() - began < 3
    finally:
        loop.close()
        closing.close()
        hanging.close()


def test_front_health_waits_for_every_role_and_bounds_what_it_reads() -> None:
    waiting = ["signer"]
    loop, port = _front({}, waiting)
    try:
        status, body, _ = _request(port, "GET", "/health")
        assert status == 503 and json.loads(body) == {"status": "starting",
                                                       "waiting": ["signer"]}
        waiting.clear()
        assert _request(port, "GET", "/health")[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /crl/x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 413")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"20000\r\n")                      # chunked is parsed, within the limit
            assert s.recv(100).startswith(b"HTTP/1.1 413")
    finally:
        loop.close()


def test_upstream_head_drops_hop_by_hop_fields_and_sets_forwarding() -> None:
    from pki.roles.front import _upstream_head

    raw = (b"GET /api/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\nCookie: c=1\r\n\r\n")
    out = _upstream_head(raw, "GET", "/api/x", "10.0.0.1", b"keep-alive, x-secret")
    assert out == (b"GET /api/x HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\n"
                   b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                   b"Connection: close\r\n\r\n")


def test_front_passes_forwarding_fields_of_trusted_proxies_only() -> None:
    from pki.roles.front import _forwarded

    front = Front({}, list, trusted_proxies=("10.1.0.0/16",))
    assert front._trusted("10.1.2.3") and front._trusted("::ffff:10.1.2.3")
    assert not front._trusted("10.2.0.1") and not front._trusted("unix")
    assert not Front({}, list)._trusted("127.0.0.1")
    assert _forwarded({"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"},
                      "10.1.2.3") == ("1.2.3.4, 10.1.2.3", "https")
    assert _forwarded({"x-forwarded-proto": "gopher"}, "10.1.2.3") == ("10.1.2.3", "http")


def test_supervisor_tells_web_children_to_trust_the_front(tmp_path: Path) -> None:
    from pki.roles import supervisor as sup

    assert sup.login_trusted_proxies(tmp_path) == ()
    (tmp_path / "login.json").write_text(json.dumps({"trusted_proxies": ["10.0.0.0/8"]}))
    assert sup.login_trusted_proxies(tmp_path) == ("10.0.0.0/8",)
    from cps_login.roles import trusted_proxies

    os.environ[sup.TRUSTED_FRONT_ENV] = sup.FRONT_ADDRESS
    try:
        assert trusted_proxies(("10.0.0.0/8",)) == ("10.0.0.0/8", "127.0.0.1")
    finally:
        del os.environ[sup.TRUSTED_FRONT_ENV]
    assert trusted_proxies(()) == ()


def test_route_table() -> None:
    assert route("/ocsp") == route("/ocsp/abc") == "status"
    assert route("/ocspx") == "broker"            # a prefix is a path segment, not a string
    assert route("/crl/a.crl") == route("/ca/a.crt") == "status"
    assert route("/espace/static/x.css") == route("/patient/signin") == "patient"
    assert route("/login") == route("/api/whoami") == route("/anything") == "broker"
