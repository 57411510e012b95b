"""The provider's Authlib request types: Authlib's attributes, Authlib's transport rule."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc6749 import InsecureTransportError, OAuth2Request
from flask import Flask

from cps_login.oidc.provider import OAuthRequest, StoredRequest

QUERY = "response_type=code&client_id=c&redirect_uri=https%3A%2F%2Frp.example%2Fcb&scope=openid"


def test_stored_request_has_authlib_attributes_and_its_uri() -> None:
    ours = StoredRequest(QUERY, "https://broker.example")
    authlib = OAuth2Request("GET", f"https://broker.example/oidc/authorize?{QUERY}")
    assert set(vars(authlib)) <= set(vars(ours))
    for name in set(vars(authlib)) - {"payload"}:
        assert getattr(ours, name) == getattr(authlib, name), name
    assert ours.uri == f"https://broker.example/oidc/authorize?{QUERY}"
    assert ours.payload.data["client_id"] == "c" and ours.args["scope"] == "openid"


def test_flask_request_has_authlib_attributes_and_the_issuers_uri() -> None:
    app = Flask(__name__)
    with app.test_request_context(f"/oidc/authorize?{QUERY}", base_url="http://10.0.0.9:8080"):
        from flask import request

        ours = OAuthRequest(request, "https://broker.example")
        authlib = OAuth2Request("GET", "https://broker.example/", headers=request.headers)
        assert set(vars(authlib)) <= set(vars(ours))
        # the URI is the configured issuer's, not what the request's Host made of it
        assert ours.uri == f"https://broker.example/oidc/authorize?{QUERY}"
        assert ours.headers is request.headers and ours.method == "GET"


@pytest.mark.parametrize("issuer, secure", [
    ("https://broker.example", True), ("http://127.0.0.1:8443", True),
    ("http://localhost:9000", True), ("http://[::1]:9000", True),
    ("http://broker.example", False), ("http://10.0.0.9:8080", False),
    ("ftp://broker.example", False)])
def test_transport_rule_is_authlibs(issuer: str, secure: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    for _ in range(2):                   # the second time from the cache: the same answer
        if secure:
            StoredRequest(QUERY, issuer)
        else:
            with pytest.raises(InsecureTransportError):
                StoredRequest(QUERY, issuer)
    # Authlib's switch for development, read at each request as Authlib reads it
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    StoredRequest(QUERY, issuer)
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT")
    if not secure:
        with pytest.raises(InsecureTransportError):
            StoredRequest(QUERY, issuer)
