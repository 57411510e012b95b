"""The browser login transaction's own card challenge: in the page's link, claimed once by the
first proof, replaced when that proof is refused, never a challenge of another transaction."""

from __future__ import annotations

import base64
import re
import threading

import requests

from tests.login.conftest import last_login_audit
from tests.oidc.conftest import Browser, OidcServer
from tests.oidc.test_refusals import authorize_url


def _open(oidc: OidcServer) -> tuple[Browser, str, str]:
    """(browser, tx, the link's challenge as the proof carries it: base64)."""
    client = oidc.client()
    browser = Browser(oidc)
    page = browser.session.get(authorize_url(oidc, client.client_id, "v" * 50), timeout=10)
    found = re.search(r"tx=([A-Za-z0-9_-]+)&amp;challenge=([A-Za-z0-9_-]{43})\"", page.text)
    assert found, page.text
    challenge = base64.b64encode(base64.urlsafe_b64decode(found.group(2) + "=")).decode()
    return browser, found.group(1), challenge


def _prove(oidc: OidcServer, tx: str, challenge: str, card: str = "alice",
           **extra: str) -> requests.Response:
    body = oidc.card_proof(oidc.env.cards[card], challenge, **extra)
    return requests.post(f"{oidc.issuer}/oidc/tx/{tx}/proof", json=body, timeout=30)


def test_the_link_carries_the_challenge_the_broker_expects(oidc: OidcServer) -> None:
    browser, tx, challenge = _open(oidc)
    asked = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10).json()
    assert asked["challenge"] == challenge            # the same one, not a new one
    proof = _prove(oidc, tx, challenge)
    assert proof.status_code == 200, proof.text
    done = browser.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert done.status_code == 302 and "code=" in done.headers["Location"]


def test_a_proof_works_once(oidc: OidcServer) -> None:
    _, tx, challenge = _open(oidc)
    assert _prove(oidc, tx, challenge).status_code == 200
    again = _prove(oidc, tx, challenge)
    assert again.status_code == 400 and again.json()["error"] == "invalid_transaction"


def test_another_transactions_challenge_is_refused_and_audited(oidc: OidcServer) -> None:
    _, tx, _ = _open(oidc)
    _, _, other = _open(oidc)
    refused = _prove(oidc, tx, other)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_challenge"
    record = last_login_audit(oidc.env)
    assert record["action"] == "login.refused" and record["reason"] == "challenge_unknown"


def test_a_broker_challenge_is_not_a_transactions(oidc: OidcServer) -> None:
    """A challenge from POST /login/challenge, validly signed, proves no transaction."""
    _, tx, _ = _open(oidc)
    issued = requests.post(f"{oidc.issuer}/login/challenge", timeout=10).json()["challenge"]
    refused = _prove(oidc, tx, issued)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_challenge"


def test_a_refused_proof_replaces_the_challenge(oidc: OidcServer) -> None:
    browser, tx, challenge = _open(oidc)
    refused = _prove(oidc, tx, challenge, broker="http://127.0.0.1:1")   # signed for another
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_credentials"
    stale = _prove(oidc, tx, challenge)                  # the link's, now spent
    assert stale.status_code == 401 and stale.json()["error"] == "invalid_challenge"
    fresh = requests.get(f"{oidc.issuer}/oidc/tx/{tx}/challenge", timeout=10).json()
    assert fresh["challenge"] != challenge
    proof = _prove(oidc, tx, fresh["challenge"])
    assert proof.status_code == 200, proof.text
    done = browser.session.get(proof.json()["continue"], allow_redirects=False, timeout=10)
    assert done.status_code == 302


def test_concurrent_proofs_one_wins(oidc: OidcServer) -> None:
    _, tx, challenge = _open(oidc)
    results: list[int] = []
    lock = threading.Lock()

    def go() -> None:
        status = _prove(oidc, tx, challenge).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(200) == 1, results
    assert all(status == 400 for status in results if status != 200), results
