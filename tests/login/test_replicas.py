"""Two instances of each public login app on one Redis (a unique key prefix per run): what one
replica starts, the other accepts — once.

* a challenge fetched from broker A is accepted by broker B, and used once only across both,
  also when many threads race on it through both;
* patient sign-in failures counted by patient app A stop sign-ins at patient app B;
* a patient session signed in at A is accepted by B (HMAC, the shared session key file);
* Redis cut: 503 ``shared_state_unavailable``; Redis back: the same broker works again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cps_login import totp
from cps_login.config import LoginConfig
from cps_login.web import create_broker_app, create_patient_app, services_of
from pki import ids
from tests.login.conftest import Env, login_body

REDIS = "redis://127.0.0.1:6379/0"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def replicas(env: Env) -> Iterator[dict[str, Any]]:
    import redis

    prefix = f"test:{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(REDIS)
    client.ping()
    config = LoginConfig.from_home(env.home, redis_url=REDIS, redis_prefix=prefix)
    apps = {"broker_a": create_broker_app(config), "broker_b": create_broker_app(config),
            "patient_a": create_patient_app(config), "patient_b": create_patient_app(config)}
    try:
        yield {name: app.test_client() for name, app in apps.items()}
    finally:
        for app in apps.values():
            services_of(app).close()
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)


def _challenge(client: Any) -> str:
    resp = client.post("/login/challenge")
    assert resp.status_code == 200
    return str(resp.get_json()["challenge"])


def _login(client: Any, env: Env, challenge: str) -> tuple[int, dict[str, Any]]:
    card = env.cards["alice"]
    resp = client.post("/login", json=login_body(card.key, card.auth, challenge, env.base))
    return resp.status_code, resp.get_json()


def test_challenge_from_one_broker_accepted_by_the_other_once(env: Env,
                                                              replicas: dict[str, Any]) -> None:
    a, b = replicas["broker_a"], replicas["broker_b"]
    challenge = _challenge(a)
    status, body = _login(b, env, challenge)
    assert status == 200, body
    for replica in (a, b):
        assert _login(replica, env, challenge) == (401, {"error": "invalid_challenge"})


def test_challenge_used_once_under_a_race_through_both(env: Env,
                                                       replicas: dict[str, Any]) -> None:
    challenge = _challenge(replicas["broker_a"])
    barrier = threading.Barrier(8)
    results: list[int] = []
    lock = threading.Lock()

    def attempt(replica: Any) -> None:
        barrier.wait()
        status, _ = _login(replica, env, challenge)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=attempt, args=(replicas["broker_a" if i % 2 else
                                                               "broker_b"],))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] + [401] * 7


def _patient(env: Env) -> tuple[str, str]:
    """A patient enrolled through the broker and activated: (ins, TOTP secret)."""
    nir = f"2800575{secrets.randbelow(10**6):06d}"
    ins = nir + ids.ins_key(nir)
    _, ch = env.post("/login/challenge")
    card = env.cards["alice"]
    _, tok = env.post("/login", login_body(card.key, card.auth, ch["challenge"], env.base))
    status, body = env.post("/api/patients", {"ins": ins, "given_name": "Rita",
                                              "surname": "Replica", "birth_date": "1980-05-01"},
                            {"Authorization": f"Bearer {tok['access_token']}"})
    assert status == 201, body
    status, act = env.post("/patient/activate", {"ins": ins, "password": PASSWORD,
                                                 "activation_code": body["activation_code"]})
    assert status == 200, act
    return ins, str(act["totp_secret"])


def test_patient_session_from_one_app_accepted_by_the_other(env: Env,
                                                            replicas: dict[str, Any]) -> None:
    ins, secret = _patient(env)
    code = totp.totp(secret, dt.datetime.now(dt.UTC).timestamp())
    resp = replicas["patient_a"].post("/patient/signin",
                                      json={"ins": ins, "password": PASSWORD, "totp": code})
    assert resp.status_code == 200, resp.get_json()
    session = resp.get_json()["session"]
    resp = replicas["patient_b"].get(f"/patient/records/{ins}/history",
                                     headers={"Authorization": f"Bearer {session}"})
    assert resp.status_code == 200, resp.get_json()


def test_signin_failures_at_one_app_limit_the_other(env: Env, replicas: dict[str, Any]) -> None:
    """The (account, client) backoff is shared: failures split over both apps add up."""
    ins, _ = _patient(env)
    limit = env.config.signin_max_attempts
    for i in range(limit):
        replica = replicas["patient_a" if i % 2 else "patient_b"]
        resp = replica.post("/patient/signin", json={"ins": ins, "password": "wrong wrong",
                                                     "totp": "000000"},
                            environ_base={"REMOTE_ADDR": "10.9.8.1"})
        assert resp.status_code == 401
    resp = replicas["patient_a"].post("/patient/signin", json={"ins": ins, "password": "x",
                                                               "totp": "1"},
                                      environ_base={"REMOTE_ADDR": "10.9.8.1"})
    assert (resp.status_code, resp.get_json()["error"]) == (429, "rate_limited")


class TcpProxy:
    """127.0.0.1:port -> Redis, which the test can cut and restore (same port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(OSError):      # wakes the accept() blocked on it
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._open.clear()


def test_redis_down_is_503_and_the_broker_recovers_alone(env: Env) -> None:
    proxy = TcpProxy(("127.0.0.1", 6379))
    proxy.start()
    config = LoginConfig.from_home(env.home, redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                                   redis_prefix=f"test:{secrets.token_hex(6)}:")
    app = create_broker_app(config)
    client = app.test_client()
    try:
        challenge = _challenge(client)
        proxy.cut()
        resp = client.post("/login/challenge")
        assert (resp.status_code, resp.get_json()) == (503, {"error":
                                                             "shared_state_unavailable"})
        assert _login(client, env, challenge) == (503, {"error": "shared_state_unavailable"})
        proxy.start()                                    # same port: Redis is back
        status, body = _login(client, env, _challenge(client))
        assert status == 200, body
    finally:
        proxy.cut()
        services_of(app).close()
