"""Blueprint ``portal``: patients (and legal representatives of minors) at ``/patient``.

Sign-in with INS + password + TOTP code gives a short session token (Bearer); sign-out ends it
on every replica. A
representative acts on a child's record by using the child's INS in the URL; the access rules
decide (``legal_representative`` while the child is a minor).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cps_login.errors import PatientAuthFailed
from pki.errors import InvalidInput

bp = Blueprint("portal", __name__, url_prefix="/patient")

CONTROLS = ("block", "unblock", "hide_document", "show_document", "oppose_emergency",
            "allow_emergency", "consent", "withdraw_consent")


def _services() -> Any:
    from cps_login.web import services_of

    return services_of(current_app)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("expected a JSON object body")
    return body


def _bearer() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        raise PatientAuthFailed("session_missing")
    return token.strip()


def _patient_ins() -> str:
    session = _services().patient_auth.session(_bearer())
    return str(session.ins)


@bp.post("/activate")
def activate() -> Response:
    body = _body()
    result = _services().patient_auth.activate(str(body.get("ins", "")),
                                               str(body.get("activation_code", "")),
                                               str(body.get("password", "")),
                                               request.remote_addr or "")
    response = jsonify({"totp_secret": result.totp_secret,
                        "otpauth_uri": result.provisioning_uri})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/signin")
def signin() -> Response:
    body = _body()
    session = _services().patient_auth.sign_in(
        str(body.get("ins", "")), str(body.get("password", "")), str(body.get("totp", "")),
        request.remote_addr or "")
    response = jsonify({"session": session.token, "token_type": "Bearer",
                        "expires_at": session.expires})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/signout")
def signout() -> Response:
    _services().patient_auth.sign_out(_bearer())
    response = jsonify({"signed_out": True})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/records/<ins>/documents")
def documents(ins: str) -> Response:
    actor = _patient_ins()
    return jsonify({"ins": ins, "documents": _services().patients.patient_documents(actor, ins)})


@bp.get("/records/<ins>/history")
def history(ins: str) -> Response:
    actor = _patient_ins()
    events = _services().patients.history(actor, ins)
    return jsonify({"ins": ins, "events": events,
                    "alerts": [e for e in events if e["flagged"]]})


@bp.post("/records/<ins>/controls")
def control(ins: str) -> Response:
    actor = _patient_ins()
    body = _body()
    change = str(body.get("change", ""))
    if change not in CONTROLS:
        raise InvalidInput(f"change must be one of {', '.join(CONTROLS)}")
    target = body.get("target")
    _services().patients.control(actor, ins, change, None if target is None else str(target))
    return jsonify({"ins": ins, "change": change, "target": target, "done": True})
