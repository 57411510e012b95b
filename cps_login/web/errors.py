"""PkiError -> JSON, in one place."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cps_login.errors import (
    DETAILED_REASONS,
    ChallengeRefused,
    CredentialRefused,
    PatientAuthFailed,
    RateLimited,
    TokenInvalid,
)
from pki.errors import NotAuthorised, PkiError

log = logging.getLogger(__name__)


def error_answer(exc: PkiError) -> tuple[int, dict[str, object], dict[str, str]]:
    """(HTTP status, JSON body, headers) for a refusal: the one mapping of every route, Flask's
    and the provider's WSGI front's (cps_login.oidc.front)."""
    body: dict[str, object] = {"error": exc.code}
    headers: dict[str, str] = {}
    if isinstance(exc, CredentialRefused) and exc.disclose:
        body["reason"] = exc.reason
        if exc.reason in DETAILED_REASONS:
            body["message"] = exc.detail
    elif isinstance(exc, TokenInvalid):
        body["reason"] = exc.reason
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", ' \
                                      f'error_description="{exc.reason}"'
    elif isinstance(exc, ChallengeRefused | CredentialRefused | PatientAuthFailed):
        pass   # nothing more: unknown and wrong credentials look the same
    elif isinstance(exc, NotAuthorised):
        body["rule"] = exc.rule
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.http_status < 500:
        body["message"] = exc.message
    else:
        log.error("server error %s: %s", exc.code, exc.message)
    return exc.http_status, body, headers


def register(app: Flask) -> None:
    @app.errorhandler(PkiError)
    def _pki_error(exc: PkiError) -> tuple[Response, int]:
        status, body, headers = error_answer(exc)
        response = jsonify(body)
        response.headers.update(headers)
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return jsonify({"error": (exc.name or "error").lower().replace(" ", "_")}), code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return jsonify({"error": "server_error"}), 500
