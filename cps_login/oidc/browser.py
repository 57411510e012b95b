"""Browser login transactions: the authorization page hands the card challenge to the local
agent (``cps-login agent``), the agent posts the card's proof, the browser continues.

A transaction (``tx``) is created by a valid authorization request and bound to the browser
that made it by an HttpOnly SameSite=Lax cookie (only its digest is stored). It moves
``pending`` → ``proven`` (a card proof checked by the broker's ``LoginService``: the same
challenge, signature, path, usage, key location and revocation checks as ``POST /login``, the
same audit) → ``done`` (the code is issued), each step by compare-and-set, so a transaction
works once; it expires after ``TX_TTL`` seconds of the injected clock.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from cps_login.broker import Authenticated, LoginRequest
from cps_login.challenges import Challenge
from cps_login.errors import CredentialRefused
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


def create(provider: Provider, query_string: str, client_id: str, browser: str) -> str:
    tx = secrets.token_urlsafe(24)
    value = {"qs": query_string, "client_id": client_id, "browser": digest(browser),
             "status": "pending", "expires_at": provider.now() + TX_TTL, "subject": None}
    provider.state.put(_tx_key(tx), value, TX_KEEP)
    return tx


def _live(provider: Provider, tx: str, status: str) -> dict[str, Any]:
    value = provider.state.get(_tx_key(tx))
    if value is None:
        raise NotFound("no such login transaction")
    if provider.now() >= value["expires_at"]:
        raise TxRefused("the login transaction expired: start again from the service")
    if value["status"] != status:
        raise TxRefused(f"the login transaction is {value['status']}, not {status}")
    return value


def challenge(provider: Provider, tx: str, client: str) -> Challenge:
    _live(provider, tx, "pending")
    return provider.services.login.challenge(client)


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
    # every check and audit record of POST /login; no broker token (the provider signs its own)
    result = provider.services.login.authenticate(parsed, purpose="oidc")
    subject = subject_of(provider, result)
    key = secrets.token_urlsafe(24)
    if not provider.state.cas(_tx_key(tx), value,
                              {**value, "status": "proven", "subject": subject.to_json(),
                               "key": digest(key)}, TX_KEEP):
        raise TxRefused("the login transaction was used meanwhile")
    return key


def finish(provider: Provider, tx: str, browser: str | None,
           key: str | None) -> tuple[str, Subject]:
    """The authorization request's query string and who proved it; once, in the browser that
    started it, with the key the proof gave."""
    value = _live(provider, tx, "proven")
    if browser is None or digest(browser) != value["browser"]:
        raise TxRefused("this login was started in another browser")
    if not key or digest(key) != value["key"]:
        raise TxRefused("continue with the link the card agent gave")
    if not provider.state.cas(_tx_key(tx), value, {**value, "status": "done"}, TX_KEEP):
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
                   key_storage=result.key_storage, sid=secrets.token_urlsafe(16))
