"""Hostile input at every parser that takes it from outside (see fuzz_targets.py).

Three drivers over the same targets: hypothesis (structured inputs: valid objects mutated,
signed tokens with arbitrary claims, chained APDUs, JSON bodies, pipelined HTTP requests),
atheris (coverage-guided, a few seconds each in `make test`, minutes under `make fuzz`:
CPS_FUZZ_SECONDS), and the replay of every regression vector in tests/vectors/<parser>/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import fuzz_targets as ft
from .helpers import LONG, ROOT, env_for, record

EXAMPLES = int(os.environ.get("CPS_FUZZ_EXAMPLES", "2000" if LONG else "150"))
SECONDS = int(os.environ.get("CPS_FUZZ_SECONDS", "120" if LONG else "4"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
cuts = st.one_of(st.none(), st.integers(0, 600))


# --- replay -----------------------------------------------------------------------------------

def _vectors() -> list[tuple[str, Path]]:
    return [(d.name, p) for d in sorted(ft.VECTORS.iterdir()) if d.is_dir()
            for p in sorted(d.iterdir()) if p.is_file()]


@pytest.mark.parametrize(("parser", "path"), _vectors(), ids=lambda v: getattr(v, "name", v))
def test_regression_vectors(parser: str, path: Path) -> None:
    ft.guard(ft.TARGETS[parser], path.read_bytes())


def test_every_vector_directory_is_a_target() -> None:
    dirs = {d.name for d in ft.VECTORS.iterdir() if d.is_dir()}
    assert dirs <= set(ft.TARGETS), dirs - set(ft.TARGETS)
    readme = (ft.VECTORS / "README.md").read_text()
    missing = [p.name for _, p in _vectors() if p.name not in readme]
    assert not missing, f"vectors without provenance in tests/vectors/README.md: {missing}"


# --- hypothesis ------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.sampled_from(ft.seeds("ocsp_request")), flips=mutations, cut=cuts,
       raw=st.binary(max_size=300))
def test_ocsp_request_property(seed: bytes, flips: list[tuple[int, int]], cut: int | None,
                               raw: bytes) -> None:
    ft.guard(ft.ocsp_request, mutate(seed, flips, cut))
    ft.guard(ft.ocsp_request, raw)


@SETTINGS
@given(seed=st.sampled_from(ft.seeds("csr")), flips=mutations, cut=cuts)
def test_csr_property(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    ft.guard(ft.csr, mutate(seed, flips, cut))


cell = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["10003456789", "10", "60", "", "\"", "a,b", "x\ny", "\x00", "\u2028", " 10003456789 "])


@SETTINGS
@given(rows=st.lists(st.lists(cell, max_size=6), max_size=8), raw=st.binary(max_size=200),
       sep=st.sampled_from(["\n", "\r\n", "\r"]))
def test_directory_csv_property(rows: list[list[str]], raw: bytes, sep: str) -> None:
    header = "rpps,profession,given_name,surname"
    text = sep.join([header, *(",".join(r) for r in rows)])
    ft.guard(ft.directory_csv, text.encode("utf-8", "surrogatepass"))
    ft.guard(ft.directory_csv, raw)


apdu_bytes = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda cla, ins, p1, p2, data, le: bytes((cla, ins, p1, p2)) + data + le,
              st.sampled_from([0x00, 0x10, 0x0C, 0x80, 0xFF]),
              st.sampled_from([0xA4, 0x20, 0x22, 0x2A, 0x88, 0x2C, 0x24, 0xB0, 0xC0, 0xCB,
                               0x47, 0xDB, 0x44, 0x87, 0xFD]),
              st.integers(0, 255), st.integers(0, 255),
              st.one_of(st.just(b""),
                        st.binary(min_size=1, max_size=255).map(lambda d: bytes([len(d)]) + d),
                        st.integers(256, 70_000).map(
                            lambda n: b"\x00" + min(n, 65535).to_bytes(2, "big")
                            + b"\x11" * min(n, 65535))),
              st.sampled_from([b"", b"\x00", b"\x10", b"\x00\x00"])))


@SETTINGS
@given(apdus=st.lists(apdu_bytes, min_size=1, max_size=8), pin=st.sampled_from([True, False]))
def test_apdu_property(apdus: list[bytes], pin: bool) -> None:
    select = bytes.fromhex("00A404000DE828BD080F8025000001FF0010")
    verify = bytes.fromhex("0020000104") + b"1234"
    ft.guard(ft.apdu, ft.frame_apdus([select, *([verify] if pin else []), *apdus]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)


@SETTINGS
@given(seed=st.sampled_from(ft.seeds("login")), field=st.sampled_from(
    ["certificate", "challenge", "signature", "chain", "organisation_id", "extra"]),
    value=json_values, b64=st.binary(max_size=400))
def test_login_property(seed: bytes, field: str, value: object, b64: bytes) -> None:
    import base64

    body = json.loads(seed)
    body[field] = value
    ft.login_json(body)
    body = json.loads(seed)
    if field in ("certificate", "challenge", "signature"):
        body[field] = base64.b64encode(b64).decode()
    ft.login_json(body)


@SETTINGS
@given(header=st.dictionaries(st.sampled_from(["typ", "alg", "kid", "crit", "x"]), json_values,
                              max_size=4),
       claims=st.dictionaries(st.sampled_from(["iss", "aud", "sub", "jti", "iat", "exp", "nbf",
                                               "scope"]), json_values, max_size=8),
       base=st.booleans(), text=st.text(max_size=200))
def test_token_property(header: dict[str, object], claims: dict[str, object], base: bool,
                        text: str) -> None:
    if base:   # a proper header and claims, with the hypothesis values overriding some
        header = {"typ": "at+jwt", "alg": "ES256", "kid": "k1", **header}
        now = int(ft.NOW.timestamp())
        claims = {"iss": ft.ISSUER, "aud": ft.AUDIENCE, "sub": "8", "jti": "j", "iat": now,
                  "exp": now + 60, **claims}
    ft.guard(ft.token, b"\x01" + json.dumps(header).encode() + b"\x00"
             + json.dumps(claims).encode())
    ft.guard(ft.token, b"\x00" + text.encode("utf-8", "surrogatepass"))


def test_token_non_finite_times_refused() -> None:
    """exp/nbf must be real numbers: NaN or Infinity would never expire (found by hypothesis
    thinking, kept as a plain test)."""
    now = int(ft.NOW.timestamp())
    for exp in ("NaN", "Infinity", "1e999"):
        claims = (f'{{"iss":"{ft.ISSUER}","aud":"{ft.AUDIENCE}","sub":"8","jti":"j",'
                  f'"iat":{now},"exp":{exp}}}').encode()
        ft.guard(ft.token, b"\x01" + b'{"typ":"at+jwt","alg":"ES256","kid":"k1"}\x00' + claims)


http_line = st.sampled_from([
    b"GET /e HTTP/1.1", b"POST /e HTTP/1.1", b"HEAD /e HTTP/1.0", b"GET http://h:8/e?x HTTP/1.1",
    b"POST /ocsp HTTP/1.1", b"GET /nothing HTTP/1.1", b"GET HTTPS://H HTTP/1.1", b"BAD", b""])
http_field = st.sampled_from([
    b"Host: a", b"Host: a", b"Host: b:1", b"Host: [::1]:2", b"Host: a b", b"Content-Length: 3",
    b"Content-Length: 9999", b"Content-Length: x", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked", b"Connection: close", b"Connection: keep-alive",
    b"Expect: 100-continue", b" folded", b"X: \x00"]) | st.binary(max_size=20)
chunk = st.one_of(
    st.binary(max_size=40).map(lambda d: b"%x\r\n%s\r\n" % (len(d), d)),
    st.sampled_from([b"0\r\n\r\n", b"0\r\nT: v\r\n\r\n", b"5;e=1\r\nhello\r\n", b"zz\r\n",
                     b"fffffff\r\n", b"1\r\nab", b"\r\n"]))


@st.composite
def http_stream(draw: st.DrawFn) -> bytes:
    """Pipelined requests: lines, fields and bodies mostly well formed, some broken."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        out += b"\r\n" * draw(st.integers(0, 2)) + draw(http_line)
        out += b"".join(b"\r\n" + f for f in draw(st.lists(http_field, max_size=5)))
        out += b"\r\n\r\n" + b"".join(draw(st.lists(chunk, max_size=4)))
        out += draw(st.binary(max_size=8))
    return out


@SETTINGS
@given(stream=http_stream(), cut=st.integers(0, 255))
def test_http_request_property(stream: bytes, cut: int) -> None:
    ft.guard(ft.http_request, bytes([cut]) + stream)


# --- atheris -------------------------------------------------------------------------------------

@pytest.mark.parametrize("parser", sorted(ft.TARGETS))
def test_atheris(parser: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (dev extra) drives the coverage-guided fuzzing")
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz_main", parser,
         f"-max_total_time={SECONDS}", f"-artifact_prefix={artifacts}/", "-rss_limit_mb=2048",
         "-max_len=70000" if parser == "apdu" else "-max_len=8192", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 240, env=env_for(), cwd=ROOT)
    runs = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    crashes = sorted(artifacts.iterdir())
    keep = os.environ.get("CPS_FUZZ_KEEP")
    if crashes and keep:
        dest = Path(keep) / parser
        dest.mkdir(parents=True, exist_ok=True)
        for crash in crashes:
            shutil.copy(crash, dest / crash.name)
    record("fuzz", f"atheris on {parser}", "-", int(runs[-1].split()[1]) if runs else 0,
           len(crashes), f"{SECONDS} s coverage-guided", "inputs run (trials column)")
    assert proc.returncode == 0 and not crashes, (
        f"atheris found a crash in {parser}: {[c.name for c in crashes]}\n"
        f"{proc.stderr[-3000:]}\nadd it to tests/vectors/{parser}/ with its provenance")


@pytest.fixture(autouse=True, scope="module")
def _record_hypothesis() -> object:
    yield
    record("fuzz", "hypothesis (structured) over the seven parsers", "-", EXAMPLES * 7, 0,
           "mutated valid objects, signed arbitrary claims, chained APDUs, HTTP pipelines")
