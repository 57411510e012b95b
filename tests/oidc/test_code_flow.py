"""Authorization code + PKCE with a client stack the provider is not built on
(requests-oauthlib for OAuth, PyJWT for the ID token), everything found from discovery."""

from __future__ import annotations

import base64
import hashlib
import secrets

import jwt
import pytest
import requests
from requests_oauthlib import OAuth2Session

from tests.oidc.conftest import Browser, OidcServer, query_of

REDIRECT = "http://127.0.0.1/cb"


def verify_id_token(server: OidcServer, id_token: str, client_id: str,
                    nonce: str | None) -> dict[str, object]:
    discovery = server.discovery()
    keys = jwt.PyJWKClient(discovery["jwks_uri"])
    key = keys.get_signing_key_from_jwt(id_token)
    claims = jwt.decode(id_token, key.key, algorithms=discovery[
        "id_token_signing_alg_values_supported"], audience=client_id,
        issuer=discovery["issuer"], options={"require": ["exp", "iat", "sub", "aud", "iss"]})
    if nonce is not None and claims.get("nonce") != nonce:
        raise jwt.InvalidTokenError("nonce mismatch")
    return dict(claims)


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def code_flow(server: OidcServer, client_id: str, *, public: bool = False,
              nonce: str | None = None) -> tuple[OAuth2Session, str]:
    """Up to the redirect back: the session (with its PKCE verifier) and the Location."""
    discovery = server.discovery()
    session = OAuth2Session(client_id, redirect_uri=REDIRECT, scope="openid profile",
                            pkce="S256")
    extra = {"nonce": nonce} if nonce else {}
    url, _state = session.authorization_url(discovery["authorization_endpoint"], **extra)
    location = Browser(server).login(url, server.env.cards["alice"])
    return session, location


def test_discovery_names_every_endpoint(oidc: OidcServer) -> None:
    discovery = oidc.discovery()
    assert discovery["issuer"] == oidc.issuer
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "introspection_endpoint", "revocation_endpoint", "end_session_endpoint",
                 "backchannel_authentication_endpoint"):
        assert discovery[name].startswith(oidc.issuer + "/"), name
        assert requests.options(discovery[name], timeout=10).status_code < 500
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    assert "private_key_jwt" in discovery["token_endpoint_auth_methods_supported"]
    assert "tls_client_auth" in discovery["token_endpoint_auth_methods_supported"]
    assert "mtls_endpoint_aliases" not in discovery       # no mutual-TLS URL configured


def test_discovery_names_the_mutual_tls_aliases(oidc: OidcServer) -> None:
    from cps_login.oidc.web import discovery

    provider = oidc.app.extensions["cps_login.oidc"].get()
    config = provider.services.config
    saved = dict(config.extra)
    config.extra["mtls_url"] = "https://broker.example:8443/"
    try:
        aliases = discovery(provider)["mtls_endpoint_aliases"]
    finally:
        config.extra.clear()
        config.extra.update(saved)
    assert aliases["token_endpoint"] == "https://broker.example:8443/oidc/token"
    assert set(aliases) == {"token_endpoint", "introspection_endpoint", "revocation_endpoint",
                            "backchannel_authentication_endpoint"}


def test_confidential_client_code_pkce_id_token_userinfo(oidc: OidcServer) -> None:
    client = oidc.client()
    nonce = secrets.token_urlsafe(16)
    session, location = code_flow(oidc, client.client_id, nonce=nonce)
    assert location.startswith(REDIRECT + "?")
    assert query_of(location)["state"] == session.state if isinstance(session.state, str) \
        else True
    discovery = oidc.discovery()
    token = session.fetch_token(discovery["token_endpoint"], authorization_response=location,
                                client_secret=client.client_secret)
    claims = verify_id_token(oidc, token["id_token"], client.client_id, nonce)
    alice = oidc.env.cards["alice"]
    assert claims["sub"] == alice.national_id
    assert claims["SubjectNameID"] == alice.national_id
    assert claims["acr"] == "eidas3" and claims["amr"] == ["hwk", "pin"]
    assert claims["at_hash"] == at_hash(token["access_token"])
    assert token["expires_in"] == 120 and token["refresh_token"]
    # the access token is an RFC 9068 JWT of the same key
    header = jwt.get_unverified_header(token["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    info = session.get(discovery["userinfo_endpoint"], timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == alice.national_id
    assert info.json()["given_name"] == "alice"


def test_public_client_needs_pkce_and_gets_tokens(oidc: OidcServer) -> None:
    client = oidc.client(public=True)
    assert client.client_secret is None
    session, location = code_flow(oidc, client.client_id)
    token = session.fetch_token(oidc.discovery()["token_endpoint"],
                                authorization_response=location, include_client_id=True)
    assert verify_id_token(oidc, token["id_token"], client.client_id, None)["sub"]
    # without a code_challenge the authorization request is refused (back to the client)
    bare = OAuth2Session(client.client_id, redirect_uri=REDIRECT, scope="openid")
    url, _ = bare.authorization_url(oidc.discovery()["authorization_endpoint"])
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert query_of(answer.headers["Location"])["error"] == "invalid_request"


def test_nonce_mismatch_is_caught_by_the_client(oidc: OidcServer) -> None:
    client = oidc.client()
    session, location = code_flow(oidc, client.client_id, nonce="the-nonce-sent")
    token = session.fetch_token(oidc.discovery()["token_endpoint"],
                                authorization_response=location,
                                client_secret=client.client_secret)
    verify_id_token(oidc, token["id_token"], client.client_id, "the-nonce-sent")
    with pytest.raises(jwt.InvalidTokenError, match="nonce"):
        verify_id_token(oidc, token["id_token"], client.client_id, "another-nonce")


def test_a_nonce_used_before_is_refused(oidc: OidcServer) -> None:
    client = oidc.client()
    nonce = secrets.token_urlsafe(16)
    session, location = code_flow(oidc, client.client_id, nonce=nonce)
    session.fetch_token(oidc.discovery()["token_endpoint"], authorization_response=location,
                        client_secret=client.client_secret)
    again = OAuth2Session(client.client_id, redirect_uri=REDIRECT, scope="openid",
                          pkce="S256")
    url, _ = again.authorization_url(oidc.discovery()["authorization_endpoint"], nonce=nonce)
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert query_of(answer.headers["Location"])["error"] == "invalid_request"


def test_every_authorization_response_names_the_issuer(oidc: OidcServer) -> None:
    """RFC 9207 (mix-up attacks): the code, and an error sent back to the client, carry
    ``iss``; discovery says so."""
    from tests.oidc.test_refusals import REDIRECT, authorize_url

    assert oidc.discovery()["authorization_response_iss_parameter_supported"] is True
    client = oidc.client()
    verifier = "v" * 50
    error = requests.get(authorize_url(oidc, client.client_id, verifier,
                                       code_challenge_method="plain"),
                         allow_redirects=False, timeout=10)
    assert error.status_code == 302 and error.headers["Location"].startswith(REDIRECT)
    answer = query_of(error.headers["Location"])
    assert answer["error"] and answer["iss"] == oidc.issuer
    location = Browser(oidc).login(authorize_url(oidc, client.client_id, verifier),
                                   oidc.env.cards["alice"])
    assert query_of(location)["iss"] == oidc.issuer and query_of(location)["code"]
