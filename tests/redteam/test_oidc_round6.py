"""Issue 14, sixth round: the provider and the broker's public routes attacked again, as a
hostile relying service, a hostile page, an anonymous flooder and a professional whose card
was revoked would. Each test asserts the secure behaviour; each failed before its fix
(docs/hardening.md, "Issue 14, sixth round").

Not repeated here (held by rounds 1-5): redirect-URI variants, duplicated parameters, PKCE
downgrades, ``alg`` none/HS256, far-future or replayed client assertions, tokens of one kind
taken for another, logout with an access token or to an unregistered URI, markup in the
client name, nonce or state. Probed this round and held (no test kept): client assertions with
an embedded ``jwk`` or ``jku``, an unknown ``kid``, ``crit``, an audience of another endpoint or
with a trailing slash; logout ``state`` with markup and CR LF (percent-encoded), logout without
a hint (a page, no redirect); ``request``/``request_uri``/``claims`` (ignored, as discovery
says); ``Cache-Control: no-store`` on token answers, CSP and ``X-Frame-Options`` on pages."""

from __future__ import annotations

import base64
import json
import logging
import resource
import zlib

import pytest
import requests

from pki.bytelru import ByteLru
from pki.ca import lifecycle
from tests.oidc.conftest import OidcServer
from tests.oidc.test_ciba import broker_token, poll, start
from tests.oidc.test_refusals import authorize_url
from tests.redteam.test_oidc_round4 import ASSERTION_TYPE, _memory, _new_card, _provider
from tests.redteam.test_oidc_round5 import _professional


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# A JWS whose protected header is 1,200 nested JSON arrays: 1.6 KB, any sender.
_DEEP_HEADER = _b64url(b"[" * 1200) + "." + _b64url(b"{}") + "." + _b64url(b"x")


# === findings ==============================================================================
def test_deeply_nested_jwt_parts_are_refusals_not_500s(oidc: OidcServer) -> None:
    disc = oidc.discovery()
    client = oidc.client(name="R6 nested")
    public = oidc.client(name="R6 nested SPA", public=True)
    bearer = {"Authorization": "Bearer " + _DEEP_HEADER}
    deep_payload = (_b64url(json.dumps({"alg": "ES256"}).encode()) + "." +
                    _b64url(b"[" * 1200) + "." + _b64url(b"x"))
    answers = {
        "userinfo": requests.get(disc["userinfo_endpoint"], headers=bearer, timeout=10),
        "ciba pending": requests.get(oidc.issuer + "/oidc/ciba/pending", headers=bearer,
                                     timeout=10),
        "api whoami": requests.get(oidc.issuer + "/api/whoami", headers=bearer, timeout=10),
        "introspect": requests.post(disc["introspection_endpoint"],
                                    data={"token": _DEEP_HEADER}, timeout=10,
                                    auth=(client.client_id, str(client.client_secret))),
        # a public client authenticates by its id alone here: anyone may send this
        "revoke": requests.post(disc["revocation_endpoint"], timeout=10,
                                data={"token": _DEEP_HEADER, "client_id": public.client_id}),
        "token (client assertion)": requests.post(disc["token_endpoint"], timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": "x",
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": deep_payload}),
    }
    failures = {name: answer.status_code for name, answer in answers.items()
                if answer.status_code >= 500}
    assert not failures, f"anonymous 5xx for a nested JSON token part: {failures}"


def test_a_revoked_card_cannot_approve_on_a_replica_that_did_not_see_its_login(
        oidc: OidcServer) -> None:
    card = _new_card(oidc, "r6-ciba-cold-cache")
    client = oidc.client(name="R6 Messagerie", ciba=True)
    secret = str(client.client_secret)
    auth_req_id = start(oidc, client.client_id, secret, card).json()["auth_req_id"]
    bearer = {"Authorization": "Bearer " + broker_token(oidc, card)}   # /login on "replica A"
    lifecycle.revoke(oidc.env.auth, card.serial, "keyCompromise")
    oidc.env.wait_ocsp(card.serial, "revoked")
    login = _provider(oidc).services.login
    saved = login._known
    # "replica B": same shared state, its own certificate cache, which never saw this card
    login._known = ByteLru(saved._max_bytes, saved._max_entries)
    try:
        approve = requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve",
                                headers=bearer, timeout=10)      # no certificate in the body
    finally:
        login._known = saved
    collected = poll(oidc, client.client_id, secret, auth_req_id)
    assert approve.status_code == 401 and "access_token" not in collected.json(), (
        f"revoked card: approve {approve.status_code}, poll {collected.status_code} "
        f"{sorted(collected.json())}")
    assert approve.json()["error"] == "certificate_required"
    assert "cps-login approve sends it" in approve.json()["message"]


def _fields_array_pdf(entries: int) -> bytes:
    """A 1-2 KB PDF whose /AcroForm /Fields is an array of ``entries`` integers, in a
    FlateDecode object stream (what the file inflates to is far within the verifier's 16 MiB
    decode budget)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}

    def obj(num: int, body: bytes) -> None:
        offsets[num] = len(out)
        out.extend(b"%d 0 obj\n" % num + body + b"\nendobj\n")

    obj(1, b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields 4 0 R >> >>")
    obj(2, b"<< /Type /Pages /Kids [] /Count 0 >>")
    data = zlib.compress(b"4 0 [" + b"1 " * entries + b"]", 9)
    obj(3, b"<< /Type /ObjStm /N 1 /First 4 /Length %d /Filter /FlateDecode >>\nstream\n"
        % len(data) + data + b"\nendstream")
    xref = len(out)
    rows = [b"\x00" + bytes(4) + b"\xff\xff"]
    rows += [b"\x01" + offsets[n].to_bytes(4, "big") + bytes(2) for n in (1, 2, 3)]
    rows += [b"\x02" + (3).to_bytes(4, "big") + bytes(2),
             b"\x01" + xref.to_bytes(4, "big") + bytes(2)]
    table = b"".join(rows)
    out.extend(b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length %d >>\n"
               b"stream\n" % len(table) + table + b"\nendstream\nendobj\n")
    out.extend(b"startxref\n%d\n%%%%EOF\n" % xref)
    return bytes(out)


def test_a_small_pdf_cannot_make_verify_parse_millions_of_objects(
        oidc: OidcServer, caplog: pytest.LogCaptureFixture) -> None:
    small = _fields_array_pdf(10)
    bomb = _fields_array_pdf(100_000)
    assert len(bomb) < 2048
    url = oidc.issuer + "/verify"
    control = requests.post(url, json={"pdf": base64.b64encode(small).decode()}, timeout=30)
    assert control.status_code == 200                        # a verdict, quickly
    caplog.clear()
    # The broker runs in this process (threads): what it spends on the bomb is this
    # process's CPU; the child that parses it is the fork server's, not counted here.
    with caplog.at_level(logging.WARNING):
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        answer = requests.post(url, json={"pdf": base64.b64encode(bomb).decode()}, timeout=60)
        after = resource.getrusage(resource.RUSAGE_SELF)
        logged = len(caplog.records)
    spent = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    assert answer.status_code == 200, answer.text[:200]
    assert answer.json()["indication"] in ("TOTAL_FAILED", "INDETERMINATE")
    # in this process, the bomb cost 2.5-3 s of CPU (more on a loaded machine); now the
    # broker's part is the request and the child's answer (the bound leaves room for the
    # other threads of this process: OCSP service, status server)
    assert spent < 1.0 and logged < 1000, (
        f"{len(bomb)}-byte PDF: {spent:.1f} s of the broker's CPU, {logged} log records")


def test_one_ciba_client_cannot_fill_the_state_and_lock_out_logins(oidc: OidcServer) -> None:
    state = _memory(oidc)
    client = oidc.client(name="R6 CIBA flooder", ciba=True)
    victim = oidc.client(name="R6 Hôpital")
    hints = [_professional(oidc, f"r6-ciba-{i}") for i in range(70)]
    endpoint = oidc.discovery()["backchannel_authentication_endpoint"]
    session = requests.Session()
    saved = state._max
    # the budget as it would be after ~12 minutes of this at ~185 requests/s: room for ~150
    state._max = state._bytes + 150 * 1210
    try:
        answers = []
        for hint in hints:
            for _ in range(3):
                answer = session.post(endpoint, timeout=10, auth=(client.client_id,
                                                                  str(client.client_secret)),
                                      data={"scope": "openid", "login_hint": hint,
                                            "requested_expiry": "600"})
                answers.append(answer.status_code)
                if answer.status_code != 200:
                    break
            if answers[-1] != 200:
                break
        page = requests.get(authorize_url(oidc, victim.client_id, "v" * 50),
                            allow_redirects=False, timeout=10)
    finally:
        state._max = saved
    assert page.status_code == 200, (
        f"after {answers.count(200)} back-channel requests of one client "
        f"(then {answers[-1]}), a browser login is {page.status_code}")
