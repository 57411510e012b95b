"""Red-team findings F1, F3, F4, F7, F8, F9 on the OIDC provider (see docs/oidc.md), fixed by
358d7f7: each test reproduces the attack and asserts the secure behaviour."""

from __future__ import annotations

import secrets

import requests

from tests.oidc.conftest import OidcServer
from tests.oidc.test_ciba import start
from tests.oidc.test_refusals import authorize_url, exchange, get_code


def _tokens(oidc: OidcServer) -> dict[str, str]:
    client = oidc.client(name="Agenda (malicious RP)")
    verifier = secrets.token_urlsafe(48)
    code = get_code(oidc, client.client_id, verifier)
    answer = exchange(oidc, client.client_id, client.client_secret, code, verifier)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())

def test_a_relying_services_access_token_cannot_approve_ciba(oidc: OidcServer) -> None:
    """FINDING F1: the OIDC access token a relying service got from a code-flow login has the
    same audience, acr (eidas3), amr (hwk) and key location as the broker's own card-login
    token, so the relying service can list and approve the professional's pending CIBA
    requests of OTHER services (approving someone else's request without the card)."""
    tokens = _tokens(oidc)
    victim_service = oidc.client(name="Prescription", ciba=True)
    alice = oidc.env.cards["alice"]
    started = start(oidc, victim_service.client_id, str(victim_service.client_secret), alice,
                    message="Sign prescription 42")
    assert started.status_code == 200, started.text
    auth_req_id = started.json()["auth_req_id"]
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    pending = requests.get(oidc.issuer + "/oidc/ciba/pending", headers=bearer, timeout=10)
    assert pending.status_code in (401, 403), pending.text
    approved = requests.post(f"{oidc.issuer}/oidc/ciba/{auth_req_id}/approve",
                             headers=bearer, timeout=10)
    assert approved.status_code in (401, 403), approved.text

def test_ciba_queue_of_a_professional_cannot_be_filled_by_one_service(
        oidc: OidcServer) -> None:
    """FINDING F3 (DoS): any CIBA client can open MAX_OPEN_PER_SUBJECT requests for a
    professional; every other service's request for them is then refused until they expire."""
    spammer = oidc.client(name="Spam", ciba=True)
    honest = oidc.client(name="Hospital", ciba=True)
    card = oidc.env.cards["bob"] if "bob" in oidc.env.cards else oidc.env.cards["alice"]
    for _ in range(25):
        start(oidc, spammer.client_id, str(spammer.client_secret), card)
    answer = start(oidc, honest.client_id, str(honest.client_secret), card)
    assert answer.status_code == 200, answer.text


def test_backslash_redirect_uri_is_a_400_not_a_crash(oidc: OidcServer) -> None:
    """FINDING F4: Authlib refuses to build its error text around a backslash: 500."""
    client = oidc.client()
    url = authorize_url(oidc, client.client_id, "v" * 50,
                        redirect_uri="http://127.0.0.1/cb\\@attacker.example")
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "Location" not in answer.headers



def test_anonymous_authorization_requests_cannot_fill_the_provider_state(
        oidc: OidcServer) -> None:
    """FINDING F7 (LOW, DoS): GET /oidc/authorize needs no authentication and stores a login
    transaction holding the whole query string (up to the 16 KiB header limit) for 600 s. The
    per-address cap (100 live, 429 beyond) still lets one address hold ~1.3 MB, so ~50
    addresses (one IPv6 /64 is plenty) fill the 64 MiB MemoryState and every code, refresh
    token and CIBA request of every user gets 503 for 10 minutes. Secure: a bounded query
    (e.g. 4 KiB, 400 beyond) keeps one address well under 1 MiB."""
    from requests.adapters import HTTPAdapter

    state = oidc.app.extensions["cps_login.oidc"].state
    saved = state._max
    state._max = 4 * 1024 * 1024
    client = oidc.client(public=True)
    url = authorize_url(oidc, client.client_id, "v" * 50, state="s" * 12000)
    statuses: list[int] = []
    try:
        with requests.Session() as flood:
            flood.mount("http://", HTTPAdapter(pool_maxsize=1))
            for _ in range(400):
                statuses.append(flood.get(url, allow_redirects=False, timeout=10).status_code)
        used = state._bytes
    finally:
        state._max = saved
    assert 503 not in statuses, f"state full after {statuses.index(503)} requests"
    assert used < 1024 * 1024, f"one address holds {used} bytes of provider state"


def test_a_relying_services_openid_token_is_not_a_patient_records_token(
        oidc: OidcServer) -> None:
    """FINDING F8 (HIGH): the patient-record API (/api/..., cps_login/web/records.py
    _professional) takes any token of the broker's audience: an access token a relying
    service got with scope "openid" for a login (an agenda, a messaging app...) acts there as
    the professional — lists, reads and writes patients' documents, messages and uploads, each
    access in the patient's history under the professional's name. The API checks neither the
    token's scope (patient.read) nor whether it was minted for a relying service (client_id),
    nor its revocation (a logged-out session's token keeps working)."""
    tokens = _tokens(oidc)
    assert "patient.read" not in tokens["scope"].split()
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    whoami = requests.get(oidc.issuer + "/api/whoami", headers=bearer, timeout=10)
    assert whoami.status_code in (401, 403), whoami.text    # today: 200, the professional
    listing = requests.get(oidc.issuer + "/api/patients/123456789012345/documents",
                           headers=bearer, timeout=10)
    assert listing.status_code in (401, 403), listing.text
    from pki import ids

    nir = f"2800575{secrets.randbelow(10**6):06d}"
    enrol = requests.post(oidc.issuer + "/api/patients", headers=bearer, timeout=10,
                          json={"ins": nir + ids.ins_key(nir), "given_name": "Rita",
                                "surname": "Agenda", "birth_date": "1980-05-01"})
    assert enrol.status_code in (401, 403), enrol.text


def test_binding_message_must_be_printable(oidc: OidcServer) -> None:
    """FINDING F9 (LOW): binding_message refuses only code points < 32; C1 controls (U+009B is
    a CSI on terminals that honour 8-bit controls), DEL and bidi overrides (U+202E, which makes
    "Code 1234" read as another text) pass, and `cps-login approve` prints the message raw after
    the decision (cps_login/cli.py: f"... ({client_name}: {binding_message})")."""
    client = oidc.client(name="Spoof", ciba=True)
    for message in ("\x9b31mCode 1", "Code \u202e4321", "Code\x7f1"):
        answer = start(oidc, client.client_id, str(client.client_secret),
                       oidc.env.cards["alice"], message=message)
        assert answer.status_code == 400, (message, answer.text)
