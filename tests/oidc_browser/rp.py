"""A relying service written the way an integrator would, with libraries the provider is not
built on: requests-oauthlib (authorization code + PKCE S256, client_secret_basic) and PyJWT
(the ID token checked with the provider's JWKS). Everything is discovered from the provider's
``/.well-known/openid-configuration``. Its page greets the professional by name."""

from __future__ import annotations

import html
import os
import secrets
from typing import Any

import jwt
import requests
from flask import Flask, redirect, request
from requests_oauthlib import OAuth2Session

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")     # http on 127.0.0.1 in tests


def create_rp(issuer: str, client_id: str, client_secret: str, base: str) -> Flask:
    app = Flask("relying-service")
    meta: dict[str, Any] = requests.get(issuer + "/.well-known/openid-configuration",
                                        timeout=10).json()
    jwks = jwt.PyJWKClient(meta["jwks_uri"])
    pending: dict[str, tuple[OAuth2Session, str]] = {}     # state -> (session with PKCE, nonce)
    redirect_uri = base + "/cb"

    @app.get("/")
    def home() -> Any:
        oauth = OAuth2Session(client_id, redirect_uri=redirect_uri, scope=["openid", "profile"],
                              pkce="S256")
        nonce = secrets.token_urlsafe(16)
        url, state = oauth.authorization_url(meta["authorization_endpoint"], nonce=nonce)
        pending[state] = (oauth, nonce)
        return redirect(url, 302)

    @app.get("/cb")
    def callback() -> Any:
        if "error" in request.args:
            return f"<p id=\"error\">{html.escape(request.args['error'])}</p>", 400
        oauth, nonce = pending.pop(request.args.get("state", ""), (None, ""))
        if oauth is None:
            return "<p id=\"error\">unknown state</p>", 400
        token = oauth.fetch_token(meta["token_endpoint"], authorization_response=request.url,
                                  auth=(client_id, client_secret), include_client_id=False)
        id_token = token["id_token"]
        key = jwks.get_signing_key_from_jwt(id_token).key
        claims = jwt.decode(id_token, key, algorithms=["ES256"], audience=client_id,
                            issuer=issuer)
        if claims.get("nonce") != nonce:
            return "<p id=\"error\">nonce mismatch</p>", 400
        info = oauth.get(meta["userinfo_endpoint"], timeout=10).json()
        name = f"{info.get('given_name', '')} {info.get('family_name', '')}".strip()
        org = info.get("SubjectOrganization", "")
        return (f"<!doctype html><html lang=\"fr\"><body><h1 id=\"name\">Bonjour "
                f"{html.escape(name)}</h1><p id=\"sub\">{html.escape(claims['sub'])}</p>"
                f"<p id=\"acr\">{html.escape(str(claims.get('acr', '')))}</p>"
                f"<p id=\"org\">{html.escape(str(org))}</p></body></html>")

    return app
