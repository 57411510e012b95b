"""OpenID Connect CIBA, poll mode: a relying service starts a login for a professional, the
professional approves it with their card (``cps-login approve``), the service polls.

* ``start`` — ``POST /oidc/bc-authorize`` (client authenticated, ``--ciba`` client):
  ``login_hint`` = ``8`` + RPPS of a professional of the directory, ``scope`` with ``openid``,
  optional ``binding_message`` (shown to the professional) and ``requested_expiry``;
* ``CibaGrant`` — the token endpoint's ``urn:openid:params:grant-type:ciba``:
  ``authorization_pending`` until approved, ``slow_down`` when polled faster than ``interval``
  (which then grows by 5 s, CIBA §11), ``expired_token``, ``access_denied``; tokens once, then
  ``invalid_grant`` (an ``auth_req_id`` works once);
* ``pending`` / ``decide`` — the professional's side, behind a broker access token of a card
  login (acr ``eidas3``: card + PIN; a software key cannot approve).

The requests live in the shared state under ``ciba:<digest>``, and each professional's open
requests under ``ciba-sub:<sub>`` (a short list, changed by compare-and-set).
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc8628.errors import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)
from sqlalchemy import select

from cps_login.errors import CertificateRequired, CredentialRefused
from cps_login.oidc.clients import CIBA_GRANT, Client
from cps_login.oidc.subject import Subject, digest
from cps_login.tokens import ACR_EIDAS_HIGH
from pki.store.models import Professional

if TYPE_CHECKING:
    from cps_login.oidc.provider import Provider

DEFAULT_EXPIRY = 300
MAX_EXPIRY = 600
INTERVAL = 5
MAX_BINDING = 64
MAX_OPEN_PER_SUBJECT = 20        # open requests of all services for one professional
MAX_OPEN_PER_CLIENT = 3          # ... of one service: none can fill the others' room
_HINT = re.compile(r"8[0-9]{11}")


class UnknownUserIdError(OAuth2Error):  # type: ignore[misc]
    error = "unknown_user_id"


class CibaGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = CIBA_GRANT
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "private_key_jwt", "tls_client_auth")
    provider: Provider

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("the client is not registered for CIBA")
        auth_req_id = self.request.form.get("auth_req_id")
        if not auth_req_id:
            raise InvalidRequestError("Missing 'auth_req_id' in request.")
        self.request.client = client
        self.request.user, self.request.ciba_scope = poll(self.provider, auth_req_id, client)

    @hooked  # type: ignore[untyped-decorator]
    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        user: Subject = self.request.user
        scope = self.request.ciba_scope
        token = self.generate_token(user=user, scope=scope,
                                    include_refresh_token=self.request.client
                                    .check_grant_type("refresh_token"))
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def start(provider: Provider, client: Client, form: Any) -> dict[str, Any]:
    """A back-channel authentication request (CIBA §7); OAuth2Error when refused."""
    if not client.ciba:
        raise UnauthorizedClientError("the client is not registered for CIBA")
    scope = client.get_allowed_scope(form.get("scope"))
    if "openid" not in scope.split():
        raise InvalidScopeError("scope must include openid")
    hint = form.get("login_hint") or ""
    if form.get("login_hint_token") or form.get("id_token_hint"):
        raise InvalidRequestError("only login_hint (8 + RPPS) is supported")
    if not _HINT.fullmatch(hint):
        raise InvalidRequestError("login_hint must be the national identifier: 8 + RPPS")
    with provider.services.store.read() as session:
        known = session.execute(select(Professional.id)
                                .where(Professional.rpps == hint[1:])).first()
    if known is None:
        raise UnknownUserIdError("no professional with this identifier")
    binding = form.get("binding_message") or ""
    # printable only: no C0/C1 controls, DEL, bidi overrides or other format characters,
    # which could make a terminal or a page show the professional another text
    if len(binding) > MAX_BINDING or not binding.isprintable():
        raise InvalidRequestError(f"binding_message: at most {MAX_BINDING} printable characters")
    try:
        expiry = int(form.get("requested_expiry") or DEFAULT_EXPIRY)
    except ValueError:
        raise InvalidRequestError("requested_expiry must be a number of seconds") from None
    expiry = max(30, min(expiry, MAX_EXPIRY))
    auth_req_id = secrets.token_urlsafe(32)
    now = provider.now()
    value = {"client_id": client.client_id, "client_name": client.name, "sub": hint,
             "scope": scope, "binding_message": binding, "status": "pending",
             "expires_at": now + expiry, "interval": INTERVAL, "last_poll": 0,
             "subject": None}
    _index(provider, hint, auth_req_id, now + expiry, client.client_id)   # may refuse
    provider.state.put(f"ciba:{digest(auth_req_id)}", value, expiry + MAX_EXPIRY)
    provider.services.audit.record("oidc.ciba_start", hint,
                                   {"client_id": client.client_id}, actor=client.client_id)
    return {"auth_req_id": auth_req_id, "expires_in": expiry, "interval": INTERVAL}


def _index(provider: Provider, sub: str, auth_req_id: str, expires_at: int,
           client_id: str) -> None:
    """Add the request to the professional's open ones: at most MAX_OPEN_PER_CLIENT per
    service (beyond, refused for that service only), MAX_OPEN_PER_SUBJECT in all."""
    key = f"ciba-sub:{sub}"
    for _ in range(20):
        current = provider.state.get(key)
        now = provider.now()
        # still open: not expired, and neither collected nor denied (approved but not yet
        # collected counts: its tokens are still to come)
        open_ = [e for e in (current or {}).get("open", []) if e[1] > now and _still_open(
            provider, e[0])]
        if sum(1 for e in open_ if e[2:] == [client_id]) >= MAX_OPEN_PER_CLIENT:
            raise InvalidRequestError("this service has too many open requests for this "
                                      "professional")
        if len(open_) >= MAX_OPEN_PER_SUBJECT:
            raise InvalidRequestError("too many open requests for this professional")
        new = {"open": [*open_, [auth_req_id, expires_at, client_id]]}
        if current is None:
            if provider.state.put(key, new, MAX_EXPIRY * 2):
                return
        elif provider.state.cas(key, current, new, MAX_EXPIRY * 2):
            return
    raise InvalidRequestError("busy, try again")


def _still_open(provider: Provider, auth_req_id: str) -> bool:
    value = provider.state.get(f"ciba:{digest(auth_req_id)}")
    return value is not None and value.get("status") in ("pending", "approved")


def poll(provider: Provider, auth_req_id: str, client: Client) -> tuple[Subject, str]:
    key = f"ciba:{digest(auth_req_id)}"
    value = provider.state.get(key)
    if value is None or value["client_id"] != client.client_id:
        raise InvalidGrantError("unknown auth_req_id")
    now = provider.now()
    if value["status"] == "done":
        raise InvalidGrantError("auth_req_id already used")
    if value["status"] == "denied":
        raise AccessDeniedError("the professional denied the request")
    if now >= value["expires_at"]:
        # approved or not: the client was told the request ends at expires_in (CIBA §7.3)
        raise ExpiredTokenError()
    if value["status"] == "approved":
        if not provider.state.cas(key, value, {**value, "status": "done"}, MAX_EXPIRY):
            raise InvalidGrantError("auth_req_id already used")
        return Subject.from_json(value["subject"]), str(value["scope"])
    if now - int(value["last_poll"]) < int(value["interval"]):
        provider.state.cas(key, value, {**value, "last_poll": now,
                                        "interval": int(value["interval"]) + 5}, MAX_EXPIRY * 2)
        raise SlowDownError()
    provider.state.cas(key, value, {**value, "last_poll": now}, MAX_EXPIRY * 2)
    raise AuthorizationPendingError()


def approver(provider: Provider, bearer: str) -> dict[str, Any]:
    """Claims of the broker token of a card login (card + PIN); PermissionError otherwise."""
    # The broker's audience and its own client id: a relying service's OIDC access token
    # (another audience, its client_id) is refused even when it came from a card login.
    claims = provider.services.validator.validate(bearer)
    if claims.get("client_id") != provider.services.config.client_id:
        raise PermissionError("approving a login needs the broker's own card-login token")
    if claims.get("acr") != ACR_EIDAS_HIGH or "hwk" not in claims.get("amr", []) or \
            claims.get("cps_key_location") != "card":
        raise PermissionError("approving a login needs a card login (card + PIN)")
    return claims


def pending(provider: Provider, claims: dict[str, Any]) -> list[dict[str, Any]]:
    sub = str(claims["sub"])
    index = provider.state.get(f"ciba-sub:{sub}") or {}
    now = provider.now()
    out = []
    for auth_req_id, expires_at, *_client in index.get("open", []):
        if expires_at <= now:
            continue
        value = provider.state.get(f"ciba:{digest(auth_req_id)}")
        if value is None or value["sub"] != sub or value["status"] != "pending":
            continue
        out.append({"auth_req_id": auth_req_id, "client_name": value["client_name"],
                    "binding_message": value["binding_message"], "scope": value["scope"],
                    "expires_at": value["expires_at"]})
    return out


def decide(provider: Provider, claims: dict[str, Any], auth_req_id: str,
           approve: bool, certificate: bytes | None = None) -> None:
    """Approve or deny; LookupError when not this professional's open request.
    ``certificate``: the DER of the card's certificate the approver logged in with (its
    SHA-256 must be the broker token's ``cnf``), kept to check it again when the session's
    refresh token is used."""
    key = f"ciba:{digest(auth_req_id)}"
    value = provider.state.get(key)
    sub = str(claims["sub"])
    if value is None or value["sub"] != sub:
        raise LookupError("no such request for this professional")
    if value["status"] != "pending" or provider.now() >= value["expires_at"]:
        raise LookupError("the request is no longer pending")
    if approve:
        subject = provider.subject_of_token(claims, secrets.token_urlsafe(16), certificate)
        # The card logged in up to a broker token's lifetime ago: checked again now, as a
        # refresh checks it, so a card revoked since cannot approve (CredentialRefused 401,
        # RevocationUnavailable 503; the request stays pending, nothing written). Its
        # certificate comes with the approval or from this broker's own logins; neither (an
        # approval sent to another replica without it): refused, never approved unchecked.
        if not subject.cert:
            raise CertificateRequired()
        try:
            provider.services.login.recheck(subject.certificate)
        except CredentialRefused as exc:
            provider.services.audit.record(
                "oidc.ciba_refused", sub,
                {"client_id": value["client_id"], "reason": exc.reason}, actor=sub)
            raise
        new = {**value, "status": "approved", "subject": subject.to_json()}
    else:
        new = {**value, "status": "denied"}
    if not provider.state.cas(key, value, new, MAX_EXPIRY * 2):
        raise LookupError("the request is no longer pending")
    provider.services.audit.record("oidc.ciba_" + ("approved" if approve else "denied"), sub,
                                   {"client_id": value["client_id"]}, actor=sub)
