"""What a signature at B-T and B-LT fetches: an RFC 3161 time stamp and the signing
certificate's OCSP response, over plain HTTP POST (both answers are signed objects, checked by
whoever uses them).
"""

from __future__ import annotations

import urllib.error
import urllib.request

from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from pyhanko.sign.timestamps.api import TimeStamper

MAX_ANSWER = 1024 * 1024


class FetchFailed(Exception):
    """The TSA or the OCSP responder gave no usable answer."""


def http_post(url: str, body: bytes, content_type: str, accept: str,
              timeout: float = 10.0) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise FetchFailed(f"URL must be http(s): {url!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="POST", headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            data: bytes = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raise FetchFailed(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchFailed(f"{url} unreachable: {exc}") from None
    if len(data) > MAX_ANSWER:
        raise FetchFailed(f"{url} answered more than {MAX_ANSWER} bytes")
    return data


class HttpTimeStamper(TimeStamper):
    """pyHanko's time-stamp client over urllib (the request, nonce and response checks are
    pyHanko's; only the transport is ours)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        super().__init__(include_nonce=True)  # type: ignore[no-untyped-call]
        self.url = url
        self.timeout = timeout

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        raw = http_post(self.url, req.dump(), "application/timestamp-query",
                        "application/timestamp-reply", self.timeout)
        try:
            resp = tsp.TimeStampResp.load(raw)
            resp.native  # noqa: B018 - parse it all now: a bad answer fails here
        except ValueError as exc:
            raise FetchFailed(f"{self.url}: not a time-stamp response: {exc}") from None
        return resp


def ocsp_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)):
            return str(desc.access_location.value)
    return None


def fetch_ocsp(cert: x509.Certificate, issuer: x509.Certificate, url: str | None = None,
               timeout: float = 10.0) -> bytes:
    """The DER OCSP response for ``cert`` from ``url`` (default: its AIA responder); only a
    ``successful`` answer is returned, its signature is checked by the verifier."""
    target = url or ocsp_url(cert)
    if target is None:
        raise FetchFailed("the signing certificate names no OCSP responder")
    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
               .build().public_bytes(Encoding.DER))
    raw = http_post(target, request, "application/ocsp-request", "application/ocsp-response",
                    timeout)
    try:
        resp = ocsp.load_der_ocsp_response(raw)
    except ValueError:
        raise FetchFailed(f"{target}: not an OCSP response") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise FetchFailed(f"{target}: OCSP status {resp.response_status.name}")
    return raw
