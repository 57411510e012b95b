"""Blueprint ``oidc``: the provider's HTTP face at the broker's issuer URL.

``/.well-known/openid-configuration``; ``/oidc/userinfo``, ``/oidc/introspect``, ``/oidc/revoke``,
``/oidc/logout``; CIBA: ``/oidc/bc-authorize``,
``/oidc/ciba/pending``, ``/oidc/ciba/<auth_req_id>/approve|deny``. The JWKS stays at
``/.well-known/jwks.json`` (blueprint ``broker``). The browser login (``/oidc/authorize``,
``/oidc/tx/<tx>/challenge|proof|continue``) and ``/oidc/token`` are answered before Flask, by
``cps_login.oidc.front``.
"""

from __future__ import annotations

import base64
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import Blueprint, Response, current_app, jsonify, request

from cps_login.errors import TokenInvalid
from cps_login.oidc import ciba
from cps_login.oidc.clients import SCOPES as CLIENT_SCOPES
from cps_login.oidc.front import error_page, page
from cps_login.oidc.provider import OAuthRequest, Provider

bp = Blueprint("oidc", __name__)
EXTENSION = "cps_login.oidc"
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
        "authorization_response_iss_parameter_supported": True,     # RFC 9207
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


# --- the browser login and the token endpoint: cps_login.oidc.front (WSGI, before Flask) ---
def _page(title: str, body: str, status: int = 200) -> Response:
    return page(title, body, status).flask()  # type: ignore[no-any-return]


def _error_page(error: OAuth2Error) -> Response:
    """An authorization error without a trustworthy redirect URI: shown, never redirected."""
    return error_page(error).flask()  # type: ignore[no-any-return]


# --- userinfo, introspection, revocation, logout --------------------------------------------
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
    return _no_store(provider().server.create_endpoint_response("introspection").flask())


@bp.post("/oidc/revoke")
def revoke() -> Response:
    return _no_store(provider().server.create_endpoint_response("revocation").flask())


@bp.route("/oidc/logout", methods=["GET", "POST"])
def logout() -> Response:
    p = provider()
    try:
        response = p.server.create_endpoint_response("end_session")
    except OAuth2Error as error:
        return _error_page(error)
    if response is None:
        return _page("Déconnecté", "<p>Vous êtes déconnecté du service.</p>")
    return _no_store(response.flask())


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
        return p.server.handle_error_response(oauth_request, error).flask()  # type: ignore[no-any-return]
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
    body = request.get_json(silent=True) if request.content_length else None
    certificate: bytes | None = None
    if isinstance(body, dict) and isinstance(body.get("certificate"), str):
        try:
            certificate = base64.b64decode(body["certificate"], validate=True)
        except ValueError:
            return jsonify({"error": "invalid_request",
                            "message": "certificate is not base64"}), 400
    try:
        ciba.decide(provider(), claims, auth_req_id, approve, certificate)
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
