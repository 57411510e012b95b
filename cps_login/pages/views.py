"""Blueprint ``pages``: the patient space as server-rendered pages at ``/espace``.

Plain HTML forms (no script): sign-in (INS + password + TOTP through ``PatientAuth``, so the
same answer, the same work and the same rate limit as the JSON API), the access history as a
timeline with filters, the privacy controls, and the switch to a child's profile. Every record
page goes through ``PatientService``, which applies the access rules and records each decision;
what the service cannot see — a forged CSRF token, an unknown record, a document id that is
not the patient's to see — is refused here and written to the audit chain as ``page.refused``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sansio.app import App
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.wrappers.response import Response

from cps_login.errors import PatientAuthFailed, RateLimited
from cps_login.pages import i18n
from cps_login.pages.security import PageSecurity, PageSession, load_secret, security_headers
from cps_login.patient_auth import PatientSession
from cps_login.patient_checks import PARIS
from pki import audit, ids
from pki.errors import InvalidInput, NotAuthorised, NotFound

bp = Blueprint("pages", __name__, url_prefix="/espace", template_folder="templates",
               static_folder="static")

EXTENSION = "cps_login.pages"
CHANGES = ("block", "unblock", "hide_document", "show_document", "oppose_emergency",
           "allow_emergency", "consent", "withdraw_consent")
EMERGENCY_MODES = ("break_glass", "emergency")


class PageRefused(Exception):
    """Refuse the request with an HTML page; ``audit`` says why in the chain."""

    def __init__(self, status: int, message: str, reason: str,
                 details: dict[str, Any] | None = None, audit: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.message = message
        self.reason = reason
        self.details = details or {}
        self.audit = audit


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    services = _services_of(state.app)
    options = services.config.extra.get("pages", {})
    state.app.extensions[EXTENSION] = PageSecurity(
        load_secret(services.config.home), str(options.get("secure_cookie", "auto")))


def _services_of(app: Flask | App) -> Any:
    return app.extensions["cps_login"]     # cps_login.web.EXTENSION: the Services


def _services() -> Any:
    return _services_of(current_app)


def _security() -> PageSecurity:
    sec = current_app.extensions[EXTENSION]
    assert isinstance(sec, PageSecurity)
    return sec


# --- per-request state --------------------------------------------------------------------
@bp.before_request
def _load_state() -> None:
    sec = _security()
    g.secure = sec.secure(request.is_secure)
    loaded = sec.load(request.cookies.get(sec.cookie_name(g.secure)))
    g.page = loaded or PageSession.fresh()
    g.page_dirty = loaded is None
    g.lang = i18n.negotiate(request.accept_languages, g.page.lang)


def _set_state(state: PageSession) -> None:
    g.page = state
    g.page_dirty = True


@bp.after_request
def _finish(response: Response) -> Response:
    for name, value in security_headers(g.get("secure", False)).items():
        if name not in response.headers:    # a served file keeps its own, stricter policy
            response.headers[name] = value
    if request.endpoint != "pages.static":
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Language"] = g.get("lang", i18n.DEFAULT)
        response.vary.add("Accept-Language")
    if g.get("page_dirty"):
        sec = _security()
        response.set_cookie(sec.cookie_name(g.secure), sec.dump(g.page), httponly=True,
                            secure=g.secure, samesite="Strict", path="/")
    return response


@bp.app_template_global()
def t(key: str, **fields: object) -> str:
    return i18n.translate(g.get("lang", i18n.DEFAULT), key, **fields)


@bp.context_processor
def _template_context() -> dict[str, Any]:
    return {"lang": g.get("lang", i18n.DEFAULT), "languages": i18n.LANGUAGES,
            "csrf_token": _security().csrf_token(g.page) if "page" in g else ""}


def _actor() -> str | None:
    return getattr(g, "patient", None)


def _audit_refusal(reason: str, target: str, details: dict[str, Any]) -> None:
    services = _services()
    with services.store.session() as session:
        audit.append(session, "page.refused", target[:64] or "-",
                     {"reason": reason, "method": request.method, "path": request.path[:200],
                      "client": request.remote_addr or "", **details},
                     actor=_actor() or "anonymous", clock=services.clock)


@bp.errorhandler(PageRefused)
def _refused(exc: PageRefused) -> tuple[str, int]:
    if exc.audit:
        target = str(request.view_args.get("ins", "")) if request.view_args else ""
        _audit_refusal(exc.reason, target, exc.details)
    return render_template("pages/error.html", message=exc.message), exc.status


def _check_csrf() -> None:
    if not _security().csrf_ok(g.page, request.form.get("csrf")):
        _signed_in()      # the audit names the signed-in patient, if any
        raise PageRefused(403, "error.csrf", "csrf_token")


def _signed_in() -> PatientSession | None:
    token = g.page.token
    if token is None:
        return None
    try:
        session = _services().patient_auth.session(token)
    except PatientAuthFailed:
        _set_state(g.page.rotated(None))
        return None
    g.patient = session.ins
    return session   # type: ignore[no-any-return]


def _to_signin(expired: bool = False) -> Response:
    return redirect(url_for("pages.signin", expired=1 if expired else None), 303)


# --- sign-in ------------------------------------------------------------------------------
@bp.get("/")
def index() -> Response:
    session = _signed_in()
    if session is None:
        return _to_signin()
    return redirect(url_for("pages.history", ins=session.ins), 303)


@bp.get("/lang/<code>")
def language(code: str) -> Response:
    if code in i18n.LANGUAGES:
        _set_state(g.page.with_lang(code))
        g.lang = code
    back = request.args.get("next", "")
    if not back.startswith("/espace/") or back.startswith("//") or "\\" in back:
        back = url_for("pages.index")
    return redirect(back, 303)


@bp.get("/signin")
def signin() -> str | Response:
    if _signed_in() is not None:
        return redirect(url_for("pages.index"), 303)
    had_session = g.page.token is not None or request.args.get("expired")
    notice = "signin.expired" if had_session else (
        "signin.signed_out" if request.args.get("out") else None)
    return render_template("pages/signin.html", notice=notice, error=None, ins="")


@bp.post("/signin")
def signin_post() -> tuple[str, int] | Response:
    _check_csrf()
    ins = request.form.get("ins", "")[:64]
    try:
        session = _services().patient_auth.sign_in(
            ins.replace(" ", ""), request.form.get("password", "")[:1024],
            request.form.get("totp", "").strip()[:16], request.remote_addr or "")
    except PatientAuthFailed:
        return render_template("pages/signin.html", notice=None, error=t("signin.failed"),
                               ins=ins), 401
    except RateLimited as exc:
        page = render_template("pages/signin.html", notice=None, ins=ins,
                               error=t("signin.limited", seconds=exc.retry_after))
        response = make_response(page, 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    _set_state(g.page.rotated(session.token))
    return redirect(url_for("pages.history", ins=session.ins), 303)


@bp.post("/signout")
def signout() -> Response:
    _check_csrf()
    if g.page.token is not None:        # ended server-side: a copy of the cookie is dead too
        _services().patient_auth.sign_out(g.page.token)
    _set_state(g.page.rotated(None))
    return redirect(url_for("pages.signin", out=1), 303)


# --- record pages -------------------------------------------------------------------------
def _overview(actor: str, ins: str) -> dict[str, Any]:
    """The record as the service lets this actor see it; refusals look alike outside."""
    try:
        return _services().patients.patient_overview(actor, ins)  # type: ignore[no-any-return]
    except NotAuthorised as exc:     # decided and recorded by the service
        raise PageRefused(403, "error.forbidden", exc.rule, audit=False) from None
    except (NotFound, InvalidInput):  # no such record: same answer, recorded here
        raise PageRefused(403, "error.forbidden", "unknown_record") from None


def _frame(actor: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"record": record, "actor": actor, "child": record["ins"] != actor,
            "ins": record["ins"]}


def _profession(code: int | None) -> str:
    profession = ids.professions().get(code) if code is not None else None
    if profession is None:
        return ""
    return profession.label if g.lang == "fr" else profession.label_en


def _when(at: dt.datetime) -> str:
    local = at.astimezone(PARIS)
    return local.strftime("%d/%m/%Y %H:%M" if g.lang == "fr" else "%Y-%m-%d %H:%M")


def _rule_text(rule: str) -> str:
    key = f"rule.{rule}"
    return t(key) if key in i18n.CATALOGUE else t("rule.other", rule=rule)


def _date_arg(name: str) -> tuple[dt.date | None, bool]:
    """A filter date as the page's date fields take it (dd/mm/yyyy in French), or ISO."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None, False
    try:
        return i18n.parse_date(raw), False
    except ValueError:
        return None, True


def _timeline(record: dict[str, Any], actor: str) -> dict[str, Any]:
    who = request.args.get("who", "")
    since, bad_since = _date_arg("from")
    until, bad_until = _date_arg("to")
    titles = {d["id"]: d["title"] for d in record["documents"]}
    uploads: dict[int, str] = record.get("upload_titles", {})
    blocked = {p["national_id"] for p in record["blocked"]}
    pros: dict[str, str] = {}
    entries = []
    for event in record["events"]:
        at = dt.datetime.fromisoformat(event["at"])
        is_pro = event["actor_kind"] == "professional"
        if is_pro:
            pros.setdefault(event["actor_id"], event["who"])
        if (who == "" and not is_pro) or (who not in ("", "*") and event["actor_id"] != who):
            continue
        day = at.astimezone(PARIS).date()
        if (since and day < since) or (until and day > until):
            continue
        doc = event["document"]
        title = None if doc is None else (titles.get(doc)
                                          or t("history.document_unknown", id=doc))
        subject = event.get("subject") or ""
        if subject.startswith("upload:"):       # one of the patient's own documents
            title = uploads.get(int(subject[7:])) or t("history.document_unknown",
                                                        id=subject[7:])
        entries.append({
            "at_iso": at.isoformat(), "at": _when(at),
            "who": t("history.you") if event["actor_id"] == actor else event["who"],
            "actor_id": event["actor_id"], "professional": is_pro,
            "profession": _profession(event["profession_code"]) if is_pro else "",
            "action": t(f"action.{event['action']}")
            if f"action.{event['action']}" in i18n.CATALOGUE else event["action"],
            "document": title,
            "mode": event["mode"], "mode_label": t(f"mode.{event['mode']}"),
            "emergency": event["mode"] in EMERGENCY_MODES or event["flagged"],
            "granted": event["granted"], "rule": _rule_text(event["rule"]),
            "reason": event["reason"], "blocked": event["actor_id"] in blocked,
        })
    return {"entries": entries, "pros": sorted(pros.items(), key=lambda kv: kv[1]),
            "who": who, "since": i18n.show_date(since, g.lang) if since else "",
            "until": i18n.show_date(until, g.lang) if until else "",
            "bad_date": bad_since or bad_until,
            "alerts": sum(1 for e in entries if e["emergency"])}


@bp.get("/records/<ins>/history")
def history(ins: str) -> str | Response:
    session = _signed_in()
    if session is None:
        return _to_signin(expired=True)
    record = _overview(session.ins, ins)
    done = request.args.get("done")
    return render_template("pages/history.html", **_frame(session.ins, record),
                           timeline=_timeline(record, session.ins), page="history",
                           done=f"done.{done}" if done in CHANGES else None)


@bp.get("/records/<ins>/controls")
def controls(ins: str) -> str | Response:
    session = _signed_in()
    if session is None:
        return _to_signin(expired=True)
    record = _overview(session.ins, ins)
    done = request.args.get("done")
    documents = [{**d, "date": _when(dt.datetime.fromisoformat(d["created_at"]))}
                 for d in record["documents"]]
    return render_template("pages/controls.html", **_frame(session.ins, record),
                           documents=documents, page="controls",
                           blocked_ids={p["national_id"] for p in record["blocked"]},
                           done=f"done.{done}" if done in CHANGES else None,
                           profession=_profession)


@bp.post("/records/<ins>/controls")
def control_post(ins: str) -> Response:
    _check_csrf()
    session = _signed_in()
    if session is None:
        return _to_signin(expired=True)
    change = request.form.get("change", "")
    if change not in CHANGES:
        raise PageRefused(400, "error.bad_request", "unknown_change", {"change": change[:32]})
    target = request.form.get("target", "").strip()[:32] or None
    record = _overview(session.ins, ins)
    if change in ("hide_document", "show_document"):
        visible = {str(d["id"]) for d in record["documents"]}
        if target not in visible:     # another record's, hidden from the patient, or made up
            raise PageRefused(404, "error.not_found", "unknown_document",
                              {"document": target})
    try:
        _services().patients.control(session.ins, record["ins"], change,
                                     target if change not in ("oppose_emergency",
                                                              "allow_emergency") else None)
    except NotAuthorised as exc:
        raise PageRefused(403, "error.forbidden", exc.rule, audit=False) from None
    except (NotFound, InvalidInput):
        raise PageRefused(404, "error.not_found", "unknown_target",
                          {"change": change, "target": target}) from None
    back = "pages.history" if request.form.get("back") == "history" else "pages.controls"
    return redirect(url_for(back, ins=record["ins"], done=change), 303)


@bp.get("/profiles")
def profiles() -> str | Response:
    session = _signed_in()
    if session is None:
        return _to_signin(expired=True)
    current = request.args.get("current", session.ins)
    mine = _services().patients.profiles(session.ins)
    return render_template("pages/profiles.html", profiles=mine, current=current,
                           actor=session.ins, ins=current, page="profiles", record=None,
                           child=current != session.ins)
