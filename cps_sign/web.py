"""``POST /verify`` for relying services, in the broker role (public, no key needed: trust from
the store's ``ca`` table, revocation from the status tier through the broker's own
``RevocationChecker``).

Body (JSON): ``signature`` (base64 DER CMS) with ``content`` (base64) or ``content_sha256``
(hex, for content the service hashed itself), or ``pdf`` (base64 signed PDF). Answer: 200 with
the report (``indication``, ``sub_indication``, ``signer``, ``signing_time``, ...) whatever the
verdict; 400 ``invalid_request`` for a body that is none of these. A PDF is read by a child
process with hard limits (``cps_sign.pdf.read_pdf_signature_isolated``): one at a time per
client address (else 429), and all of them busy: 503, at once, with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cps_sign.pdf import PdfBusy, read_pdf_signature_isolated
from cps_sign.verify import Verifier

bp = Blueprint("cps_sign", __name__)
EXTRA = "signature_verifier"


def verifier_for(services: Any) -> Verifier:
    """One verifier per broker app (its caches are the warm cache of relying services)."""
    from cps_sign.revocation import LiveRevocation

    verifier: Verifier | None = services.extras.get(EXTRA)
    if verifier is None:
        live = LiveRevocation(services.clock, checker=services.revocation)
        verifier = Verifier(services.trust.anchors, services.trust.intermediates,
                            [services.config.pki.profiles.sign_policy_oid], live=live,
                            clock=services.clock,
                            # what anyone posts is parsed by a child with hard limits
                            pdf_reader=read_pdf_signature_isolated)
        services.extras[EXTRA] = verifier
    return verifier


def _bad(message: str) -> tuple[Response, int]:
    return jsonify({"error": "invalid_request", "error_description": message}), 400


def _b64(body: dict[str, Any], name: str) -> bytes | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not valid base64") from None


@bp.post("/verify")
def verify() -> tuple[Response, int]:
    from cps_login.web import services_of

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _bad("a JSON object is expected")
    try:
        signature, content, pdf = (_b64(body, n) for n in ("signature", "content", "pdf"))
    except ValueError as exc:
        return _bad(str(exc))
    digest_hex = body.get("content_sha256")
    verifier = verifier_for(services_of(current_app))
    if pdf is not None and signature is None and content is None and digest_hex is None:
        from cps_login.oidc.front import client_key

        try:
            report = verifier.verify_pades(pdf, client_key(request.remote_addr or ""))
        except PdfBusy as busy:
            if busy.mine:
                answer = jsonify({"error": "too_many_requests", "error_description":
                                  "your previous PDF is still being read: one at a time"})
                answer.headers["Retry-After"] = "5"
                return answer, 429
            answer = jsonify({"error": "temporarily_unavailable", "error_description":
                              "the server is reading other PDF files; try again shortly"})
            answer.headers["Retry-After"] = "10"
            return answer, 503
    elif signature is not None and pdf is None and (content is None) != (digest_hex is None):
        if content is not None:
            report = verifier.verify_cades(content, signature)
        else:
            try:
                digest = bytes.fromhex(digest_hex) if isinstance(digest_hex, str) else b""
            except ValueError:
                digest = b""
            if len(digest) != 32:
                return _bad("content_sha256 must be 64 hex digits")
            report = verifier.verify_cades_digest(digest, signature)
    else:
        return _bad("give signature with content or content_sha256, or pdf")
    return jsonify(report.as_dict()), 200
