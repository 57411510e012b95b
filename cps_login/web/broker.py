"""Blueprint ``broker``: challenge, login, JWKS, introspection (mTLS), OpenAPI document."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cps_login.broker import LoginRequest
from cps_login.errors import CredentialRefused, TokenInvalid
from pki.errors import PkiError

bp = Blueprint("broker", __name__)

# Set by cps_login.mtls on connections whose client certificate the TLS layer verified; no HTTP
# header can produce a WSGI environ key without the HTTP_ prefix, so this cannot be forged.
PEER_CERT_ENVIRON = "cps_login.peer_certificate"


def _services() -> Any:
    from cps_login.web import services_of

    return services_of(current_app)


@bp.post("/login/challenge")
def challenge() -> Response:
    services = _services()
    issued = services.login.challenge(request.remote_addr or "")
    response = jsonify({
        "challenge": base64.b64encode(issued.value).decode(),
        "expires_at": issued.expires_at.isoformat(),
        "broker": services.login.issuer,
        "signed_message": "SHA-256 over b'CPS-LOGIN-V1\\x00' || uint16 len(broker) || "
                          "broker || challenge",
    })
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/login")
def login() -> Response:
    services = _services()
    body = request.get_json(silent=True)
    client = request.remote_addr or ""
    if not isinstance(body, dict):
        # Audited like every other refusal.
        parsed = LoginRequest(b"", (), b"", b"", client=client)
    else:
        try:
            parsed = LoginRequest.from_json(body, client)
        except CredentialRefused:
            parsed = LoginRequest(b"", (), b"", b"", client=client)
    result = services.login.login(parsed)
    token = result.token
    response = jsonify({"access_token": token.token, "token_type": "Bearer",
                        "expires_in": token.expires_in, "scope": token.claims["scope"]})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(_services().tokens.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662, for relying services authenticated by mutual TLS (organisation certificate)."""
    services = _services()
    peer = request.environ.get(PEER_CERT_ENVIRON)
    if not isinstance(peer, bytes | bytearray):
        raise CredentialRefused("no_client_certificate")
    try:
        client = services.org_clients.check(bytes(peer))
    except (CredentialRefused, PkiError) as exc:
        services.audit.record("introspect.refused", "mtls", {"reason": getattr(exc, "reason",
                                                                               exc.code)},
                              actor="anonymous")
        raise CredentialRefused("client_refused") from None
    token = request.form.get("token", "")
    caller = client.subject.rfc4514_string()
    try:
        claims = services.validator.validate(token)
    except TokenInvalid as exc:
        services.audit.record("introspect", "token", {"active": False, "reason": exc.reason},
                              actor=caller[:256])
        return jsonify({"active": False})
    services.audit.record("introspect", claims["sub"], {"active": True, "jti": claims["jti"]},
                          actor=caller[:256])
    return jsonify({"active": True, "token_type": "Bearer", **claims})


@bp.get("/openapi.json")
def openapi() -> Response:
    text = resources.files("cps_login").joinpath("openapi.json").read_text("utf-8")
    return Response(json.dumps(json.loads(text)), content_type="application/json")
