"""CAdES B-B / B-T / B-LT with the card's signature key: made by pyHanko through CardSigner,
accepted by ``openssl cms -verify`` with our chain, and judged by the verifier — each refusal
with its own EN 319 102-1 verdict."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives.serialization import Encoding

from cps_sign.card_signer import CardSigner
from cps_sign.cli import tsa_ocsp
from cps_sign.fetch import HttpTimeStamper, fetch_ocsp
from cps_sign.report import Report
from cps_sign.revocation import LiveRevocation
from cps_sign.signing import Level, sign_cades
from cps_sign.verify import Verifier
from pki.cards.errors import PinIncorrect, PinLocked
from pki.cards.testing import ThrowawayIssuer
from tests.signatures.conftest import PIN, SignEnv, SoftCard

CLAIM = b"FSE 2026-11-27: consultation G 26.50 EUR, patient 1 84 12 75 123 456 78\n"


def sign(env: SignEnv, card: SoftCard, level: Level, content: bytes = CLAIM) -> bytes:
    issuer = env.issuing
    return sign_cades(content, CardSigner(card, PIN), level=level,
                      timestamper=HttpTimeStamper(env.tsa_url) if level != "B-B" else None,
                      chain=env.chain,
                      ocsp_for=lambda: fetch_ocsp(card.certs["sign"], issuer),
                      tsa_ocsp_for=tsa_ocsp if level == "B-LT" else None)


def verifier(env: SignEnv, *, live: bool = True) -> Verifier:
    return Verifier([env.root], [env.issuing], [env.auth.config.profiles.sign_policy_oid],
                    live=LiveRevocation() if live else None)


def verdict(report: Report) -> tuple[str, str | None]:
    return report.indication, report.sub_indication


@pytest.mark.parametrize("level", ["B-B", "B-T", "B-LT"])
def test_openssl_accepts_and_verifier_passes(sign_env: SignEnv, level: Level,
                                             tmp_path: Path) -> None:
    card = sign_env.cards["alice"]
    signature = sign(sign_env, card, level)
    (tmp_path / "claim").write_bytes(CLAIM)
    (tmp_path / "claim.p7s").write_bytes(signature)
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM)
                                                  for c in sign_env.chain))
    proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                           "-in", str(tmp_path / "claim.p7s"), "-content",
                           str(tmp_path / "claim"), "-CAfile", str(tmp_path / "chain.pem"),
                           "-purpose", "any", "-out", os.devnull],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Verification successful" in proc.stderr
    # openssl refuses the same signature over other content
    (tmp_path / "claim").write_bytes(CLAIM + b" ")
    proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                           "-in", str(tmp_path / "claim.p7s"), "-content",
                           str(tmp_path / "claim"), "-CAfile", str(tmp_path / "chain.pem"),
                           "-purpose", "any", "-out", os.devnull],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0

    report = verifier(sign_env).verify_cades(CLAIM, signature)
    assert verdict(report) == ("TOTAL_PASSED", None), report
    assert report.level == level
    assert report.signer == "8" + card.holder().rpps
    assert report.signing_time is not None
    assert abs(report.signing_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert report.signing_time_source == ("claimed" if level == "B-B" else "timestamp")


def test_cades_baseline_attributes(sign_env: SignEnv) -> None:
    """signing-certificate-v2 and signing-time signed; B-LT: chain + OCSP (RFC 5940), v5."""
    card = sign_env.cards["alice"]
    signed = cms.ContentInfo.load(sign(sign_env, card, "B-LT"))["content"]
    assert signed["version"].native == "v5"
    assert signed["encap_content_info"]["content"].native is None        # detached
    si = signed["signer_infos"][0]
    names = {a["type"].native for a in si["signed_attrs"]}
    assert {"content_type", "message_digest", "signing_time",
            "signing_certificate_v2"} <= names
    assert [a["type"].native for a in si["unsigned_attrs"]] == ["signature_time_stamp_token"]
    crls = list(signed["crls"])
    # the signer's and the TSA certificate's OCSP responses
    assert [c.chosen["other_rev_info_format"].native for c in crls] == ["ocsp_response"] * 2
    embedded = {c.chosen.dump() for c in signed["certificates"]}
    for ca in sign_env.chain:
        assert ca.public_bytes(Encoding.DER) in embedded


def test_b_lt_verifies_offline_from_what_it_embeds(sign_env: SignEnv) -> None:
    card = sign_env.cards["alice"]
    offline = verifier(sign_env, live=False)
    report = offline.verify_cades(CLAIM, sign(sign_env, card, "B-LT"))
    assert verdict(report) == ("TOTAL_PASSED", None)
    assert report.revocation is not None and "embedded OCSP" in report.revocation
    # B-T embeds no revocation data: offline, nothing says whether the key was good
    report = offline.verify_cades(CLAIM, sign(sign_env, card, "B-T"))
    assert verdict(report) == ("INDETERMINATE", "TRY_LATER")


def test_pin_asked_for_each_signature_and_wrong_pin_counts_down(sign_env: SignEnv) -> None:
    card = sign_env.cards["bob"]
    sign(sign_env, card, "B-B")
    assert card.verified is False          # the signature PIN is spent by the signature
    with pytest.raises(PinIncorrect) as first:
        sign_cades(CLAIM, CardSigner(card, "9999"))
    assert first.value.retries_left == 2
    with pytest.raises(PinIncorrect) as second:
        sign_cades(CLAIM, CardSigner(card, "9998"))
    assert second.value.retries_left == 1
    sign(sign_env, card, "B-B")                 # a good PIN resets the counter
    assert card.tries == 3
    for _ in range(2):
        with pytest.raises(PinIncorrect):
            sign_cades(CLAIM, CardSigner(card, "0000"))
    with pytest.raises(PinLocked):
        sign_cades(CLAIM, CardSigner(card, "0000"))
    with pytest.raises(PinLocked):
        sign_cades(CLAIM, CardSigner(card, PIN))
    assert card.signatures.count("auth") == 0   # only ever the signature key
    card.tries = 3


# --- refusals, each with its own verdict ---------------------------------------------------

def test_truncated_random_and_empty_cms(sign_env: SignEnv) -> None:
    good = sign(sign_env, sign_env.cards["alice"], "B-T")
    v = verifier(sign_env)
    for bad in (good[: len(good) // 2], good[:-1], os.urandom(2000), b"", b"\x30\x03\x02\x01",
                b"\x30\x80" + good[2:]):
        report = v.verify_cades(CLAIM, bad)
        assert verdict(report) == ("TOTAL_FAILED", "FORMAT_FAILURE"), report
    # a flipped byte inside: still a verdict, never an exception
    for i in range(0, len(good), max(1, len(good) // 200)):
        mutated = good[:i] + bytes([good[i] ^ 0x55]) + good[i + 1:]
        assert v.verify_cades(CLAIM, mutated).indication in {"TOTAL_FAILED", "INDETERMINATE",
                                                            "TOTAL_PASSED"}


def test_wrong_content(sign_env: SignEnv) -> None:
    report = verifier(sign_env).verify_cades(CLAIM.replace(b"26.50", b"62.50"),
                                             sign(sign_env, sign_env.cards["alice"], "B-T"))
    assert verdict(report) == ("TOTAL_FAILED", "HASH_FAILURE")


def test_tampered_signature_value(sign_env: SignEnv) -> None:
    info = cms.ContentInfo.load(sign(sign_env, sign_env.cards["alice"], "B-B"))
    si = info["content"]["signer_infos"][0]
    value = bytearray(si["signature"].native)
    value[10] ^= 1
    si["signature"] = bytes(value)
    report = verifier(sign_env).verify_cades(CLAIM, info.dump(force=True))
    assert verdict(report) == ("TOTAL_FAILED", "SIG_CRYPTO_FAILURE")


class AuthKeySigner(CardSigner):
    """What a broken or malicious client would do: sign a document with the login key."""

    def __init__(self, card: SoftCard) -> None:
        super().__init__(card, PIN)
        from asn1crypto import x509 as asn1_x509

        self._signing_cert = asn1_x509.Certificate.load(
            card.certs["auth"].public_bytes(Encoding.DER))
        self.card = card

    async def async_sign_raw(self, data: bytes, digest_algorithm: str,
                             dry_run: bool = False) -> bytes:
        self.card.verify_pin(PIN)
        return self.card.sign("auth", data)


def test_signature_by_the_authentication_key(sign_env: SignEnv) -> None:
    card = sign_env.cards["alice"]
    signature = sign_cades(CLAIM, AuthKeySigner(card), level="B-T",
                           timestamper=HttpTimeStamper(sign_env.tsa_url))
    report = verifier(sign_env).verify_cades(CLAIM, signature)
    assert verdict(report) == ("INDETERMINATE", "CHAIN_CONSTRAINTS_FAILURE")
    assert "nonRepudiation" in report.detail


def test_foreign_certificate(sign_env: SignEnv) -> None:
    """A card of another CA, same profile shape: no path to our root."""
    card = sign_env.cards["alice"]
    foreign_ca = ThrowawayIssuer()
    from cryptography import x509

    certs = {u: x509.load_der_x509_certificate(foreign_ca.issue(
        card.holder(), u, card.keys[u].public_key())) for u in ("auth", "sign")}
    foreign = SoftCard(card.holder(), card.keys, certs)  # type: ignore[arg-type]
    report = verifier(sign_env).verify_cades(CLAIM, sign_cades(CLAIM, CardSigner(foreign, PIN)))
    assert verdict(report) == ("INDETERMINATE", "NO_CERTIFICATE_CHAIN_FOUND")


def test_expired_certificate(sign_env: SignEnv) -> None:
    """Four years on (the verifier's clock; the TSA's genTime), the 3-year card has expired."""
    import copy

    from pki.clock import FixedClock

    card = sign_env.cards["expired"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4 * 366)
    assert card.certs["sign"].not_valid_after_utc < later
    clock = FixedClock(later)
    v = Verifier([sign_env.root], [sign_env.issuing],
                 [sign_env.auth.config.profiles.sign_policy_oid],
                 live=LiveRevocation(clock), clock=clock)
    stamper = copy.copy(sign_env.tsa.stamper)
    stamper.fixed_dt = later
    # the time stamp proves the signature was made after the certificate expired
    stamped = sign_cades(CLAIM, CardSigner(card, PIN), level="B-T", timestamper=stamper,
                         now=later)
    assert verdict(v.verify_cades(CLAIM, stamped)) == ("TOTAL_FAILED", "EXPIRED")
    # no time stamp: the claimed time proves nothing, and the certificate is expired now
    bare = sign_cades(CLAIM, CardSigner(card, PIN), now=later)
    assert verdict(v.verify_cades(CLAIM, bare)) == ("INDETERMINATE", "OUT_OF_BOUNDS_NO_POE")
    # the same signatures, judged today, are fine: the verdicts come from time, not the card
    assert verdict(verifier(sign_env).verify_cades(CLAIM, sign(sign_env, card, "B-T")))[0] \
        == "TOTAL_PASSED"


def test_held_at_signing_time(sign_env: SignEnv) -> None:
    card = sign_env.cards["held"]
    sign_env.revoke(card, "certificateHold")
    sign_env.wait_status(card, "hold")
    report = verifier(sign_env).verify_cades(CLAIM, sign(sign_env, card, "B-T"))
    assert verdict(report) == ("INDETERMINATE", "TRY_LATER")
    assert "hold" in report.detail


def test_key_compromised_before_signing_time(sign_env: SignEnv) -> None:
    """Signed (B-LT, its embedded OCSP said good), then revoked for keyCompromise with an
    invalidity date an hour before the signature: the signature fails."""
    card = sign_env.cards["compromised"]
    signature = sign(sign_env, card, "B-LT")
    assert verdict(verifier(sign_env).verify_cades(CLAIM, signature))[0] == "TOTAL_PASSED"
    signed_at = verifier(sign_env).verify_cades(CLAIM, signature).signing_time
    assert signed_at is not None
    sign_env.revoke(card, "keyCompromise", invalidity=signed_at - dt.timedelta(hours=1))
    sign_env.wait_status(card, "revoked")
    report = verifier(sign_env).verify_cades(CLAIM, signature)
    assert verdict(report) == ("TOTAL_FAILED", "REVOKED"), report
    assert "keyCompromise" in report.detail


def test_revoked_after_signing_time(sign_env: SignEnv) -> None:
    """Revoked (keyCompromise, no earlier invalidity date) after a time-stamped signature:
    it stays valid; an untimestamped one has no proof it came first."""
    card = sign_env.cards["later"]
    stamped = sign(sign_env, card, "B-T")
    bare = sign(sign_env, card, "B-B")
    # Revocation times have whole seconds: a revocation in the signature's own second could
    # have come first, and counts so.
    time.sleep(1.1)
    sign_env.revoke(card, "keyCompromise")
    sign_env.wait_status(card, "revoked")
    v = verifier(sign_env)
    report = v.verify_cades(CLAIM, stamped)
    assert verdict(report) == ("TOTAL_PASSED", None), report
    assert report.revocation is not None and "revoked" in report.revocation
    assert verdict(v.verify_cades(CLAIM, bare)) == ("INDETERMINATE", "REVOKED_NO_POE")
    # signed after the revocation: the time stamp now proves the opposite
    assert verdict(v.verify_cades(CLAIM, sign(sign_env, card, "B-T"))) == (
        "TOTAL_FAILED", "REVOKED")


def test_openssl_ts_verify_accepts_the_time_stamp(sign_env: SignEnv, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    signed = cms.ContentInfo.load(sign(sign_env, sign_env.cards["alice"], "B-T"))["content"]
    si = signed["signer_infos"][0]
    token = si["unsigned_attrs"][0]["values"][0]
    (tmp_path / "token.der").write_bytes(token.dump())
    (tmp_path / "sigvalue").write_bytes(si["signature"].native)
    org = sign_env.auth.issuing_ca("ORGANISATIONS").certificate
    (tmp_path / "tsa-chain.pem").write_bytes(org.public_bytes(Encoding.PEM)
                                             + sign_env.root.public_bytes(Encoding.PEM))
    proc = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in",
                           str(tmp_path / "token.der"), "-data", str(tmp_path / "sigvalue"),
                           "-CAfile", str(tmp_path / "tsa-chain.pem")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_b_lt_embeds_the_tsa_certificate_ocsp_response(sign_env: SignEnv) -> None:
    """B-LT carries, after the signer's, the OCSP response of the TSA certificate that signed
    the time stamp (RFC 5940 in SignedData.crls), signed by its issuer and saying good."""
    from asn1crypto import cms as asn1_cms
    from cryptography import x509 as cx509
    from cryptography.x509 import ocsp as cocsp

    from cps_sign.revocation import OcspChecker
    from cps_sign.signing import tsa_of

    info = asn1_cms.ContentInfo.load(sign(sign_env, sign_env.cards["alice"], "B-LT"))
    tsa, token_certs = tsa_of(info)
    signed = info["content"]
    responses = [c.chosen["other_rev_info"].dump() for c in signed["crls"]
                 if c.name == "other" and c.chosen["other_rev_info_format"].native
                 == "ocsp_response"]
    assert len(responses) == 2
    serials = [cocsp.load_der_ocsp_response(d).serial_number for d in responses]
    assert serials == [sign_env.cards["alice"].certs["sign"].serial_number, tsa.serial_number]
    carried = [cx509.load_der_x509_certificate(c.chosen.dump())
               for c in signed["certificates"]] + token_certs
    issuer = next(c for c in carried if c.subject == tsa.issuer)
    status = OcspChecker().status(responses[1], tsa, issuer)
    assert status.status == "good"
