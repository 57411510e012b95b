"""The hot path's caches: complete responses by exact request, parsed heads by exact bytes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import re
import threading
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from pki.ca import lifecycle
from pki.http import Request
from pki.http.server import HEAD_CACHE_ENTRIES, HttpProtocol, HttpServer, Prebuilt
from pki.ocsp import endpoint as ep
from pki.ocsp.service import Answer

from .conftest import Env
from .test_hostile import Conn


def _request(env: Env, name: str, nonce: bytes | None = None) -> bytes:
    cert = x509.load_pem_x509_certificate(env.certs[name].read_bytes())
    issuer = x509.load_pem_x509_certificate(env.ca_pem.read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _get(conn: Conn, path: str) -> tuple[int, dict[str, str], bytes]:
    conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return conn.response()


def _count(env: Env, kind: str) -> int:
    found = re.search(rf'ocsp_requests_total{{result="{kind}"}} (\d+)', env.endpoint.metrics_text())
    return int(found.group(1)) if found else 0


def test_repeated_requests_are_cache_hits_with_headers_of_the_bytes_served(env: Env) -> None:
    body = _request(env, "good")
    conn = Conn(env.running.port)
    hits, good = env.endpoint.cache_hits, _count(env, "good")
    answers = []
    for _ in range(3):
        conn.post(body)
        answers.append(conn.response())
    conn.close()
    assert env.endpoint.cache_hits >= hits + 2
    assert _count(env, "good") == good + 3               # metrics count cache hits too
    for status, headers, data in answers:
        assert status == 200 and data == answers[0][2]
        assert headers["content-type"] == "application/ocsp-response"
        assert headers["etag"] == '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        response = ocsp.load_der_ocsp_response(data)
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert parsedate_to_datetime(headers["last-modified"]) == response.this_update_utc
        assert parsedate_to_datetime(headers["expires"]) == response.next_update_utc
        max_age = int(re.search(r"max-age=(\d+)", headers["cache-control"]).group(1))  # type: ignore[union-attr]
        assert response.next_update_utc is not None
        left = (response.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
        assert abs(left - max_age) < 3
        assert abs((parsedate_to_datetime(headers["date"]) - dt.datetime.now(dt.UTC))
                   .total_seconds()) < 3


def test_a_cached_answer_never_outlives_a_status_change(env: Env) -> None:
    serial = env.issue("cached", "1000000020")
    env.service.on_status_change([serial])
    request = _request(env, "cached")
    path = "/ocsp/" + quote(base64.b64encode(request).decode(), safe="")
    conn = Conn(env.running.port)
    for _ in range(2):                                   # the second one is a cache hit
        conn.post(request)
        assert ocsp.load_der_ocsp_response(conn.response()[2]).certificate_status == \
            ocsp.OCSPCertStatus.GOOD
        assert ocsp.load_der_ocsp_response(_get(conn, path)[2]).certificate_status == \
            ocsp.OCSPCertStatus.GOOD
    lifecycle.revoke(env.auth, serial, "superseded")     # listener: on_status_change
    conn.post(request)
    _, headers, data = conn.response()
    assert ocsp.load_der_ocsp_response(data).certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert headers["etag"] == '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    assert ocsp.load_der_ocsp_response(_get(conn, path)[2]).certificate_status == \
        ocsp.OCSPCertStatus.REVOKED
    conn.close()


def test_nonce_answers_are_signed_live_and_never_cached(env: Env) -> None:
    conn = Conn(env.running.port)
    seen = set()
    for nonce in (b"\x01" * 16, b"\x02" * 16, b"\x01" * 16):
        conn.post(_request(env, "good", nonce=nonce))
        status, headers, data = conn.response()
        assert status == 200 and headers["cache-control"] == "no-store"
        response = ocsp.load_der_ocsp_response(data)
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        seen.add(data)
    conn.close()
    assert len(seen) == 3                                # same nonce twice: signed twice


# --- unit level: a fake service -------------------------------------------------------------
class FakeService:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.ready.set()
        self.error: BaseException | None = None
        self.generation = 1
        self.live_pending = 0
        self.signed_total = 0
        self.at = 1_800_000_000
        self.lookups = 0

    def now(self) -> int:
        return self.at

    def lookup(self, der: bytes) -> Answer:
        self.lookups += 1
        return Answer(b"\x30\x03" + der[:1] + bytes([self.lookups % 256]) * 600, "good",
                      self.at, self.at + 100)

    def oldest_this_update(self) -> None:
        return None

    def presigned_count(self) -> int:
        return 0


def _post(endpoint: ep.OcspEndpoint, body: bytes) -> Any:
    return endpoint(Request("POST", "/ocsp", "", {"content-type": "application/ocsp-request"},
                            body))


def test_cache_expiry_generation_and_max_age() -> None:
    service = FakeService()
    endpoint = ep.OcspEndpoint(service)  # type: ignore[arg-type]
    first = _post(endpoint, b"a")
    hit = _post(endpoint, b"a")
    assert service.lookups == 1 and isinstance(hit, Prebuilt) and hit.body == first.body
    assert b"max-age=100," in hit.fields
    service.at += 40                                     # max-age counts down
    assert b"max-age=60," in _post(endpoint, b"a").fields and service.lookups == 1
    service.generation += 1                              # a status change: looked up again
    _post(endpoint, b"a")
    assert service.lookups == 2
    service.at += 100                                    # at nextUpdate: never served
    assert _post(endpoint, b"a").body != first.body and service.lookups == 3


def test_cache_is_bounded_in_bytes() -> None:
    service = FakeService()
    endpoint = ep.OcspEndpoint(service, cache_bytes=20_000)  # type: ignore[arg-type]
    for i in range(200):
        _post(endpoint, i.to_bytes(2, "big") * 20)
    assert 0 < len(endpoint._cache) < 200
    assert endpoint._cache_bytes <= 20_000


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def close(self) -> None:
        pass


def test_head_cache_is_bounded_and_does_not_change_answers() -> None:
    service = FakeService()
    endpoint = ep.OcspEndpoint(service)  # type: ignore[arg-type]
    server = HttpServer([endpoint])
    proto = HttpProtocol(server)
    transport = _Transport()
    proto.connection_made(transport)
    for i in range(HEAD_CACHE_ENTRIES * 2):
        proto.data_received(f"GET /nothing/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert len(server.head_cache) <= HEAD_CACHE_ENTRIES
    assert len(transport.out) == HEAD_CACHE_ENTRIES * 2
    assert all(out.startswith(b"HTTP/1.1 404 ") for out in transport.out)
    # The same head twice (the second time from the cache), then with a pipelined extra byte.
    transport.out.clear()
    post = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"
    proto.data_received(post)
    proto.data_received(post)
    assert [o.split(b"\r\n", 1)[0] for o in transport.out] == [b"HTTP/1.1 200 OK"] * 2
    assert transport.out[0].split(b"\r\n\r\n", 1)[1] == transport.out[1].split(b"\r\n\r\n", 1)[1]
    proto.data_received(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nzz")
    assert transport.out[-1].startswith(b"HTTP/1.1 200") and bytes(proto.buf) == b"z"
    server.close()
