"""A client of RFC 3161 time-stamping authorities (ours at ``POST /tsa``, or any other).

``timestamp(url, digest)`` returns the TimeStampToken (a CMS ``ContentInfo``) ready to be put
in a signature's unsigned ``signature-time-stamp`` attribute (CAdES/PAdES B-T). It checks what
the client can check without trust decisions: the response is granted, the token's imprint is
the digest asked for, and the nonce comes back. Verifying the TSA's signature and chain is the
validator's business (cps_sign verification, ``openssl ts -verify``).
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request

from asn1crypto import cms, tsp

from cps_sign.tsa import ACCEPTED_HASHES, CONTENT_TYPE_QUERY, CONTENT_TYPE_REPLY, TimeStampResp

MAX_REPLY = 64 * 1024       # a token with two certificates is ~2 KB


class TsaError(Exception):
    """The TSA refused, or answered something that is not a usable time stamp."""

    def __init__(self, message: str, fail_info: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fail_info = fail_info


def build_query(digest: bytes, hash_alg: str = "sha256", *, nonce: int | None = None,
                cert_req: bool = True, policy: str | None = None) -> tsp.TimeStampReq:
    """A ``TimeStampReq`` for ``digest`` (the hash of what is time-stamped)."""
    request = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": hash_alg},
                            "hashed_message": digest},
        "cert_req": cert_req,
    }
    if nonce is not None:
        request["nonce"] = nonce
    if policy is not None:
        request["req_policy"] = policy
    return tsp.TimeStampReq(request)


def post_query(url: str, query: bytes, timeout: float = 10.0) -> bytes:
    """POST a DER query, return the DER reply; ``TsaError`` for anything but 200."""
    if not url.lower().startswith(("http://", "https://")):
        raise TsaError(f"{url}: a TSA URL is http:// or https://")
    request = urllib.request.Request(url, data=query, method="POST",  # noqa: S310
                                     headers={"Content-Type": CONTENT_TYPE_QUERY})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            kind = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()
            body: bytes = answer.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as exc:
        raise TsaError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TsaError(f"{url}: {exc}") from None
    if kind != CONTENT_TYPE_REPLY:
        raise TsaError(f"{url}: answered {kind or 'no content type'}, not {CONTENT_TYPE_REPLY}")
    if len(body) > MAX_REPLY:
        raise TsaError(f"{url}: reply over {MAX_REPLY} bytes")
    return body


def timestamp_response(url: str, digest: bytes, hash_alg: str = "sha256", *,
                       nonce: int | None = None, cert_req: bool = True, timeout: float = 10.0
                       ) -> tsp.TimeStampResp:
    """The TSA's whole ``TimeStampResp`` (granted or not), parsed; only transport and parse
    errors raise."""
    query = build_query(digest, hash_alg, nonce=nonce, cert_req=cert_req)
    raw = post_query(url, query.dump(), timeout)
    try:
        response = TimeStampResp.load(raw, strict=True)
        _ = response.native
    except Exception as exc:   # asn1crypto: ValueError, TypeError, ...
        raise TsaError(f"{url}: the reply is not a DER TimeStampResp ({exc})") from None
    return response


def timestamp(url: str, digest: bytes, hash_alg: str = "sha256", *, nonce: bool = True,
              cert_req: bool = True, timeout: float = 10.0) -> cms.ContentInfo:
    """The TimeStampToken over ``digest`` from the TSA at ``url`` (see the module text)."""
    if hash_alg not in ACCEPTED_HASHES or len(digest) != ACCEPTED_HASHES[hash_alg]:
        raise ValueError(f"digest: a {', '.join(ACCEPTED_HASHES)} value of the right length")
    value = secrets.randbits(63) if nonce else None
    response = timestamp_response(url, digest, hash_alg, nonce=value, cert_req=cert_req,
                                  timeout=timeout)
    status = response["status"]
    if status["status"].native not in ("granted", "granted_with_mods"):
        fail = tuple(sorted(status["fail_info"].native or ()))
        text = "; ".join(status["status_string"].native or ())
        raise TsaError(f"{url}: time stamp {status['status'].native}"
                       f"{' (' + ', '.join(fail) + ')' if fail else ''}"
                       f"{': ' + text if text else ''}", fail)
    token: cms.ContentInfo = response["time_stamp_token"]
    info = token_info(token)
    imprint = info["message_imprint"]
    if (imprint["hash_algorithm"]["algorithm"].native != hash_alg
            or imprint["hashed_message"].native != digest):
        raise TsaError(f"{url}: the token time-stamps another imprint")
    if info["nonce"].native != value:
        raise TsaError(f"{url}: the token does not echo our nonce")
    return token


def token_info(token: cms.ContentInfo) -> tsp.TSTInfo:
    """The ``TSTInfo`` inside a TimeStampToken (genTime, serial, policy, imprint)."""
    if token["content_type"].native != "signed_data":
        raise TsaError("a TimeStampToken is a CMS SignedData")
    encap = token["content"]["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise TsaError("the token's content is not a TSTInfo")
    info: tsp.TSTInfo = encap["content"].parsed
    return info
