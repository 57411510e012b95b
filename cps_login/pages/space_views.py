"""The patient space's content pages on the ``pages`` blueprint: documents (read in the page,
upload, hide from one professional or from all), health data (allergies, vaccinations,
measures), secure messages (read, reply) and shared summaries (share for a set time, revoke).

Every POST is a plain form with the CSRF token (checked before anything else); every read and
write goes through ``PatientSpace`` / ``PatientService``, which decide by the access rules and
record each decision in the history. Bad input re-renders the page with a clear message (400)
and stores nothing; a refusal by the rules is the same 403 page as elsewhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import g, redirect, render_template, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers.response import Response

from cps_login.access import Actor
from cps_login.pages import i18n
from cps_login.pages.views import (
    PageRefused,
    _check_csrf,
    _frame,
    _overview,
    _profession,
    _services,
    _signed_in,
    _to_signin,
    _when,
    bp,
    t,
)
from cps_login.patient_checks import HealthInput, Refused, health_data, limits, today_in_france
from cps_login.patient_space import SHARE_DAYS_MAX
from pki.errors import InvalidInput, NotAuthorised, NotFound

SHARE_DAYS = (1, 7, 30, 90)
DONE = ("uploaded", "hidden", "shown", "health", "replied", "shared", "revoked")


def _space() -> Any:
    return _services().space


def parse_date(raw: str) -> dt.date:
    try:
        return i18n.parse_date(raw)
    except ValueError:
        raise InvalidInput(t("date.invalid", format=t("date.format"))) from None


def show_date(day: dt.date) -> str:
    return i18n.show_date(day, g.lang)


def _page_session() -> Any:
    session = _signed_in()
    if session is None:
        return None
    return session


def _refusing(exc: Exception) -> PageRefused:
    if isinstance(exc, NotAuthorised):
        return PageRefused(403, "error.forbidden", exc.rule, audit=False)
    return PageRefused(404, "error.not_found", "unknown_target")


def _say(exc: InvalidInput) -> str:
    """Why input was refused, in the page's language when the service said it with a key."""
    if not isinstance(exc, Refused):
        return str(exc)
    fields = dict(exc.fields)
    if "field" in fields:
        fields["field"] = t(f"field.{fields['field']}")
    if "name" in fields and exc.key.startswith("measure"):
        spec = health_data()["measures"].get(fields["name"])
        fields["name"] = (spec["label"][g.lang].lower() if spec is not None
                          else t("field.diastolic") if fields["name"] == "diastolic"
                          else fields["name"])
    return t(f"invalid.{exc.key}", **fields)


def _done() -> str | None:
    done = request.args.get("done")
    return f"done.{done}" if done in DONE else None


# --- record home ----------------------------------------------------------------------------
@bp.get("/records/<ins>/")
def record(ins: str) -> Response:
    return redirect(url_for("pages.history", ins=ins), 303)


# --- documents ------------------------------------------------------------------------------
def _documents_page(ins: str, error: str | None = None, status: int = 200
                    ) -> tuple[str, int] | Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        uploads = _space().uploads(Actor("patient", session.ins), rec["ins"])
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    docs = [{**d, "date": _when(dt.datetime.fromisoformat(d["created_at"]))}
            for d in rec["documents"]]
    ups = [{**u, "date": _when(dt.datetime.fromisoformat(u["created_at"])),
            "kb": max(1, u["size"] // 1024)} for u in uploads]
    pros = {p["national_id"]: p["name"] for p in rec["care_team"] + rec["consents"]}
    return render_template("pages/documents.html", **_frame(session.ins, rec), page="documents",
                           documents=docs, uploads=ups, pros=pros, error=error, done=_done(),
                           max_mb=int(limits()["upload_max_bytes"]) // (1024 * 1024)), status


@bp.get("/records/<ins>/documents")
def documents(ins: str) -> tuple[str, int] | Response:
    return _documents_page(ins)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> tuple[str, int]:
    return render_template("pages/error.html", message="error.too_large"), 413


@bp.post("/records/<ins>/documents")
def upload(ins: str) -> tuple[str, int] | Response:
    request.max_content_length = int(limits()["upload_max_bytes"]) + 64 * 1024
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    file = request.files.get("file")
    try:
        if file is None:
            raise InvalidInput(t("documents.no_file"))
        _space().upload(session.ins, rec["ins"], request.form.get("title", ""),
                        file.filename or "", file.read(int(limits()["upload_max_bytes"]) + 1))
    except InvalidInput as exc:
        return _documents_page(ins, _say(exc), 400)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    return redirect(url_for("pages.documents", ins=rec["ins"], done="uploaded"), 303)


@bp.post("/records/<ins>/documents/visibility")
def document_visibility(ins: str) -> tuple[str, int] | Response:
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    kind = request.form.get("kind", "")
    change = request.form.get("change", "")
    target = request.form.get("target", "").strip()[:32]
    try:
        doc_id = int(request.form.get("doc", ""))
    except ValueError:
        raise PageRefused(404, "error.not_found", "unknown_document") from None
    visible = ({d["id"] for d in rec["documents"]} if kind == "document" else
               {u["id"] for u in _space().uploads(Actor("patient", session.ins), rec["ins"])})
    if kind not in ("document", "upload") or doc_id not in visible:
        raise PageRefused(404, "error.not_found", "unknown_document", {"document": doc_id})
    try:
        if change in ("hide_from", "show_to"):
            _space().hide_from(session.ins, rec["ins"], kind, doc_id, target,
                               change == "hide_from")
        elif change in ("hide", "show") and kind == "upload":
            _space().set_upload_hidden(session.ins, rec["ins"], doc_id, change == "hide")
        elif change in ("hide", "show"):
            _services().patients.control(session.ins, rec["ins"], f"{change}_document",
                                         str(doc_id))
        else:
            raise PageRefused(400, "error.bad_request", "unknown_change", {"change": change[:32]})
    except InvalidInput as exc:
        return _documents_page(ins, _say(exc), 400)
    except NotFound:
        return _documents_page(ins, t("documents.unknown_pro"), 400)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    done = "hidden" if change in ("hide", "hide_from") else "shown"
    return redirect(url_for("pages.documents", ins=rec["ins"], done=done), 303)


@bp.get("/records/<ins>/documents/<int:doc_id>")
def read_document(ins: str, doc_id: int) -> str | Response:
    """A professional's document, read in the page (the view is in the history)."""
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    download = request.args.get("download") == "1"
    try:
        doc = _space().read_document(session.ins, rec["ins"], doc_id, download=download)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    except (NotFound, InvalidInput):
        raise PageRefused(404, "error.not_found", "unknown_document",
                          {"document": doc_id}) from None
    if download:
        return _file(doc["content"].encode(), "text/plain; charset=utf-8",
                     f"document-{doc_id}.txt", download=True)
    return render_template("pages/document.html", **_frame(session.ins, rec), page="documents",
                           doc={**doc, "date": _when(dt.datetime.fromisoformat(
                               doc["created_at"]))})


@bp.get("/records/<ins>/uploads/<int:upload_id>")
def read_upload(ins: str, upload_id: int) -> str | Response:
    """The patient's own document in the page: an image shown, a PDF opened or downloaded."""
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    ups = {u["id"]: u for u in _space().uploads(Actor("patient", session.ins), rec["ins"])}
    if upload_id not in ups:
        raise PageRefused(404, "error.not_found", "unknown_document", {"upload": upload_id})
    up = ups[upload_id]
    return render_template("pages/upload.html", **_frame(session.ins, rec), page="documents",
                           up={**up, "date": _when(dt.datetime.fromisoformat(
                               up["created_at"]))})


@bp.get("/records/<ins>/uploads/<int:upload_id>/file")
def upload_file(ins: str, upload_id: int) -> Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    download = request.args.get("download") == "1"
    try:
        meta, data = _space().read_upload(Actor("patient", session.ins), rec["ins"], upload_id,
                                          download=download)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    except NotFound:
        raise PageRefused(404, "error.not_found", "unknown_document",
                          {"upload": upload_id}) from None
    return _file(data, meta["media_type"], meta["filename"], download)


def _file(data: bytes, media_type: str, name: str, download: bool) -> Response:
    response = Response(data, mimetype=media_type)
    safe = "".join(c for c in name if c.isalnum() or c in "._-") or "document"
    disposition = "attachment" if download else "inline"
    response.headers["Content-Disposition"] = f'{disposition}; filename="{safe}"'
    # nothing in a served file may run or load anything; an image is also sandboxed (a PDF is
    # not: browsers refuse to open a PDF in a sandboxed document)
    policy = "default-src 'none'; frame-ancestors 'none'; form-action 'none'"
    response.headers["Content-Security-Policy"] = (
        policy if media_type == "application/pdf" else policy + "; sandbox")
    return response


# --- health data ----------------------------------------------------------------------------
def _health_page(ins: str, error: str | None = None, status: int = 200,
                 form: dict[str, str] | None = None) -> tuple[str, int] | Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        entries = _space().health(Actor("patient", session.ins), rec["ins"])
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    measures = health_data()["measures"]
    for e in entries:
        e["day"] = show_date(dt.date.fromisoformat(e["date"]))
        if e["kind"] == "measure" and e["name"] in measures:
            e["label"] = measures[e["name"]]["label"][g.lang]
    return render_template(
        "pages/health.html", **_frame(session.ins, rec), page="health", error=error,
        done=_done(), form=form or {}, today=show_date(today_in_france(dt.datetime.now(dt.UTC))),
        allergies=[e for e in entries if e["kind"] == "allergy"],
        vaccinations=[e for e in entries if e["kind"] == "vaccination"],
        measures=[e for e in entries if e["kind"] == "measure"],
        kinds=[(k, m["label"][g.lang], m["unit"], "min2" in m) for k, m in measures.items()]
    ), status


@bp.get("/records/<ins>/health")
def health(ins: str) -> tuple[str, int] | Response:
    return _health_page(ins)


def _number(raw: str | None, field: str) -> float | None:
    text = (raw or "").strip().replace(",", ".")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(t("health.not_a_number", field=field)) from None


@bp.post("/records/<ins>/health")
def health_post(ins: str) -> tuple[str, int] | Response:
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    form = {k: request.form.get(k, "")[:200] for k in ("kind", "name", "measure", "value",
                                                        "value2", "date", "note")}
    try:
        kind = form["kind"]
        entry = HealthInput(kind, form["measure"] if kind == "measure" else form["name"],
                            parse_date(form["date"]), _number(form["value"], "value"),
                            _number(form["value2"], "value2"), form["note"])
        _space().add_health(session.ins, rec["ins"], entry)
    except InvalidInput as exc:
        return _health_page(ins, _say(exc), 400, form)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    return redirect(url_for("pages.health", ins=rec["ins"], done="health"), 303)


# --- messages -------------------------------------------------------------------------------
def _messages_page(ins: str, error: str | None = None, status: int = 200
                   ) -> tuple[str, int] | Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        conversations = _space().conversations(Actor("patient", session.ins), rec["ins"])
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    for conv in conversations:
        conv["date"] = _when(dt.datetime.fromisoformat(conv["created_at"]))
        for m in conv["messages"]:
            m["date"] = _when(dt.datetime.fromisoformat(m["at"]))
            m["mine"] = m["author_id"] == session.ins
    return render_template("pages/messages.html", **_frame(session.ins, rec), page="messages",
                           conversations=conversations, error=error, done=_done(),
                           max_kb=int(limits()["attachment_max_bytes"]) // 1024), status


@bp.get("/records/<ins>/messages")
def messages(ins: str) -> tuple[str, int] | Response:
    return _messages_page(ins)


@bp.post("/records/<ins>/messages/<int:conversation_id>")
def reply(ins: str, conversation_id: int) -> tuple[str, int] | Response:
    request.max_content_length = int(limits()["attachment_max_bytes"]) + 64 * 1024
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    file = request.files.get("attachment")
    attachment = None
    if file is not None and file.filename:
        attachment = (file.filename, file.read(int(limits()["attachment_max_bytes"]) + 1))
    try:
        _space().send(Actor("patient", session.ins), rec["ins"], conversation_id,
                      request.form.get("body", ""), attachment)
    except InvalidInput as exc:
        return _messages_page(ins, _say(exc), 400)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    except NotFound:
        raise PageRefused(404, "error.not_found", "unknown_conversation",
                          {"conversation": conversation_id}) from None
    return redirect(url_for("pages.messages", ins=rec["ins"], done="replied"), 303)


@bp.get("/records/<ins>/messages/attachments/<int:message_id>")
def message_attachment(ins: str, message_id: int) -> Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        name, media_type, data = _space().attachment(Actor("patient", session.ins), rec["ins"],
                                                     message_id)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    except NotFound:
        raise PageRefused(404, "error.not_found", "unknown_attachment",
                          {"message": message_id}) from None
    return _file(data, media_type, name, download=True)


# --- shares ---------------------------------------------------------------------------------
def _shares_page(ins: str, error: str | None = None, status: int = 200
                 ) -> tuple[str, int] | Response:
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        shares = _space().shares(session.ins, rec["ins"])
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    for s in shares:
        s["until"] = _when(dt.datetime.fromisoformat(s["revoked_at"] or s["expires_at"]))
        s["profession"] = _profession(s["profession_code"])
    uses = [e for e in rec["events"] if e["action"] == "read_summary"]
    for e in uses:
        e["date"] = _when(dt.datetime.fromisoformat(e["at"]))
    pros = {p["national_id"]: p["name"] for p in rec["care_team"] + rec["consents"]}
    return render_template("pages/shares.html", **_frame(session.ins, rec), page="shares",
                           shares=shares, uses=uses, pros=pros, days=SHARE_DAYS,
                           error=error, done=_done()), status


@bp.get("/records/<ins>/shares")
def shares(ins: str) -> tuple[str, int] | Response:
    return _shares_page(ins)


@bp.post("/records/<ins>/shares")
def share_post(ins: str) -> tuple[str, int] | Response:
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        days = int(request.form.get("days", "0"))
    except ValueError:
        days = 0
    try:
        if not 1 <= days <= SHARE_DAYS_MAX:
            raise InvalidInput(t("shares.bad_days", max=SHARE_DAYS_MAX))
        _space().share(session.ins, rec["ins"], request.form.get("target", "")[:32], days)
    except InvalidInput as exc:
        return _shares_page(ins, _say(exc), 400)
    except NotFound:
        return _shares_page(ins, t("documents.unknown_pro"), 400)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    return redirect(url_for("pages.shares", ins=rec["ins"], done="shared"), 303)


@bp.post("/records/<ins>/shares/<int:share_id>/revoke")
def share_revoke(ins: str, share_id: int) -> Response:
    _check_csrf()
    session = _page_session()
    if session is None:
        return _to_signin(expired=True)
    rec = _overview(session.ins, ins)
    try:
        _space().revoke_share(session.ins, rec["ins"], share_id)
    except NotAuthorised as exc:
        raise _refusing(exc) from None
    except NotFound:
        raise PageRefused(404, "error.not_found", "unknown_share", {"share": share_id}) from None
    return redirect(url_for("pages.shares", ins=rec["ins"], done="revoked"), 303)

