"""Blueprint ``oidc``: the provider's HTTP face at the broker's issuer URL.

``/.well-known/openid-configuration``; ``/oidc/authorize`` (page handing the challenge to the
local agent), ``/oidc/tx/<tx>/challenge|proof|continue``; ``/oidc/token``, ``/oidc/userinfo``,
``/oidc/introspect``, ``/oidc/revoke``, ``/oidc/logout``; CIBA: ``/oidc/bc-authorize``,
``/oidc/ciba/pending``, ``/oidc/ciba/<auth_req_id>/approve|deny``. The JWKS stays at
``/.well-known/jwks.json`` (blueprint ``broker``).
"""

from __future__ import annotations

import base64
import functools
import html
import ipaddress
import secrets
from typing import Any
from urllib.parse import quote

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from flask import Blueprint, Response, current_app, jsonify, make_response, request

from cps_login.errors import TokenInvalid
from cps_login.oidc import browser, ciba
from cps_login.oidc.clients import SCOPES as CLIENT_SCOPES
from cps_login.oidc.provider import OAuthRequest, Provider, StoredRequest

bp = Blueprint("oidc", __name__)
EXTENSION = "cps_login.oidc"
TX_COOKIE = "cps-oidc-browser"
AGENT_URL = "http://127.0.0.1:24727/authorize"
MAX_QUERY = 4096
SCOPES = list(CLIENT_SCOPES)
CLAIMS = ["sub", "SubjectNameID", "SubjectRefPro", "SubjectOrganization",
          "SubjectOrganizationID", "SubjectRole", "given_name", "family_name",
          "preferred_username", "acr", "amr", "auth_time", "sid", "nonce"]


def provider() -> Provider:
    return current_app.extensions[EXTENSION].get()  # type: ignore[no-any-return]


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def discovery(p: Provider) -> dict[str, Any]:
    url = p.url
    auth_methods = ["client_secret_basic", "private_key_jwt", "tls_client_auth"]
    return {
        "issuer": p.issuer,
        "authorization_endpoint": url("/oidc/authorize"),
        "token_endpoint": url("/oidc/token"),
        "userinfo_endpoint": url("/oidc/userinfo"),
        "jwks_uri": url("/.well-known/jwks.json"),
        "introspection_endpoint": url("/oidc/introspect"),
        "revocation_endpoint": url("/oidc/revoke"),
        "end_session_endpoint": url("/oidc/logout"),
        "backchannel_authentication_endpoint": url("/oidc/bc-authorize"),
        "backchannel_token_delivery_modes_supported": ["poll"],
        "backchannel_user_code_parameter_supported": False,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token",
                                  "urn:openid:params:grant-type:ciba"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [p.services.tokens.key.alg],
        "userinfo_signing_alg_values_supported": [],
        "token_endpoint_auth_methods_supported": [*auth_methods, "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": [*auth_methods, "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": CLAIMS,
        "acr_values_supported": ["eidas3", "eidas1"],
        "tls_client_certificate_bound_access_tokens": False,
        "authorization_response_iss_parameter_supported": False,
        "request_parameter_supported": False,
        "claims_parameter_supported": False,
        **_mtls_aliases(p),
    }


def _mtls_aliases(p: Provider) -> dict[str, Any]:
    """RFC 8705 §5: where tls_client_auth clients reach the client-authenticated endpoints —
    the broker's mutual-TLS port, when login.json's ``extra.mtls_url`` names it."""
    base = str(p.services.config.extra.get("mtls_url", "")).rstrip("/")
    if not base:
        return {}
    return {"mtls_endpoint_aliases": {
        "token_endpoint": base + "/oidc/token",
        "introspection_endpoint": base + "/oidc/introspect",
        "revocation_endpoint": base + "/oidc/revoke",
        "backchannel_authentication_endpoint": base + "/oidc/bc-authorize"}}


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    response = jsonify(discovery(provider()))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- authorization code flow in the browser -----------------------------------------------
def _page(title: str, body: str, status: int = 200) -> Response:
    text = (f"<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")
    response = make_response(text, status)
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response.headers["X-Frame-Options"] = "DENY"
    return _no_store(response)


def _error_page(error: OAuth2Error) -> Response:
    """An authorization error without a trustworthy redirect URI: shown, never redirected."""
    text = f"{error.error}: {error.description or ''}"
    return _page("Connexion refusée", f"<p>{html.escape(text)}</p>", error.status_code or 400)


def _refused(description: str) -> Response:
    return _error_page(InvalidRequestError(description))


@functools.lru_cache(maxsize=4096)
def _client_key(address: str) -> str:
    """The per-address bound's key: an IPv4 address, or the /64 of an IPv6 one (one host
    may hold a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@bp.get("/oidc/authorize")
def authorize() -> Response:
    p = provider()
    # The whole query is kept with the transaction: bounded, so that anonymous requests
    # cannot fill the provider's state (a real one is a few hundred bytes).
    if len(request.query_string) > MAX_QUERY:
        return _refused(f"authorization request over {MAX_QUERY} bytes")
    oauth_request = OAuthRequest(request, p.issuer)
    try:
        p.server.get_consent_grant(request=oauth_request)
    except OAuth2Error as error:
        if error.redirect_uri:       # validated against the client: the error goes back there
            response: Response = p.server.handle_error_response(oauth_request, error)
            return response
        return _error_page(error)
    except ValueError:               # e.g. Authlib will not quote a backslash in its error
        return _refused("malformed authorization request")
    if p.tx_limiter is not None:
        address = _client_key(request.remote_addr or "")
        p.tx_limiter.check(address)          # RateLimited: 429 with Retry-After
        p.tx_limiter.fail(address)           # counts every transaction opened
    secret = request.cookies.get(TX_COOKIE) or secrets.token_urlsafe(24)
    query = request.query_string.decode("ascii", "replace")
    tx, challenge = browser.create(p, query, str(request.args.get("client_id")), secret)
    agent_url = str(p.services.config.extra.get("agent_url", AGENT_URL))
    # the agent signs the transaction's challenge from the link: no round trip to ask for it
    agent = (f"{agent_url}?broker={quote(p.issuer, safe='')}&tx={quote(tx, safe='')}"
             f"&challenge={browser.challenge_param(challenge)}")
    client = p.clients.query(request.args.get("client_id"))
    name = client.name if client is not None else ""
    body = (f"<p>{html.escape(name)} demande votre connexion par carte CPS.</p>"
            f"<p>Insérez votre carte, puis :</p>"
            f"<p><a id=\"agent\" referrerpolicy=\"origin\" href=\"{html.escape(agent)}\">"
            f"Se connecter avec la carte (agent local cps-login)</a></p>")
    response = _page("Connexion par carte CPS", body)
    response.set_cookie(TX_COOKIE, secret, max_age=browser.TX_TTL * 4, httponly=True,
                        samesite="Lax", path="/oidc/tx",
                        secure=p.issuer.startswith("https://"))
    return response


@bp.get("/oidc/tx/<tx>/challenge")
def tx_challenge(tx: str) -> Response:
    p = provider()
    issued = browser.challenge(p, tx)
    return _no_store(jsonify({
        "challenge": base64.b64encode(issued.value).decode(),
        "expires_at": issued.expires_at.isoformat(),
        "broker": p.services.login.issuer,
        "signed_message": "SHA-256 over b'CPS-LOGIN-V1\\x00' || uint16 len(broker) || "
                          "broker || challenge",
    }))


@bp.post("/oidc/tx/<tx>/proof")
def tx_proof(tx: str) -> Response:
    p = provider()
    key = browser.proof(p, tx, request.get_json(silent=True), request.remote_addr or "")
    return _no_store(jsonify({"continue": p.url(f"/oidc/tx/{tx}/continue?k={key}")}))


@bp.get("/oidc/tx/<tx>/continue")
def tx_continue(tx: str) -> Response:
    p = provider()
    query, subject = browser.finish(p, tx, request.cookies.get(TX_COOKIE), request.args.get("k"))
    oauth_request = StoredRequest(query, p.issuer)
    # The request was validated when the transaction was made, and is again now (client still
    # registered, redirect URI, PKCE, nonce unused) by create_authorization_response.
    oauth_request.user = subject
    try:
        grant = p.server.get_authorization_grant(oauth_request)
        response: Response = p.server.create_authorization_response(
            request=oauth_request, grant_user=subject, grant=grant)
    except OAuth2Error as error:
        return _error_page(error)
    except ValueError:
        return _refused("malformed authorization request")
    return _no_store(response)     # an error without a validated redirect URI: JSON, 400


# --- token, userinfo, introspection, revocation, logout -----------------------------------
@bp.post("/oidc/token")
def token() -> Response:
    return provider().server.create_token_response()  # type: ignore[no-any-return]


@bp.route("/oidc/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    p = provider()
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise TokenInvalid("token_missing", "Authorization: Bearer <access token>")
    claims = p.validate_access_token(value.strip())
    if "openid" not in str(claims.get("scope", "")).split():
        raise TokenInvalid("insufficient_scope", "the token's scope has no openid")
    subject = p.subject_of_token(claims, str(claims.get("sid", "")))
    return _no_store(jsonify(p.user_claims(subject)))


@bp.post("/oidc/introspect")
def introspect() -> Response:
    return _no_store(provider().server.create_endpoint_response("introspection"))


@bp.post("/oidc/revoke")
def revoke() -> Response:
    return _no_store(provider().server.create_endpoint_response("revocation"))


@bp.route("/oidc/logout", methods=["GET", "POST"])
def logout() -> Response:
    p = provider()
    try:
        response = p.server.create_endpoint_response("end_session")
    except OAuth2Error as error:
        return _error_page(error)
    if response is None:
        return _page("Déconnecté", "<p>Vous êtes déconnecté du service.</p>")
    return _no_store(response)  # type: ignore[arg-type]


# --- CIBA ----------------------------------------------------------------------------------
@bp.post("/oidc/bc-authorize")
def bc_authorize() -> Response:
    p = provider()
    oauth_request = OAuthRequest(request, p.issuer)
    try:
        client = p.server.authenticate_client(oauth_request, ciba.CibaGrant
                                              .TOKEN_ENDPOINT_AUTH_METHODS, "backchannel")
        body = ciba.start(p, client, request.form)
    except OAuth2Error as error:
        return p.server.handle_error_response(oauth_request, error)  # type: ignore[no-any-return]
    return _no_store(jsonify(body))


def _approver() -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise TokenInvalid("token_missing", "Authorization: Bearer <broker access token>")
    return ciba.approver(provider(), value.strip())


@bp.get("/oidc/ciba/pending")
def ciba_pending() -> Response | tuple[Response, int]:
    try:
        claims = _approver()
    except PermissionError as exc:
        return jsonify({"error": "card_login_required", "message": str(exc)}), 403
    return _no_store(jsonify(ciba.pending(provider(), claims)))


def _decide(auth_req_id: str, approve: bool) -> Response | tuple[Response, int]:
    try:
        claims = _approver()
    except PermissionError as exc:
        return jsonify({"error": "card_login_required", "message": str(exc)}), 403
    try:
        ciba.decide(provider(), claims, auth_req_id, approve)
    except LookupError as exc:
        return jsonify({"error": "not_pending", "message": str(exc)}), 404
    return _no_store(jsonify({"auth_req_id": auth_req_id,
                              "status": "approved" if approve else "denied"}))


@bp.post("/oidc/ciba/<auth_req_id>/approve")
def ciba_approve(auth_req_id: str) -> Response | tuple[Response, int]:
    return _decide(auth_req_id, True)


@bp.post("/oidc/ciba/<auth_req_id>/deny")
def ciba_deny(auth_req_id: str) -> Response | tuple[Response, int]:
    return _decide(auth_req_id, False)
