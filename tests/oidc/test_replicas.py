"""One code-flow login spread over two broker replicas (the deployment of tests/deploy:
PostgreSQL with a database user per role, Redis, HAProxy): every step at the other replica
than the one before, so nothing of the login lives in one process. The brokers run as the
``cps_broker`` database user, so this also holds the broker's grants on the provider's tables.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import urllib.parse
from http.client import HTTPConnection

import pytest

from tests.deploy.conftest import Deployment, deploy_db, deployment  # noqa: F401
from tests.deploy.test_replicas import Holder, login_body, new_holder

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]
REDIRECT = "https://rp.example/cb"


def call(base: str, method: str, path: str, source: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(base)
    conn = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30,
                          source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def holder(deployment: Deployment) -> Holder:  # noqa: F811
    return new_holder(deployment, "1000777101", "Oidc")


def test_code_flow_across_two_broker_replicas(deployment: Deployment,  # noqa: F811
                                               holder: Holder) -> None:
    added = deployment.admin("client", "add", "--name", "Replicated RP", "--redirect-uri",
                             REDIRECT, "--json")
    client = json.loads(added.stdout)
    one, two = (r.url for r in deployment.replicas["broker"])
    me = deployment.client(7)
    verifier = secrets.token_urlsafe(48)
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT,
        "scope": "openid", "state": "st", "nonce": "n-1",
        "code_challenge": base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=").decode(), "code_challenge_method": "S256"})
    status, headers, page = call(one, "GET", "/oidc/authorize?" + query, me)
    assert status == 200, page[:300]
    found = re.search(rb"tx=([A-Za-z0-9_-]+)", page)
    assert found
    tx, cookie = found.group(1).decode(), headers["set-cookie"].split(";", 1)[0]
    status, _, raw = call(two, "GET", f"/oidc/tx/{tx}/challenge", me)
    assert status == 200, raw
    proof = login_body(holder, json.loads(raw)["challenge"], deployment.front)
    status, _, raw = call(one, "POST", f"/oidc/tx/{tx}/proof", me, proof,
                          {"Content-Type": "application/json"})
    assert status == 200, raw
    target = urllib.parse.urlsplit(json.loads(raw)["continue"])
    status, headers, raw = call(two, "GET", f"{target.path}?{target.query}", me,
                                headers={"Cookie": cookie})
    assert status == 302, raw
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)["code"][0]
    basic = "Basic " + base64.b64encode(
        f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": REDIRECT, "code_verifier": verifier})
    form_headers = {"Authorization": basic,
                    "Content-Type": "application/x-www-form-urlencoded"}
    status, _, raw = call(one, "POST", "/oidc/token", me, form.encode(), form_headers)
    assert status == 200, raw
    tokens = json.loads(raw)
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    status, _, raw = call(two, "GET", "/oidc/userinfo", me, headers=bearer)
    assert status == 200 and json.loads(raw)["sub"] == "8" + holder.rpps, raw
    # the code again, at the other replica: refused, and the tokens it gave die everywhere
    status, _, raw = call(two, "POST", "/oidc/token", me, form.encode(), form_headers)
    assert status == 400 and json.loads(raw)["error"] == "invalid_grant", raw
    status, _, raw = call(one, "GET", "/oidc/userinfo", me, headers=bearer)
    assert status == 401 and json.loads(raw)["reason"] == "token_revoked", raw
