"""Red-team finding F12: a private_key_jwt assertion cannot outlive its replay record."""

from __future__ import annotations

import requests

from tests.oidc.conftest import OidcServer


def test_a_client_assertion_cannot_be_replayed_after_its_jti_is_forgotten(
        oidc: OidcServer, clock: object) -> None:
    """F12 (LOW, fixed): private_key_jwt remembered a jti for min(exp - now + 60, 3600) s but
    accepts any exp: an assertion made (or leaked from a log, a proxy) with exp a year ahead
    authenticates the client again once an hour has passed (RFC 7523 §3: the server may refuse
    an exp unreasonably far; RFC 9700 / FAPI: at most a few minutes)."""
    import json
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    client = oidc.client(auth_method="private_key_jwt",
                         jwks={"keys": [{**public, "kid": "k1", "alg": "ES256"}]})
    endpoint = oidc.discovery()["token_endpoint"]
    now = int(time.time())
    assertion = jwt.encode({"iss": client.client_id, "sub": client.client_id, "aud": endpoint,
                            "iat": now, "exp": now + 365 * 86400, "jti": "long-lived"}, key,
                           algorithm="ES256", headers={"kid": "k1"})
    form = {"grant_type": "refresh_token", "refresh_token": "x" * 43,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    first = requests.post(endpoint, data=form, timeout=10)
    # authenticated (the refresh token is what is wrong) or refused for its exp
    assert first.json()["error"] in ("invalid_grant", "invalid_client"), first.text
    clock.advance(3700)  # type: ignore[attr-defined]
    again = requests.post(endpoint, data=form, timeout=10)
    assert again.json()["error"] == "invalid_client", again.text
