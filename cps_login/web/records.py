"""Blueprint ``records``: the patient-record API for professionals (``/api``).

Authenticated by the broker's access token (``Authorization: Bearer``), validated like any
relying service would (signature by JWKS key, typ, iss, aud, exp). Emergency modes are asked
for with ``mode=break_glass|emergency`` and a ``reason``. The patient space's professional side:
secure messages (``/messages``: only the care team opens a conversation), the patient's own
documents (``/uploads``) and health data (``/health``), and a summary the patient shared
(``/summary``) — every call decided by the access rules and recorded in the history.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cps_login.errors import TokenInvalid
from cps_login.patients import ProfessionalContext
from pki.errors import InvalidInput

bp = Blueprint("records", __name__, url_prefix="/api")


def _services() -> Any:
    from cps_login.web import services_of

    return services_of(current_app)


def _professional() -> ProfessionalContext:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenInvalid("token_missing")
    claims = _services().validator.validate(token.strip())
    return ProfessionalContext.from_claims(claims)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("expected a JSON object body")
    return body


def _mode() -> tuple[str, str | None]:
    mode = request.args.get("mode", "normal")
    if mode not in ("normal", "break_glass", "emergency"):
        raise InvalidInput(f"mode must be normal, break_glass or emergency, got {mode!r}")
    return mode, request.args.get("reason")


def _datetime(value: object, field: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be an ISO 8601 date-time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{field} needs a timezone")
    return parsed


@bp.get("/whoami")
def whoami() -> Response:
    pro = _professional()
    return jsonify({"national_id": pro.national_id, "profession_code": pro.profession_code,
                    "organisation_id": pro.organisation_id})


@bp.post("/patients")
def enrol() -> tuple[Response, int]:
    pro = _professional()
    body = _body()
    try:
        birth = dt.date.fromisoformat(str(body.get("birth_date")))
    except ValueError:
        raise InvalidInput("birth_date must be YYYY-MM-DD") from None
    reps = body.get("representatives", [])
    if not isinstance(reps, list):
        raise InvalidInput("representatives must be a list of INS")
    enrolment = _services().patients.enrol(pro, str(body.get("ins", "")),
                                           str(body.get("given_name", "")),
                                           str(body.get("surname", "")), birth,
                                           [str(r) for r in reps])
    return jsonify({"ins": enrolment.ins, "activation_code": enrolment.activation_code}), 201


@bp.get("/patients/<ins>/documents")
def list_documents(ins: str) -> Response:
    pro = _professional()
    mode, reason = _mode()
    docs = _services().patients.list_documents(pro, ins, mode, reason)
    return jsonify({"ins": ins, "mode": mode, "documents": docs})


@bp.get("/patients/<ins>/documents/<int:doc_id>")
def read_document(ins: str, doc_id: int) -> Response:
    pro = _professional()
    mode, reason = _mode()
    return jsonify(_services().patients.read_document(pro, ins, doc_id, mode, reason))


@bp.post("/patients/<ins>/documents")
def write_document(ins: str) -> tuple[Response, int]:
    pro = _professional()
    mode, reason = _mode()
    body = _body()
    doc_id = _services().patients.write_document(
        pro, ins, str(body.get("category", "")), str(body.get("title", "")),
        str(body.get("content", "")),
        hidden_from_patient_until=_datetime(body.get("hidden_from_patient_until"),
                                            "hidden_from_patient_until"),
        hidden_from_representatives=bool(body.get("hidden_from_representatives", False)),
        mode=mode, reason=reason)
    return jsonify({"id": doc_id}), 201


@bp.put("/patients/<ins>/documents/<int:doc_id>/visibility")
def set_visibility(ins: str, doc_id: int) -> Response:
    pro = _professional()
    body = _body()
    _services().patients.set_visibility(
        pro, ins, doc_id,
        hidden_from_patient_until=_datetime(body.get("hidden_from_patient_until"),
                                            "hidden_from_patient_until"),
        hidden_from_representatives=bool(body.get("hidden_from_representatives", False)))
    return jsonify({"id": doc_id, "updated": True})


@bp.post("/patients/<ins>/representatives")
def add_representative(ins: str) -> tuple[Response, int]:
    pro = _professional()
    body = _body()
    _services().patients.add_representative(pro, ins, str(body.get("representative", "")))
    return jsonify({"ins": ins, "representative": body.get("representative")}), 201


# --- the patient space, professional side (cps_login.patient_space) ------------------------
SPACE = "cps_login.patient_space"


def _space() -> Any:
    """The patient space on the broker's record service, made at first use (the messages key
    read then; an app given partial services for a test never needs it)."""
    space = current_app.extensions.get(SPACE)
    if space is None:
        from cps_login.patient_space import MessageBox, PatientSpace

        services = _services()
        space = PatientSpace(services.patients, MessageBox(services.config.message_key()))
        current_app.extensions[SPACE] = space
    return space


def _attachment(body: dict[str, Any]) -> tuple[str, bytes] | None:
    raw = body.get("attachment")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str):
        raise InvalidInput("attachment must be {\"filename\": ..., \"data\": <base64>}")
    try:
        data = base64.b64decode(raw["data"], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput("attachment data must be base64") from None
    return str(raw.get("filename", "attachment")), data


def _large_body() -> None:
    """Messages may carry an attachment (limits in health_data.json), base64 in JSON."""
    from cps_login.patient_checks import limits

    request.max_content_length = int(limits()["attachment_max_bytes"]) * 4 // 3 + 64 * 1024


@bp.get("/patients/<ins>/messages")
def read_messages(ins: str) -> Response:
    pro = _professional()
    return jsonify({"ins": ins, "conversations": _space().conversations(pro.actor, ins)})


@bp.post("/patients/<ins>/messages")
def open_conversation(ins: str) -> tuple[Response, int]:
    _large_body()
    pro = _professional()
    body = _body()
    conv = _space().open_conversation(pro, ins, str(body.get("subject", "")),
                                      str(body.get("body", "")), _attachment(body))
    return jsonify({"conversation": conv}), 201


@bp.post("/patients/<ins>/messages/<int:conversation_id>")
def send_message(ins: str, conversation_id: int) -> tuple[Response, int]:
    _large_body()
    pro = _professional()
    body = _body()
    msg = _space().send(pro.actor, ins, conversation_id, str(body.get("body", "")),
                        _attachment(body))
    return jsonify({"conversation": conversation_id, "message": msg}), 201


@bp.get("/patients/<ins>/messages/attachments/<int:message_id>")
def message_attachment(ins: str, message_id: int) -> Response:
    pro = _professional()
    name, media_type, data = _space().attachment(pro.actor, ins, message_id)
    return _file(data, media_type, name)


def _file(data: bytes, media_type: str, name: str) -> Response:
    response = Response(data, mimetype=media_type)
    safe = "".join(c for c in name if c.isalnum() or c in "._-") or "file"
    response.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/patients/<ins>/uploads")
def list_uploads(ins: str) -> Response:
    pro = _professional()
    mode, reason = _mode()
    return jsonify({"ins": ins, "mode": mode,
                    "uploads": _space().uploads(pro.actor, ins, mode, reason)})


@bp.get("/patients/<ins>/uploads/<int:upload_id>")
def read_upload(ins: str, upload_id: int) -> Response:
    pro = _professional()
    mode, reason = _mode()
    meta, data = _space().read_upload(pro.actor, ins, upload_id, download=True, mode=mode,
                                      reason=reason)
    return _file(data, meta["media_type"], meta["filename"])


@bp.get("/patients/<ins>/health")
def read_health(ins: str) -> Response:
    pro = _professional()
    mode, reason = _mode()
    return jsonify({"ins": ins, "mode": mode,
                    "entries": _space().health(pro.actor, ins, mode, reason)})


@bp.get("/patients/<ins>/summary")
def read_summary(ins: str) -> Response:
    pro = _professional()
    return jsonify(_space().summary(pro, ins))
