"""Browser login transactions: the authorization page hands the card challenge to the local
agent (``cps-login agent``), the agent posts the card's proof, the browser continues.

A transaction (``tx``) is created by a valid authorization request and bound to the browser
that made it by an HttpOnly SameSite=Lax cookie (only its digest is stored). It moves
``pending`` → ``proven`` (a card proof checked by the broker's ``LoginService``: the same
challenge, signature, path, usage, key location and revocation checks as ``POST /login``, the
same audit) → ``done`` (the code is issued), each step by compare-and-set, so a transaction
works once; it expires after ``TX_TTL`` seconds of the injected clock.

The card challenge belongs to the transaction: drawn when the transaction is made, handed to
the agent in the page's link (and by ``GET /oidc/tx/<tx>/challenge`` to an agent that asks),
claimed by the first proof (``pending`` → ``proving`` by compare-and-set, before any check:
a replayed proof costs a lookup), and replaced by a fresh one when that proof is refused, so
that the agent may try again. It lives as long as the transaction — no longer than a browser
login may take — and signs for nothing else: the proof is checked against this transaction's
challenge only, and the transaction is what the browser's cookie and the one-time key bind.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from cps_login.broker import Authenticated, LoginRequest
from cps_login.challenges import CHALLENGE_BYTES, Challenge
from cps_login.errors import ChallengeRefused, CredentialRefused
from cps_login.oidc.subject import Subject, digest
from pki.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from cps_login.oidc.provider import Provider

TX_TTL = 300
TX_KEEP = 600


class TxRefused(InvalidInput):
    """A transaction that is unknown, expired, used, or not this browser's."""

    code = "invalid_transaction"
    http_status = 400


def _tx_key(tx: str) -> str:
    if not isinstance(tx, str) or not 20 <= len(tx) <= 64:
        raise NotFound("no such login transaction")
    return f"tx:{digest(tx)}"


def _fresh_challenge() -> str:
    return secrets.token_bytes(CHALLENGE_BYTES).hex()


def create(provider: Provider, query_string: str, client_id: str, browser: str
           ) -> tuple[str, bytes]:
    """A new transaction: (its id, its card challenge)."""
    tx = secrets.token_urlsafe(24)
    challenge = _fresh_challenge()
    value = {"qs": query_string, "client_id": client_id, "browser": digest(browser),
             "status": "pending", "expires_at": provider.now() + TX_TTL, "subject": None,
             "challenge": challenge}
    provider.state.put(_tx_key(tx), value, TX_KEEP)
    return tx, bytes.fromhex(challenge)


def challenge_param(value: bytes) -> str:
    """The challenge as the page's link carries it (base64url, no padding)."""
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def _live(provider: Provider, tx: str, status: str) -> dict[str, Any]:
    value = provider.state.get(_tx_key(tx))
    if value is None:
        raise NotFound("no such login transaction")
    if provider.now() >= value["expires_at"]:
        raise TxRefused("the login transaction expired: start again from the service")
    if value["status"] != status:
        raise TxRefused(f"the login transaction is {value['status']}, not {status}")
    return value


def challenge(provider: Provider, tx: str) -> Challenge:
    """The transaction's challenge (the one its page's link carries), while it waits for a
    proof."""
    value = _live(provider, tx, "pending")
    expires = dt.datetime.fromtimestamp(float(value["expires_at"]), dt.UTC)
    return Challenge(bytes.fromhex(str(value["challenge"])), expires)


def proof(provider: Provider, tx: str, body: Any, client: str) -> str:
    """Check the card proof (``POST /login``'s body, plus ``organisation``) for ``tx``; the
    one-time key that ``continue`` wants besides the browser's cookie.

    The key goes back to the agent, which hands it only to the browser that opened it: so a
    party who started a transaction in its own browser and got someone else's card to prove it
    (login fixation) has the cookie but not the key, and that someone has the key but not the
    cookie."""
    value = _live(provider, tx, "pending")
    try:
        parsed = LoginRequest.from_json(body if isinstance(body, dict) else {}, client)
    except CredentialRefused:
        parsed = LoginRequest(b"", (), b"", b"", client=client)     # audited as malformed
    if not parsed.certificate or not parsed.signature:
        # refused and audited as malformed, before the transaction's challenge is touched
        provider.services.login.authenticate(parsed, purpose="oidc", challenge_claimed=True)
    expected = bytes.fromhex(str(value["challenge"]))
    if not hmac.compare_digest(parsed.challenge, expected):
        # audited like POST /login's unknown challenge
        raise provider.services.login.refusal(parsed, ChallengeRefused("challenge_unknown"))
    key = _tx_key(tx)
    proving = {**value, "status": "proving"}
    if not provider.state.cas(key, value, proving, TX_KEEP):    # the challenge, claimed once
        raise TxRefused("the login transaction was used meanwhile")
    secret = secrets.token_urlsafe(24)
    try:
        # every check and audit record of POST /login, the challenge already claimed above;
        # no broker token (the provider signs its own)
        result = provider.services.login.authenticate(parsed, purpose="oidc",
                                                      challenge_claimed=True)
        subject = subject_of(provider, result)
        proven = provider.state.cas(key, proving,
                                    {**proving, "status": "proven",
                                     "subject": subject.to_json(), "key": digest(secret)},
                                    TX_KEEP)
    except BaseException:
        # refused (and audited) or failed: the transaction waits again, with a challenge never
        # seen, so that the agent may ask for it and try again; if even that cannot be
        # written, it expires with TX_TTL — the refusal is what the caller hears either way
        with contextlib.suppress(Exception):
            provider.state.cas(key, proving, {**value, "challenge": _fresh_challenge()},
                               TX_KEEP)
        raise
    if not proven:
        raise TxRefused("the login transaction was used meanwhile")
    return secret


def finish(provider: Provider, tx: str, browser: str | None,
           key: str | None) -> tuple[str, Subject]:
    """The authorization request's query string and who proved it; once, in the browser that
    started it, with the key the proof gave."""
    value = _live(provider, tx, "proven")
    if browser is None or digest(browser) != value["browser"]:
        raise TxRefused("this login was started in another browser")
    if not key or digest(key) != value["key"]:
        raise TxRefused("continue with the link the card agent gave")
    # done: only what refuses it again is kept (no subject, no certificate, no request) for
    # the rest of TX_KEEP — at login rates, what stays behind is what fills the state
    done = {"status": "done", "expires_at": value["expires_at"]}
    if not provider.state.cas(_tx_key(tx), value, done, TX_KEEP):
        raise TxRefused("the login transaction was used meanwhile")
    return str(value["qs"]), Subject.from_json(value["subject"])


def subject_of(provider: Provider, result: Authenticated) -> Subject:
    organisation = result.organisation.structure_id if result.organisation else None
    assurance = result.assurance
    return Subject(sub=result.holder.national_id, given_name=result.holder.given_name,
                   family_name=result.holder.surname,
                   profession_code=result.holder.profession_code, acr=assurance.acr,
                   amr=tuple(assurance.amr), palier=assurance.palier,
                   auth_time=result.auth_time, organisation=organisation,
                   key_storage=result.key_storage, sid=secrets.token_urlsafe(16),
                   cert=base64.b64encode(result.certificate).decode())
