"""Hostile input: nothing a client sends yields a 5xx or stops the server answering correctly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.http.server import HttpServer, Limits
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.request import MalformedRequest, fast_single_sha1, parse_request
from tests.servers import Conn as RawConn

from .conftest import Env, Running, run_server


@pytest.fixture(scope="module")
def strict(env: Env) -> Iterator[Running]:
    """A second server on the same service with short timeouts (slowloris tests)."""
    running = run_server(HttpServer([OcspEndpoint(env.service)],
                                    limits=Limits(head_timeout=0.5, body_timeout=0.5,
                                                  idle_timeout=2.0)))
    yield running
    running.close()


def _valid(env: Env) -> bytes:
    cert = x509.load_pem_x509_certificate(env.certs["good"].read_bytes())
    issuer = x509.load_pem_x509_certificate(env.ca_pem.read_bytes())
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build() \
        .public_bytes(serialization.Encoding.DER)


class Conn(RawConn):
    """A raw keep-alive HTTP/1.1 client that posts OCSP requests."""

    def post(self, body: bytes, ctype: bytes = b"application/ocsp-request") -> None:
        self.send(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _still_answers(env: Env, port: int | None = None) -> None:
    conn = Conn(port or env.running.port)
    conn.post(_valid(env))
    status, _, body = conn.response()
    conn.close()
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD


GARBAGE = [
    b"", b"\x00", b"\x30", b"\x30\x80\x00\x00", b"\x30\x84\xff\xff\xff\xff",
    b"\x30\x03\x02\x01\x00", b"\x30" * 5000, b"\x30\x82" * 3000, b"\xff" * 1000,
    b"\x1f\xff\xff\xff\xff\x7f",
]


def test_garbage_bodies_are_malformed_not_5xx(env: Env) -> None:
    valid = _valid(env)
    conn = Conn(env.running.port)
    for body in [*GARBAGE, valid[:-1], valid[:10], valid + b"\x00", valid[:3] + valid]:
        conn.post(body)
        status, headers, answer = conn.response()
        assert status == 200, body[:20]
        assert answer == bytes.fromhex("30030a0101"), body[:20]
        assert headers["content-type"] == "application/ocsp-response"
    conn.close()
    _still_answers(env)


def _nested(depth: int) -> bytes:
    out = b"\x05\x00"
    for _ in range(depth):
        out = b"\x30" + (bytes([len(out)]) if len(out) < 128 else
                         b"\x82" + len(out).to_bytes(2, "big")) + out
    return out


def test_nested_garbage(env: Env) -> None:
    conn = Conn(env.running.port)
    for depth in (1, 5, 50, 2000):
        conn.post(_nested(depth)[:60000])
        status, _, answer = conn.response()
        assert status == 200 and answer == bytes.fromhex("30030a0101")
    conn.close()


def test_ten_megabyte_body_is_refused_without_reading_it(env: Env) -> None:
    conn = Conn(env.running.port)
    conn.send(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
              b"Content-Length: 10485760\r\n\r\n" + b"\x30" * 65536)
    status, headers, _ = conn.response()
    assert status == 413 and headers.get("connection") == "close"
    conn.close()
    _still_answers(env)


def test_oversized_header_and_bad_framing(env: Env) -> None:
    cases = [
        b"GET /ocsp/x HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5"
        b"\r\n\r\n0\r\n\r\n",                                     # request smuggling shape
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"100000\r\n",                                                # chunk over the /ocsp limit
        b"GET /ocsp/x HTTP/1.1\r\n\r\n",                                # no Host
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    ]
    for raw in cases:
        conn = Conn(env.running.port)
        conn.send(raw)
        status, _, _ = conn.response()
        assert 400 <= status < 500, raw[:40]
        conn.close()
    _still_answers(env)


def test_pipelined_requests_are_answered_in_order(env: Env) -> None:
    valid = _valid(env)
    conn = Conn(env.running.port)
    one = (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
           b"Content-Length: " + str(len(valid)).encode() + b"\r\n\r\n" + valid)
    bad = (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    conn.send((one + bad + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") * 50)
    for _ in range(50):
        assert ocsp.load_der_ocsp_response(conn.response()[2]).certificate_status == \
            ocsp.OCSPCertStatus.GOOD
        assert conn.response()[2] == bytes.fromhex("30030a0101")
        assert conn.response()[2] == b'{"status":"ok"}'
    conn.close()


def test_http10_and_keep_alive(env: Env) -> None:
    valid = _valid(env)
    conn = Conn(env.running.port)
    req = (b"POST /ocsp HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Type: "
           b"application/ocsp-request\r\nContent-Length: " + str(len(valid)).encode() +
           b"\r\n\r\n" + valid)
    for _ in range(3):
        conn.send(req)
        status, headers, _ = conn.response()
        assert status == 200 and headers["connection"].lower() == "keep-alive"
    conn.send(req.replace(b"Connection: Keep-Alive\r\n", b""))
    status, headers, _ = conn.response()
    assert status == 200 and headers["connection"] == "close"
    assert conn.closed()


def test_slowloris_partial_requests_time_out(env: Env, strict: Running) -> None:
    conns = []
    for _ in range(20):
        conn = Conn(strict.port)
        conn.send(b"POST /ocsp HTTP/1.1\r\nHost: x\r\n")    # never finishes its head
        conns.append(conn)
    body_conn = Conn(strict.port)
    body_conn.send(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                   b"\x30")                                  # nor its body
    _still_answers(env, strict.port)                      # others are served meanwhile
    time.sleep(0.3)
    conns[0].send(b"X-Drip: 1\r\n")                         # dripping does not extend the timer
    time.sleep(0.6)
    for conn in [*conns, body_conn]:
        status, _, _ = conn.response()
        assert status == 408
        assert conn.closed()
        conn.close()
    idle = Conn(strict.port)
    time.sleep(2.5)
    assert idle.closed()                                   # idle keep-alive connections close
    _still_answers(env, strict.port)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=200).map(lambda b: b"\x30" + bytes([len(b) % 128]) + b),
))
def test_fuzz_random_bodies(env: Env, body: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_request(body)
    fast_single_sha1(body)
    conn = _FUZZ_CONN.get(env)
    conn.post(body)
    status, _, answer = conn.response()
    assert status == 200
    assert answer[:1] == b"\x30"
    assert ocsp.load_der_ocsp_response(answer).response_status in (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST, ocsp.OCSPResponseStatus.UNAUTHORIZED,
        ocsp.OCSPResponseStatus.SUCCESSFUL)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_mutated_valid_requests(env: Env, data: st.DataObject) -> None:
    valid = bytearray(_VALID.get(env))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(valid) - 1))
        valid[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(valid)))
    conn = _FUZZ_CONN.get(env)
    conn.post(bytes(valid[:cut]))
    status, _, answer = conn.response()
    assert status == 200
    ocsp.load_der_ocsp_response(answer)


def test_after_fuzzing_the_responder_still_answers(env: Env) -> None:
    _still_answers(env)
    status = Conn(env.running.port)
    status.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.response()[0] == 200


class _Cache:
    def __init__(self, make: object) -> None:
        self.make = make
        self.value: object = None

    def get(self, env: Env):  # type: ignore[no-untyped-def]
        if self.value is None:
            self.value = self.make(env)  # type: ignore[operator]
        return self.value


_FUZZ_CONN = _Cache(lambda env: Conn(env.running.port))
_VALID = _Cache(_valid)
