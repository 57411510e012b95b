"""``POST /verify`` on the broker role (trust from the store, revocation from the status tier
over HTTP OCSP), through the broker's real HTTP server."""

from __future__ import annotations

import base64
import hashlib

from cps_sign.card_signer import CardSigner
from cps_sign.signing import sign_cades
from pki.cards.card import HolderData
from tests.login.conftest import Env, env  # noqa: F401 - the broker + status fixture
from tests.signatures.conftest import PIN, SoftCard

CLAIM = b"FSE: consultation G, 26.50 EUR\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def card_of(env: Env, name: str) -> SoftCard:  # noqa: F811
    soft = env.new_card(name)
    return SoftCard(HolderData(soft.rpps, name, "Test", 10),
                    {"auth": soft.key, "sign": soft.sign_key},  # type: ignore[dict-item]
                    {"auth": soft.auth, "sign": soft.sign})


def test_verify_endpoint(env: Env) -> None:  # noqa: F811
    card = card_of(env, "signer")
    signature = sign_cades(CLAIM, CardSigner(card, PIN))
    env.extra_certs.append(card.certs["sign"])
    env.wait_ocsp(f"{card.certs['sign'].serial_number:X}", "good")
    status, report = env.post("/verify", {"signature": b64(signature), "content": b64(CLAIM)})
    assert status == 200, report
    assert report["indication"] == "TOTAL_PASSED", report
    assert report["signer"] == "8" + card.holder().rpps and report["signing_time"]
    digest = hashlib.sha256(CLAIM).hexdigest()
    status, report = env.post("/verify", {"signature": b64(signature), "content_sha256": digest})
    assert status == 200 and report["indication"] == "TOTAL_PASSED", report
    status, report = env.post("/verify", {"signature": b64(signature),
                                          "content": b64(CLAIM + b"x")})
    assert (status, report["sub_indication"]) == (200, "HASH_FAILURE")
    status, report = env.post("/verify", {"signature": b64(b"\x30\x82garbage"),
                                          "content": b64(CLAIM)})
    assert (status, report["sub_indication"]) == (200, "FORMAT_FAILURE")


def test_verify_endpoint_bad_requests(env: Env) -> None:  # noqa: F811
    for body in ({}, {"signature": "***", "content": "AA=="}, {"signature": "AA=="},
                 {"signature": "AA==", "content": "AA==", "content_sha256": "00" * 32},
                 {"signature": "AA==", "content_sha256": "zz"}, [1, 2]):
        status, answer = env.post("/verify", body)
        assert status == 400 and answer["error"] == "invalid_request", (body, answer)
