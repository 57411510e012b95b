"""The professional's side of a login: challenge from the broker, signature by the card, token.

Used by ``cps-login login`` and the bench. The card signs ``proof.login_message(challenge,
broker)`` where ``broker`` is the URL the user asked for (normalised without a trailing
slash): a broker reached under another name than its issuer URL refuses the signature, and a
man in the middle cannot relay the challenge of another broker.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from cps_login.proof import login_message
from pki.cards.card import Card


class BrokerRefused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        reason = f" ({body['reason']})" if "reason" in body else ""
        message = f": {body['message']}" if isinstance(body.get("message"), str) else ""
        super().__init__(f"broker refused the login: {body.get('error', status)}{reason}"
                         f"{message}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class LoginOutcome:
    access_token: str
    expires_in: int
    token_type: str
    scope: str


def _call(method: str, url: str, body: dict[str, Any] | None, timeout: float,
          bearer: str | None = None) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"broker URL must be http(s): {url!r}")
    headers = {"Accept": "application/json"}
    data = None
    if method == "POST":
        data = json.dumps(body or {}).encode()
        headers["Content-Type"] = "application/json"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - checked
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - checked
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read() or b"{}")
        except ValueError:
            err = {"error": f"HTTP {exc.code}"}
        raise BrokerRefused(exc.code, err if isinstance(err, dict) else {}) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ConnectionError(f"broker {url} unreachable: {exc}") from None
    except ValueError:
        raise ConnectionError(f"broker {url} did not answer JSON") from None


def _post(url: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    answer: dict[str, Any] = _call("POST", url, body, timeout)
    return answer


def broker_get(url: str, *, bearer: str | None = None, timeout: float = 10.0) -> Any:
    """GET a JSON document of the broker (BrokerRefused on an HTTP error)."""
    return _call("GET", url, None, timeout, bearer)


def broker_post(url: str, body: dict[str, Any] | None = None, *, bearer: str | None = None,
                timeout: float = 10.0) -> Any:
    """POST JSON to the broker (BrokerRefused on an HTTP error)."""
    return _call("POST", url, body, timeout, bearer)


def proof_body(card: Card, broker: str, challenge_b64: str,
               organisation_id: str | None = None) -> dict[str, Any]:
    """The card's proof for one challenge: the JSON body of ``POST /login`` (and of a browser
    login transaction's proof). The PIN must have been verified on ``card`` already."""
    base = broker.rstrip("/")
    try:
        challenge = base64.b64decode(challenge_b64, validate=True)
    except ValueError:
        raise ConnectionError("the broker's challenge is not base64") from None
    if len(challenge) != 32:
        raise ConnectionError(f"the broker's challenge has {len(challenge)} bytes, not 32")
    certificate = card.certificate("auth")
    signature = card.sign("auth", login_message(challenge, base))
    # "broker": the URL signed for, so that a broker known under another name can say so.
    body: dict[str, Any] = {
        "certificate": base64.b64encode(certificate.public_bytes(Encoding.DER)).decode(),
        "challenge": challenge_b64, "signature": base64.b64encode(signature).decode(),
        "broker": base}
    if organisation_id:
        body["organisation_id"] = organisation_id
    return body


def card_login(card: Card, pin: str, broker: str, *, organisation_id: str | None = None,
               timeout: float = 10.0) -> LoginOutcome:
    """PIN, challenge, card signature, token. Card errors (wrong PIN...) propagate."""
    base = broker.rstrip("/")
    card.verify_pin(pin)
    challenge_b64 = _post(base + "/login/challenge", None, timeout)["challenge"]
    body = proof_body(card, base, challenge_b64, organisation_id)
    answer = _post(base + "/login", body, timeout)
    return LoginOutcome(answer["access_token"], int(answer["expires_in"]),
                        answer["token_type"], answer.get("scope", ""))
