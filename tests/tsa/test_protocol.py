"""RFC 3161 protocol of cps_sign.tsa, judged by OpenSSL (``openssl ts``), which nobody here
wrote: queries made by ``openssl ts -query``, replies read by ``openssl ts -reply`` and tokens
accepted by ``openssl ts -verify`` with the chain. Software keys, no HSM (tests/tsa/test_role.py
runs the same through the role and its token)."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms, tsp
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from cps_sign.tsa import MAX_QUERY, TimeStampResp, rejection
from cps_sign.tsa_client import build_query, token_info
from pki.clock import FixedClock
from tests.tsa.helpers import TEST_POLICY, SoftwareTsa, software_tsa

AT = dt.datetime(2026, 11, 27, 10, 30, 15, 123456, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(AT)


@pytest.fixture(scope="module")
def tsa(clock: FixedClock) -> SoftwareTsa:
    return software_tsa(clock)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "claim.xml"
    path.write_bytes(b"<claim>FSE 42</claim>\n")
    return path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          timeout=30, check=False)


def query_file(tmp: Path, data: Path, *options: str) -> Path:
    out = tmp / "q.tsq"
    done = openssl("ts", "-query", "-data", data, *options, "-out", out)
    assert done.returncode == 0, done.stderr
    return out


def reply(tsa: SoftwareTsa, query: bytes) -> TimeStampResp:
    return TimeStampResp.load(tsa.authority.respond(query))


def status(resp: TimeStampResp) -> tuple[str, set[str]]:
    info = resp["status"]
    return info["status"].native, set(info["fail_info"].native or ())


@pytest.mark.parametrize("alg", ["-sha256", "-sha384", "-sha512"])
def test_openssl_verifies_the_token_with_the_chain(tsa: SoftwareTsa, data: Path, tmp_path: Path,
                                                   alg: str) -> None:
    query = query_file(tmp_path, data, alg, "-cert")
    resp = tmp_path / "r.tsr"
    resp.write_bytes(tsa.authority.respond(query.read_bytes()))
    root = tsa.root_pem(tmp_path / "root.pem")
    for against in (["-queryfile", query], ["-data", data]):
        done = openssl("ts", "-verify", "-in", resp, *against, "-CAfile", root)
        assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stderr
    text = openssl("ts", "-reply", "-in", resp, "-text").stdout
    assert "Status: Granted." in text
    assert f"Policy OID: {TEST_POLICY}" in text
    assert f"Hash Algorithm: {alg[1:]}" in text
    assert "Time stamp: Nov 27 10:30:15 2026 GMT" in text      # the injected clock
    assert "Accuracy: 0x01 seconds" in text
    assert "Nonce: 0x" in text


def test_openssl_rejects_a_token_for_other_data(tsa: SoftwareTsa, data: Path,
                                                tmp_path: Path) -> None:
    query = query_file(tmp_path, data, "-sha256", "-cert")
    resp = tmp_path / "r.tsr"
    resp.write_bytes(tsa.authority.respond(query.read_bytes()))
    other = tmp_path / "other.xml"
    other.write_bytes(b"<claim>FSE 43</claim>\n")
    done = openssl("ts", "-verify", "-in", resp, "-data", other, "-CAfile",
                   tsa.root_pem(tmp_path / "root.pem"))
    assert "Verification: OK" not in done.stdout


def test_without_cert_req_no_certificate_and_openssl_needs_it_given(
        tsa: SoftwareTsa, data: Path, tmp_path: Path) -> None:
    query = query_file(tmp_path, data, "-sha256", "-no_nonce")
    raw = tsa.authority.respond(query.read_bytes())
    token = TimeStampResp.load(raw)["time_stamp_token"]
    assert not token["content"]["certificates"].native
    assert token_info(token)["nonce"].native is None
    resp = tmp_path / "r.tsr"
    resp.write_bytes(raw)
    root = tsa.root_pem(tmp_path / "root.pem")
    alone = openssl("ts", "-verify", "-in", resp, "-queryfile", query, "-CAfile", root)
    assert "Verification: OK" not in alone.stdout
    given = openssl("ts", "-verify", "-in", resp, "-queryfile", query, "-CAfile", root,
                    "-untrusted", tsa.chain_pem(tmp_path / "tsa.pem"))
    assert "Verification: OK" in given.stdout, given.stderr


def test_the_token_carries_what_rfc_3161_and_5816_ask(tsa: SoftwareTsa) -> None:
    digest = hashlib.sha256(b"x").digest()
    resp = reply(tsa, build_query(digest, nonce=2**70 + 5, cert_req=True).dump())
    assert status(resp) == ("granted", set())
    token = resp["time_stamp_token"]
    signed = token["content"]
    info = token_info(token)
    assert info["nonce"].native == 2**70 + 5
    assert info["gen_time"].native == AT.replace(microsecond=0)
    assert info["accuracy"]["seconds"].native == 1
    assert info["tsa"].chosen.native == tsa.authority._cert.subject.native
    attrs = {a["type"].native: a for a in signed["signer_infos"][0]["signed_attrs"]}
    assert set(attrs) == {"content_type", "message_digest", "signing_certificate_v2"}
    assert attrs["content_type"]["values"][0].native == "tst_info"
    ess = attrs["signing_certificate_v2"]["values"][0]["certs"][0]
    assert ess["cert_hash"].native == hashlib.sha256(tsa.authority._cert.dump()).digest()
    # The TSA's certificate and its issuer (a DER SET OF: in encoding order, not ours).
    certs = {c.chosen.sha256 for c in signed["certificates"]}
    assert certs == {tsa.authority._cert.sha256, hashlib.sha256(tsa.root.public_bytes(
        serialization.Encoding.DER)).digest()}


def test_serial_numbers_do_not_repeat(tsa: SoftwareTsa) -> None:
    query = build_query(hashlib.sha256(b"x").digest()).dump()
    serials = {token_info(reply(tsa, query)["time_stamp_token"])["serial_number"].native
               for _ in range(300)}
    assert len(serials) == 300
    assert all(0 < s < 2**127 for s in serials)


def _query(alg: str, digest: bytes, **extra: object) -> bytes:
    fields = {"version": "v1", "message_imprint": {"hash_algorithm": {"algorithm": alg},
                                                   "hashed_message": digest}}
    fields.update(extra)
    return tsp.TimeStampReq(fields).dump()


@pytest.mark.parametrize(("query", "fail"), [
    (_query("sha1", b"\x01" * 20), "bad_alg"),
    (_query("md5", b"\x01" * 16), "bad_alg"),
    (_query("sha3_256", b"\x01" * 32), "bad_alg"),
    (_query("sha256", b"\x01" * 31), "bad_data_format"),
    (_query("sha512", b"\x01" * 32), "bad_data_format"),
    (_query("sha256", b"\x01" * 32, version=2), "bad_data_format"),
    (_query("sha256", b"\x01" * 32, req_policy="1.2.3.4"), "unaccepted_policy"),
    (_query("sha256", b"\x01" * 32, extensions=[
        {"extn_id": "1.2.3.4", "critical": False, "extn_value": b"\x05\x00"}]),
     "unaccepted_extensions"),
    (b"", "bad_data_format"),
    (b"\x30\x03\x02\x01", "bad_data_format"),                  # truncated
    (_query("sha256", b"\x01" * 32) + b"\x00", "bad_data_format"),   # trailing byte
    (cms.ContentInfo({"content_type": "data", "content": b"hi"}).dump(), "bad_data_format"),
    (b"\x30\x82" + b"\xff" * 10, "bad_data_format"),
    (b"\x00" * (MAX_QUERY + 1), "bad_data_format"),
], ids=["sha1", "md5", "sha3", "short-digest", "long-alg-short-digest", "version-2",
        "other-policy", "extension", "empty", "truncated", "trailing", "content-info",
        "bad-length", "oversized"])
def test_refused_with_its_own_fail_info(tsa: SoftwareTsa, query: bytes, fail: str) -> None:
    resp = reply(tsa, query)
    assert status(resp) == ("rejection", {fail})
    assert resp["status"]["status_string"].native
    assert resp["time_stamp_token"].native is None


def test_openssl_reads_a_rejection(tsa: SoftwareTsa, data: Path, tmp_path: Path) -> None:
    query = query_file(tmp_path, data, "-sha1")
    resp = tmp_path / "r.tsr"
    resp.write_bytes(tsa.authority.respond(query.read_bytes()))
    text = openssl("ts", "-reply", "-in", resp, "-text").stdout
    assert "Status: Rejected." in text
    assert "unrecognized or unsupported algorithm identifier" in text


def test_our_own_policy_is_accepted(tsa: SoftwareTsa) -> None:
    resp = reply(tsa, _query("sha384", b"\x02" * 48, req_policy=TEST_POLICY))
    assert status(resp) == ("granted", set())


def test_random_and_mutated_bytes_never_raise(tsa: SoftwareTsa) -> None:
    rng = random.Random(3161)
    good = _query("sha256", b"\x03" * 32, nonce=77, cert_req=True)
    for i in range(400):
        if i % 2:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        else:
            mutated = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            raw = bytes(mutated)
        resp = reply(tsa, raw)
        assert status(resp)[0] in ("granted", "rejection")


def test_a_signing_failure_is_system_failure(tsa: SoftwareTsa,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_data: bytes) -> bytes:
        raise RuntimeError("HSM away")

    monkeypatch.setattr(tsa.authority, "_sign", broken)
    resp = reply(tsa, _query("sha256", b"\x04" * 32))
    assert status(resp) == ("rejection", {"system_failure"})


def test_rejection_round_trips_through_asn1crypto() -> None:
    resp = TimeStampResp.load(rejection("bad_alg", "no"))
    assert status(resp) == ("rejection", {"bad_alg"})


def test_a_certificate_without_critical_time_stamping_is_refused(tsa: SoftwareTsa) -> None:
    from cps_sign.tsa import TimeStampAuthority, TsaSettings

    with pytest.raises(ValueError, match="extendedKeyUsage"):
        TimeStampAuthority(tsa.authority.key, tsa.root, [], TsaSettings(TEST_POLICY))


def test_no_token_outside_the_tsa_certificate_validity(tsa: SoftwareTsa,
                                                        clock: FixedClock) -> None:
    query = _query("sha256", b"\x05" * 32)
    clock.advance(dt.timedelta(days=60))           # the test certificate lives 30 days
    try:
        resp = reply(tsa, query)
    finally:
        clock.advance(dt.timedelta(days=-60))
    assert status(resp) == ("rejection", {"time_not_available"})
    assert status(reply(tsa, query)) == ("granted", set())


ALGORITHMS = ["sha1", "sha224", "sha256", "sha384", "sha512", "md5", "sha3_256", "sha512_224"]


@settings(max_examples=150, deadline=None)
@given(alg=st.sampled_from(ALGORITHMS), length=st.integers(0, 80),
       nonce=st.one_of(st.none(), st.integers(-(2**600), 2**600)), cert_req=st.booleans())
def test_any_well_formed_request_gets_exactly_its_verdict(tsa: SoftwareTsa, alg: str,
                                                          length: int, nonce: int | None,
                                                          cert_req: bool) -> None:
    digest = bytes(range(length % 256))[:length].ljust(length, b"\x07")
    fields: dict[str, object] = {"cert_req": cert_req}
    if nonce is not None:
        fields["nonce"] = nonce
    resp = reply(tsa, _query(alg, digest, **fields))
    expected = {"sha256": 32, "sha384": 48, "sha512": 64}
    if alg not in expected:
        assert status(resp) == ("rejection", {"bad_alg"})
    elif length != expected[alg]:
        assert status(resp) == ("rejection", {"bad_data_format"})
    else:
        assert status(resp) == ("granted", set())
        token = resp["time_stamp_token"]
        info = token_info(token)
        assert info["nonce"].native == nonce
        assert info["message_imprint"]["hashed_message"].native == digest
        assert bool(token["content"]["certificates"].native) is cert_req


def test_an_rsa_tsa_key_signs_tokens_openssl_accepts(data: Path, tmp_path: Path) -> None:
    tsa = software_tsa(FixedClock(AT), rsa_key=True)
    query = query_file(tmp_path, data, "-sha384", "-cert")
    resp = tmp_path / "r.tsr"
    resp.write_bytes(tsa.authority.respond(query.read_bytes()))
    token = TimeStampResp.load(resp.read_bytes())["time_stamp_token"]
    signer = token["content"]["signer_infos"][0]
    assert signer["signature_algorithm"]["algorithm"].native == "sha256_rsa"
    done = openssl("ts", "-verify", "-in", resp, "-queryfile", query, "-CAfile",
                   tsa.root_pem(tmp_path / "root.pem"))
    assert "Verification: OK" in done.stdout, done.stderr
