"""Issue 14, fifth round: the fourth round's fixes attacked — refresh tokens as
``<family>.<secret>`` with one compare-and-set record per session, the certificate that
logged in checked again at each refresh (and brought by a CIBA approval), the slimmed used
codes and finished transactions, MemoryState's new cost formula and budget — on the three
state backends (memory, Redis, the store).

Each test asserts the SECURE behaviour. Two were findings, fixed (docs/hardening.md, "Issue
14, fifth round"); the others are defences that held.

Not repeated here (held by tests/redteam/test_oidc_round4.py and tests/oidc/): a revoked card
ends its session at the next refresh, the status tier away is 503 with the token kept, a
widened scope writes nothing, garbage refresh tokens, another client's refresh token,
introspection by another client, public-client revocation, logout with an access token."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from cps_login.oidc import ciba as ciba_module
from cps_login.oidc.state import RedisState, SharedState, StoreState, Value
from cps_login.oidc.subject import digest
from cps_login.web import services_of
from pki import ids
from pki.bytelru import ByteLru
from pki.ca import lifecycle
from pki.store.models import Professional
from tests.oidc.conftest import Browser, OidcServer
from tests.oidc.test_ciba import broker_token, poll, start
from tests.oidc.test_refusals import REDIRECT, authorize_url
from tests.redteam.test_oidc_round4 import (
    _introspect,
    _memory,
    _new_card,
    _provider,
    _refresh,
    _tokens,
    _userinfo,
    assert_code_replay_ends_the_tokens_refreshed_from_it,
)


# --- helpers -------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis", "store"])
def backend(request: pytest.FixtureRequest, oidc: OidcServer) -> Iterator[str]:
    """The provider's state on each backend in turn: Redis under a key prefix of its own
    (removed afterwards), the store's ``oidc_state`` table, or the server's own memory."""
    provider = _provider(oidc)
    saved = provider.state
    prefix = f"cps-r5-{secrets.token_hex(6)}:"
    client: Any = None
    if request.param == "redis":
        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2.0,
                             socket_connect_timeout=2.0)
        provider.state = RedisState(client, prefix)
    elif request.param == "store":
        provider.state = StoreState(provider.services.store, oidc.clock)
    try:
        yield str(request.param)
    finally:
        provider.state = saved
        if client is not None:
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)
            client.close()


class _CountingState:
    """A state that counts its reads (and passes everything through)."""

    def __init__(self, inner: SharedState) -> None:
        self.inner = inner
        self.gets = 0

    def put(self, key: str, value: Value, ttl: int) -> bool:
        return self.inner.put(key, value, ttl)

    def get(self, key: str) -> Value | None:
        self.gets += 1
        return self.inner.get(key)

    def cas(self, key: str, old: Value, new: Value | None, ttl: int) -> bool:
        return self.inner.cas(key, old, new, ttl)


def _professional(oidc: OidcServer, name: str) -> str:
    """A professional of the directory (no card): what a CIBA ``login_hint`` needs."""
    env = oidc.env
    env._counter += 1
    rpps = ids.luhn_complete(f"10{env._counter:08d}")
    with env.auth.store.session() as session:
        session.add(Professional(rpps=rpps, profession_code=10, given_name=name,
                                 surname="Test", created_at=dt.datetime.now(dt.UTC)))
    return "8" + rpps


def _approve(oidc: OidcServer, auth_req_id: str, bearer: str, body: bytes | None = None,
             content_type: str = "application/json") -> requests.Response:
    headers = {"Authorization": "Bearer " + bearer}
    if body is not None:
        headers["Content-Type"] = content_type
    return requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve", data=body,
                         headers=headers, timeout=30)


def _deep_size(key: str, value: dict[str, Any]) -> int:
    """What a MemoryState entry takes at least: its key, the dict, each value object, the
    (value, cost, expiry) tuple (dict keys are interned literals: not counted)."""
    size = sys.getsizeof(key) + sys.getsizeof(value) + sys.getsizeof((value, 0, 0.0))
    for item in value.values():
        if item is not None:
            size += sys.getsizeof(item)
    return size


# === findings ==============================================================================
def test_a_replay_ends_the_session_even_when_the_state_is_full(oidc: OidcServer) -> None:
    state = _memory(oidc)
    client = oidc.client(name="Dossier (plein)")
    secret = str(client.client_secret)
    first = _tokens(oidc, client.client_id, secret)
    stolen = _refresh(oidc, client.client_id, secret, first["refresh_token"])
    assert stolen.status_code == 200, stolen.text          # the thief refreshed first
    saved = state._max
    with state._lock:
        state._sweep()                                      # nothing expired left to free
    state._max = state._bytes + 100                         # full: ~600 B revocations won't fit
    try:
        replay = _refresh(oidc, client.client_id, secret, first["refresh_token"])
        assert replay.status_code != 200                    # control: no tokens for the replay
        thief = _refresh(oidc, client.client_id, secret, stolen.json()["refresh_token"])
    finally:
        state._max = saved
    assert thief.status_code == 400, (
        f"replay answered {replay.status_code} {replay.text[:60]}; the thief's next refresh "
        f"{thief.status_code}: the session was not ended")


@pytest.mark.parametrize("query_tail", [
    pytest.param(b"y" * 3000, id="ascii"),
    # a finding before its fix: one raw non-ASCII byte made the stored query a 2-byte-a-
    # character string, ~1.5x what the budget counted
    pytest.param(b"y" * 3000 + b"\xe9", id="one-raw-high-byte")])
def test_the_state_budget_counts_what_an_anonymous_transaction_takes(
        oidc: OidcServer, query_tail: bytes) -> None:
    state = _memory(oidc)
    client = oidc.client(name="Budget")
    parts = urlsplit(authorize_url(oidc, client.client_id, "v" * 50))
    target = f"{parts.path}?{parts.query}&x=".encode() + query_tail
    before = set(state._values)
    with socket.create_connection((str(parts.hostname), int(parts.port or 80)),
                                  timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + parts.netloc.encode() +
                     b"\r\nConnection: close\r\n\r\n")
        head = conn.recv(64)
        while conn.recv(65536):
            pass
    assert head.startswith(b"HTTP/1.1 200"), head               # the transaction was made
    [key] = [k for k in set(state._values) - before if k.startswith("tx:")]
    value, counted, _expiry = state._values[key]
    taken = _deep_size(key, value)
    assert counted >= taken * 85 // 100, (
        f"counted {counted} B for an entry taking at least {taken} B "
        f"(the query: {len(value['qs'])} characters, {sys.getsizeof(value['qs'])} B)")


# === defences that hold ====================================================================
def test_concurrent_refreshes_give_one_answer_at_most_and_end_the_session(
        oidc: OidcServer, backend: str) -> None:
    client = oidc.client(name=f"Course {backend}")
    secret = str(client.client_secret)
    tokens = _tokens(oidc, client.client_id, secret)
    barrier = threading.Barrier(4)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def refresh() -> None:
        barrier.wait()
        answer = _refresh(oidc, client.client_id, secret, tokens["refresh_token"])
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 4
    won = [a for a in answers if a.status_code == 200]
    lost = [a for a in answers if a.status_code != 200]
    assert len(won) <= 1, [a.status_code for a in answers]
    assert all(a.status_code == 400 and a.json()["error"] == "invalid_grant" for a in lost), \
        [(a.status_code, a.text[:60]) for a in lost]
    # a token used twice: the session ends, the winner's new tokens with it
    for answer in won:
        new = answer.json()
        assert _refresh(oidc, client.client_id, secret, new["refresh_token"]).status_code == 400
        assert _userinfo(oidc, new["access_token"]).status_code == 401


def test_rotation_and_replays_on_every_backend(oidc: OidcServer, backend: str) -> None:
    client = oidc.client(name=f"Rotation {backend}")
    secret = str(client.client_secret)
    first = _tokens(oidc, client.client_id, secret)
    family = first["refresh_token"].split(".")[0]
    newest = first
    for _ in range(3):
        answer = _refresh(oidc, client.client_id, secret, newest["refresh_token"])
        assert answer.status_code == 200, answer.text
        newest = answer.json()
        assert newest["refresh_token"].split(".")[0] == family      # one session record
    assert _introspect(oidc, client.client_id, secret, newest["refresh_token"],
                       "refresh_token")["active"] is True
    assert _introspect(oidc, client.client_id, secret, first["refresh_token"],
                       "refresh_token") == {"active": False}        # rotated: inactive
    replay = _refresh(oidc, client.client_id, secret, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _refresh(oidc, client.client_id, secret, newest["refresh_token"]).status_code == 400
    assert _userinfo(oidc, newest["access_token"]).status_code == 401
    # a used code keeps only what refuses it again: its replay still ends the session
    assert_code_replay_ends_the_tokens_refreshed_from_it(oidc, client.client_id, secret)
    # a CIBA session: approved with the card's certificate, refreshed
    ciba_client = oidc.client(name=f"CIBA {backend}", ciba=True)
    ciba_secret = str(ciba_client.client_secret)
    alice = oidc.env.cards["alice"]
    auth_req_id = start(oidc, ciba_client.client_id, ciba_secret, alice).json()["auth_req_id"]
    certificate = base64.b64encode(alice.auth.public_bytes(Encoding.DER)).decode()
    approved = _approve(oidc, auth_req_id, broker_token(oidc, alice),
                        f'{{"certificate": "{certificate}"}}'.encode())
    assert approved.status_code == 200, approved.text
    polled = poll(oidc, ciba_client.client_id, ciba_secret, auth_req_id)
    assert polled.status_code == 200, polled.text
    assert _refresh(oidc, ciba_client.client_id, ciba_secret,
                    polled.json()["refresh_token"]).status_code == 200


def test_a_finished_transaction_keeps_nothing_and_is_refused_again(oidc: OidcServer) -> None:
    state = _memory(oidc)
    client = oidc.client(name="Transaction")
    browser = Browser(oidc)
    tx = browser.open_authorization(authorize_url(oidc, client.client_id, "v" * 50))
    proof = browser.agent(tx, oidc.env.cards["alice"])
    assert proof.status_code == 200, proof.text
    done = browser.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert done.status_code == 302 and done.headers["Location"].startswith(REDIRECT)
    kept = state.get(f"tx:{digest(tx)}")
    assert kept is not None and set(kept) == {"status", "expires_at"}, kept
    again = browser.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert again.status_code == 400 and "Location" not in again.headers
    challenge = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10)
    assert challenge.status_code == 400


def test_a_ciba_approval_cannot_substitute_another_professionals_certificate(
        oidc: OidcServer) -> None:
    """The approver's own card is revoked afterwards: had the session kept the certificate
    the approval body named (another professional's, still good), it would refresh on."""
    card = _new_card(oidc, "r5-approver")
    other = oidc.env.cards["alice"]
    client = oidc.client(name="Messagerie r5", ciba=True)
    secret = str(client.client_secret)
    token = broker_token(oidc, card)
    foreign = base64.b64encode(other.auth.public_bytes(Encoding.DER)).decode()
    auth_req_id = start(oidc, client.client_id, secret, card).json()["auth_req_id"]
    approved = _approve(oidc, auth_req_id, token, f'{{"certificate": "{foreign}"}}'.encode())
    assert approved.status_code == 200, approved.text
    polled = poll(oidc, client.client_id, secret, auth_req_id)
    assert polled.status_code == 200, polled.text
    warm = polled.json()
    # another replica, which never saw the card log in: the foreign certificate is not taken,
    # and with no certificate to check the card against, the approval is refused (round 6)
    auth_req_id = start(oidc, client.client_id, secret, card).json()["auth_req_id"]
    services_of(oidc.app).login._known = ByteLru(1 << 20)
    cold = _approve(oidc, auth_req_id, token, f'{{"certificate": "{foreign}"}}'.encode())
    assert cold.status_code == 401 and cold.json()["error"] == "certificate_required", cold.text
    assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == \
        "authorization_pending"
    refreshed = _refresh(oidc, client.client_id, secret, warm["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text     # the approver's card, still good
    lifecycle.revoke(oidc.env.auth, card.serial, "keyCompromise")
    oidc.env.wait_ocsp(card.serial, "revoked")
    after = _refresh(oidc, client.client_id, secret, refreshed.json()["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant", after.text


def test_malformed_approval_bodies_are_400_or_ignored_never_500(oidc: OidcServer) -> None:
    alice = oidc.env.cards["alice"]
    token = broker_token(oidc, alice)
    refused = [b'{"certificate": "!!!"}', b'{"certificate": "QUJD\\nREVG"}',
               b'{"certificate": "\\ud800"}']
    ignored = [(b"[1, 2]", "application/json"), (b'"x"', "application/json"),
               (b"null", "application/json"), (b'{"certificate": 5}', "application/json"),
               (b'{"certificate": ["a"]}', "application/json"),
               (b'{"certificate": "\xff\xfe"}', "application/json"),
               (b"[" * 100_000, "application/json"),
               (b'{"certificate": "aGVsbG8="}', "application/json"),      # not a certificate
               (b'{"certificate": "' + b"A" * 200_000 + b'"}', "application/json"),
               (b'{"certificate": "AAAA"}', "text/plain")]
    for body in refused:
        client = oidc.client(name="Corps refusé", ciba=True)
        secret = str(client.client_secret)
        auth_req_id = start(oidc, client.client_id, secret, alice).json()["auth_req_id"]
        answer = _approve(oidc, auth_req_id, token, body)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", body
        assert poll(oidc, client.client_id, secret, auth_req_id).json()["error"] == \
            "authorization_pending"                     # nothing was decided
    for body, content_type in ignored:
        client = oidc.client(name="Corps ignoré", ciba=True)
        secret = str(client.client_secret)
        auth_req_id = start(oidc, client.client_id, secret, alice).json()["auth_req_id"]
        answer = _approve(oidc, auth_req_id, token, body, content_type)
        assert answer.status_code == 200, (body[:40], answer.status_code, answer.text[:80])
        polled = poll(oidc, client.client_id, secret, auth_req_id)
        assert polled.status_code == 200 and polled.json()["scope"] == "openid"
    too_large = _approve(oidc, "x" * 43, token, b'{"certificate": "' + b"A" * 300_000 + b'"}')
    assert too_large.status_code == 413


def test_a_refresh_token_of_the_earlier_format_is_refused_cleanly(oidc: OidcServer) -> None:
    """An opaque token with no '.' and its record (``rt:<digest(token)>``, no family), as
    the release before kept it: refused (invalid_grant, no 500), inactive, and naming it as
    a family finds nothing."""
    provider = _provider(oidc)
    client = oidc.client(name="Avant la mise à jour")
    secret = str(client.client_secret)
    current = _tokens(oidc, client.client_id, secret)
    old = secrets.token_urlsafe(32)
    subject = {k: v for k, v in provider.state.get(
        f"rt:{digest(current['refresh_token'].split('.')[0])}")["subject"].items()  # type: ignore[index]
        if k != "cert"}
    provider.state.put(f"rt:{digest(old)}", {
        "client_id": client.client_id, "scope": "openid", "subject": subject, "used": False,
        "expires_at": provider.now() + 3600}, 3600)
    for token in (old, old + "." + secrets.token_urlsafe(32), old + "."):
        answer = _refresh(oidc, client.client_id, secret, token)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", token
        assert _introspect(oidc, client.client_id, secret, token, "refresh_token") == \
            {"active": False}
    revoked = requests.post(oidc.discovery()["revocation_endpoint"], timeout=10,
                            data={"token": old}, auth=(client.client_id, secret))
    assert revoked.status_code == 200
    # none of it touched the session of the same professional's current token
    assert _refresh(oidc, client.client_id, secret, current["refresh_token"]).status_code == 200


def test_ciba_start_reads_a_bounded_number_of_state_values(oidc: OidcServer) -> None:
    provider = _provider(oidc)
    hint = _professional(oidc, "r5-file")
    clients = [oidc.client(name=f"CIBA {i}", ciba=True) for i in range(7)]
    endpoint = oidc.discovery()["backchannel_authentication_endpoint"]

    def ask(i: int) -> requests.Response:
        client = clients[i]
        return requests.post(endpoint, data={"scope": "openid", "login_hint": hint},
                             auth=(client.client_id, str(client.client_secret)), timeout=10)

    opened = sum(ask(i // 3).status_code == 200 for i in range(20))
    assert opened == ciba_module.MAX_OPEN_PER_SUBJECT
    counting = _CountingState(provider.state)
    provider.state = counting
    try:
        refused = ask(6)
    finally:
        provider.state = counting.inner
    assert refused.status_code == 400
    assert counting.gets <= ciba_module.MAX_OPEN_PER_SUBJECT + 5, counting.gets


def test_confidential_clients_cannot_revoke_or_introspect_without_their_secret(
        oidc: OidcServer) -> None:
    client, public = oidc.client(name="Confidentiel"), oidc.client(name="SPA", public=True)
    secret = str(client.client_secret)
    tokens = _tokens(oidc, client.client_id, secret)
    discovery = oidc.discovery()
    for token in (tokens["refresh_token"], tokens["access_token"]):
        bare = requests.post(discovery["revocation_endpoint"], timeout=10,
                             data={"token": token, "client_id": client.client_id})
        assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
        look = requests.post(discovery["introspection_endpoint"], timeout=10,
                             data={"token": token, "client_id": public.client_id})
        assert look.status_code == 401
    assert _refresh(oidc, client.client_id, secret, tokens["refresh_token"]).status_code == 200
