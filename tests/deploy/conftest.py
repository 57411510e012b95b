"""A replicated deployment started for real: PostgreSQL (a fresh database), Redis, one signer,
two status and two broker replicas (``cps-admin serve --role X``, each its own process on its
own loopback port) and HAProxy in front of them (configuration from tests/deploy/haproxy.py).

The home's base URL is the HAProxy address, so the OCSP URL in every certificate (which the
brokers use to check revocation) goes through the front to the status replicas.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pki.store.grants import ROLES
from tests.deploy.haproxy import haproxy_config
from tests.reliability.helpers import CPS_ADMIN, Children, admin, free_port

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
HOST = "127.0.0.1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deploy: the replicated deployment (HAProxy, "
                                       "PostgreSQL, Redis, every role as its own process)")


def _reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


@pytest.fixture(scope="module")
def deploy_db() -> Iterator[str]:
    """A PostgreSQL database of its own (unique name), dropped at the end."""
    if not _reachable(5432) or not _reachable(6379):
        pytest.fail("the deployment test needs PostgreSQL on 127.0.0.1:5432 and Redis on "
                    "127.0.0.1:6379")
    if shutil.which("haproxy") is None:
        pytest.fail("the deployment test needs haproxy (apt-get install haproxy)")
    from sqlalchemy import create_engine, text

    token = secrets.token_hex(4)
    name = f"cps_deploy_{token}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            for role in ROLES:   # the per-role users `db grants` made (cluster-wide)
                conn.execute(text(f'DROP ROLE IF EXISTS "{role_prefix(name)}_{role}"'))
        engine.dispose()


def role_prefix(db_url: str) -> str:
    """The database users' prefix of one deployment (users are cluster-wide; the database
    name makes them unique to it)."""
    return "cpsd" + db_url.rsplit("_", 1)[-1]


@dataclass
class Replica:
    role: str
    port: int
    proc: subprocess.Popen[Any]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _client_net() -> str:
    """A loopback /24 of this run's own (127.a.b.x): the brokers keep per-client challenge
    counters in the shared Redis, so clients of an earlier run must not be this run's."""
    return f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"


@dataclass
class Deployment:
    home: Path
    db_url: str
    redis_url: str
    front_port: int
    kids: Children
    tmp: Path
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    haproxy: subprocess.Popen[Any] | None = None
    client_net: str = field(default_factory=_client_net)

    def client(self, n: int) -> str:
        """Source address of client ``n`` (1-254) of this run."""
        return f"{self.client_net}.{n}"

    @property
    def front(self) -> str:
        return f"http://{HOST}:{self.front_port}"

    def admin(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return admin(self.home, "--db", self.db_url, *args, timeout=timeout)

    def role_db_url(self, role: str) -> str:
        """The store as ``role``'s own database user (``cps-admin db grants``)."""
        user = f"{role_prefix(self.db_url)}_{role}"
        return self.db_url.replace("//postgres@", f"//{user}@", 1)

    def start_role(self, role: str, port: int, name: str) -> Replica:
        log = self.tmp / f"{name}.log"
        args = [CPS_ADMIN, "--home", str(self.home), "--db", self.role_db_url(role), "serve",
                "--role",
                role, "--redis", self.redis_url]
        if role != "signer":
            args += ["--port", str(port)]
        proc = self.kids.start(args, home=self.home, stdout=log.open("ab"),
                               stderr=subprocess.STDOUT)
        replica = Replica(role, port, proc, log)
        self.replicas.setdefault(role, []).append(replica)
        return replica

    def wait_healthy(self, replica: Replica, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if replica.proc.poll() is not None:
                raise AssertionError(f"{replica.role} on {replica.port} exited "
                                     f"{replica.proc.returncode}:\n{tail(replica.log)}")
            if health(replica.url):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica.role} on {replica.port} not healthy after "
                                     f"{timeout:.0f} s:\n{tail(replica.log)}")
            time.sleep(0.1)

    def start_haproxy(self) -> None:
        status = [(HOST, r.port) for r in self.replicas["status"]]
        broker = [(HOST, r.port) for r in self.replicas["broker"]]
        config = self.tmp / "haproxy.cfg"
        config.write_text(haproxy_config((HOST, self.front_port), status, broker,
                                         log_stdout=True))
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        log = self.tmp / "haproxy.log"
        self.haproxy = self.kids.start(["haproxy", "-db", "-f", str(config)],
                                       stdout=log.open("ab"), stderr=subprocess.STDOUT)


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def forget_redis_records(db_url: str, redis_url: str) -> None:
    """Delete the OCSP records this deployment's signer copied to Redis (keys end with its
    responders' serials, which no other home shares); challenges expire on their own."""
    import redis
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            serials = {str(s) for s in conn.execute(
                text("SELECT DISTINCT responder_serial FROM ocsp_record")).scalars()}
    finally:
        engine.dispose()
    client = redis.Redis.from_url(redis_url)
    try:
        stale = [key for key in client.scan_iter(match="cps:ocsp:*", count=1000)
                 if key.decode(errors="replace").rsplit(":", 1)[-1] in serials]
        if stale:
            client.delete(*stale)
    finally:
        client.close()


@pytest.fixture(scope="module")
def deployment(deploy_db: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deploy")
    home = tmp / "home"
    front_port = free_port()
    redis_url = REDIS_URL
    with contextlib.ExitStack() as stack:
        stack.callback(forget_redis_records, deploy_db, redis_url)
        kids = Children()
        stack.callback(kids.close)
        dep = Deployment(home, deploy_db, redis_url, front_port, kids, tmp)
        dep.admin("init", "--key-type", "p256", "--base-url", dep.front, timeout=300)
        # The brokers see HAProxy's address on every request; trusting it for
        # X-Forwarded-For gives their per-client limits the real client (docs/deployment.md).
        (home / "login.json").write_text(json.dumps({"trusted_proxies": [HOST]}))
        # Each role connects as its own user, granted only what it uses (docs/deployment.md).
        dep.admin("db", "grants", "--role-prefix", role_prefix(deploy_db))
        dep.start_role("signer", 0, "signer")
        for n in (1, 2):
            dep.start_role("status", free_port(), f"status{n}")
            dep.start_role("broker", free_port(), f"broker{n}")
        for role in ("status", "broker"):
            for replica in dep.replicas[role]:
                dep.wait_healthy(replica)
        dep.start_haproxy()
        deadline = time.monotonic() + 20
        while not health(dep.front):
            assert time.monotonic() < deadline, "HAProxy front not up:\n" + \
                tail(tmp / "haproxy.log")
            time.sleep(0.1)
        yield dep
