"""``cps-login approve``: the card holder approves (or denies) back-channel (CIBA) logins.

A relying service started a login for this professional (``POST /oidc/bc-authorize`` with
``login_hint`` = 8+RPPS and a binding message). The holder logs in to the broker with the card
and PIN — the broker's usual card login, so a revoked or held card is refused right there —
then lists the logins waiting for them (``GET /oidc/ciba/pending``, with the card-level broker
token), sees each one's client and binding message, and approves or denies it
(``POST /oidc/ciba/<auth_req_id>/approve|deny``). An approval carries the card's
authentication certificate (the one the broker token is bound to): the broker checks it
again each time the relying service refreshes the session it opens.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.serialization import Encoding

from cps_login.client import broker_get, broker_post, card_login
from pki.cards.card import Card


@dataclass(frozen=True)
class Pending:
    auth_req_id: str
    client_name: str
    binding_message: str
    scope: str
    expires_at: Any

    @classmethod
    def from_json(cls, raw: Any) -> Pending:
        if not isinstance(raw, dict) or not isinstance(raw.get("auth_req_id"), str):
            raise ConnectionError("the broker's list of pending logins is malformed")
        return cls(raw["auth_req_id"], _shown(raw.get("client_name", "")),
                   _shown(raw.get("binding_message", "")), _shown(raw.get("scope", "")),
                   raw.get("expires_at"))


def _shown(value: Any) -> str:
    """Text of the broker's list as it may reach a terminal: controls (C0, DEL, C1: an 8-bit
    CSI), bidi overrides and other unprintable characters escaped, never interpreted."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in str(value))


@dataclass(frozen=True)
class Decision:
    pending: Pending
    approved: bool


def pending_logins(broker: str, token: str, timeout: float = 10.0) -> list[Pending]:
    answer = broker_get(broker.rstrip("/") + "/oidc/ciba/pending", bearer=token, timeout=timeout)
    if not isinstance(answer, list):
        raise ConnectionError("the broker's list of pending logins is not a list")
    return [Pending.from_json(item) for item in answer]


def decide(broker: str, token: str, pending: Pending, approve: bool,
           timeout: float = 10.0, certificate: bytes | None = None) -> None:
    verb = "approve" if approve else "deny"
    body = ({"certificate": base64.b64encode(certificate).decode()}
            if approve and certificate else None)
    broker_post(f"{broker.rstrip('/')}/oidc/ciba/{quote(pending.auth_req_id, safe='')}/{verb}",
                body, bearer=token, timeout=timeout)


def approve_pending(card: Card, pin: str, broker: str, *,
                    choose: Callable[[Pending], bool | None],
                    organisation_id: str | None = None,
                    only: str | None = None) -> list[Decision]:
    """Card login, then one decision per pending login (``choose``: True approves, False
    denies, None leaves it pending). ``only`` restricts to one ``auth_req_id``."""
    token = card_login(card, pin, broker, organisation_id=organisation_id).access_token
    certificate = card.certificate("auth").public_bytes(Encoding.DER)
    decisions = []
    for item in pending_logins(broker, token):
        if only is not None and item.auth_req_id != only:
            continue
        choice = choose(item)
        if choice is None:
            continue
        decide(broker, token, item, choice, certificate=certificate)
        decisions.append(Decision(item, choice))
    return decisions
