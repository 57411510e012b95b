"""Blueprint ``portal``: patients (and legal representatives of minors) at ``/patient``.

Sign-in with INS + password + TOTP code gives a short session token (Bearer); sign-out ends it
on every replica. A
representative acts on a child's record by using the child's INS in the URL; the access rules
decide (``legal_representative`` while the child is a minor). The patient space's own content
(messages, the patient's documents and health data, shared summaries) is here too, as the
pages offer it (``cps_login.patient_space``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cps_login.errors import PatientAuthFailed
from cps_login.patient_checks import limits
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


# --- the patient space's own content (cps_login.patient_space), as the pages offer it -------
def _space() -> Any:
    return _services().space


def _me() -> Any:
    from cps_login.access import Actor

    return Actor("patient", _patient_ins())


def _file_body(body: dict[str, Any], field: str) -> tuple[str, bytes] | None:
    raw = body.get(field)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str):
        raise InvalidInput(f'{field} must be {{"filename": ..., "data": <base64>}}')
    try:
        data = base64.b64decode(raw["data"], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput(f"{field} data must be base64") from None
    return str(raw.get("filename", "document")), data


def _room_for(max_bytes: int) -> None:
    """A file, base64 in JSON, may make the body larger than the app's default bound."""
    request.max_content_length = max_bytes * 4 // 3 + 64 * 1024


def _sent_file(data: bytes, media_type: str, name: str) -> Response:
    response = Response(data, mimetype=media_type)
    safe = "".join(c for c in name if c.isalnum() or c in "._-") or "file"
    response.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/records/<ins>/messages")
def messages(ins: str) -> Response:
    return jsonify({"ins": ins, "conversations": _space().conversations(_me(), ins)})


@bp.post("/records/<ins>/messages/<int:conversation_id>")
def reply(ins: str, conversation_id: int) -> tuple[Response, int]:
    _room_for(int(limits()["attachment_max_bytes"]))
    me = _me()
    body = _body()
    msg = _space().send(me, ins, conversation_id, str(body.get("body", "")),
                        _file_body(body, "attachment"))
    return jsonify({"conversation": conversation_id, "message": msg}), 201


@bp.get("/records/<ins>/messages/attachments/<int:message_id>")
def attachment(ins: str, message_id: int) -> Response:
    name, media_type, data = _space().attachment(_me(), ins, message_id)
    return _sent_file(data, media_type, name)


@bp.get("/records/<ins>/uploads")
def uploads(ins: str) -> Response:
    return jsonify({"ins": ins, "uploads": _space().uploads(_me(), ins)})


@bp.post("/records/<ins>/uploads")
def upload(ins: str) -> tuple[Response, int]:
    _room_for(int(limits()["upload_max_bytes"]))
    me = _me()
    body = _body()
    sent = _file_body(body, "file")
    if sent is None:
        raise InvalidInput('file is required: {"filename": ..., "data": <base64>}')
    up = _space().upload(me.id, ins, str(body.get("title", "")), sent[0], sent[1])
    return jsonify({"id": up}), 201


@bp.get("/records/<ins>/uploads/<int:upload_id>")
def read_upload(ins: str, upload_id: int) -> Response:
    meta, data = _space().read_upload(_me(), ins, upload_id, download=True)
    return _sent_file(data, meta["media_type"], meta["filename"])


@bp.get("/records/<ins>/health")
def health(ins: str) -> Response:
    return jsonify({"ins": ins, "entries": _space().health(_me(), ins)})


def _number(value: object, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{field} must be a number")
    try:
        return float(value)
    except ValueError:
        raise InvalidInput(f"{field} must be a number") from None


@bp.post("/records/<ins>/health")
def add_health(ins: str) -> tuple[Response, int]:
    from cps_login.patient_checks import HealthInput

    me = _me()
    body = _body()
    try:
        day = dt.date.fromisoformat(str(body.get("date", "")))
    except ValueError:
        raise InvalidInput("date must be YYYY-MM-DD") from None
    entry = HealthInput(str(body.get("kind", "")), str(body.get("name", "")), day,
                        _number(body.get("value"), "value"), _number(body.get("value2"), "value2"),
                        str(body.get("note") or ""))
    return jsonify({"id": _space().add_health(me.id, ins, entry)}), 201


@bp.get("/records/<ins>/shares")
def shares(ins: str) -> Response:
    return jsonify({"ins": ins, "shares": _space().shares(_patient_ins(), ins)})


@bp.post("/records/<ins>/shares")
def share(ins: str) -> tuple[Response, int]:
    actor = _patient_ins()
    body = _body()
    days = body.get("days")
    if not isinstance(days, int) or isinstance(days, bool):
        raise InvalidInput("days must be a whole number of days")
    share_id = _space().share(actor, ins, str(body.get("professional", "")), days)
    return jsonify({"id": share_id}), 201


@bp.post("/records/<ins>/shares/<int:share_id>/revoke")
def revoke_share(ins: str, share_id: int) -> Response:
    _space().revoke_share(_patient_ins(), ins, share_id)
    return jsonify({"id": share_id, "revoked": True})
