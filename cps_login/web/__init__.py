"""The WSGI apps of the two public login roles, one blueprint per concern.

``create_broker_app(config)`` — the broker role:

* ``broker``  — /login/challenge, /login, /.well-known/jwks.json, /introspect, /openapi.json
* ``records`` — /api/...: the patient-record API for professionals (Bearer access token)

``create_patient_app(config)`` — the patient role (no token, no PKCS#11 module loaded):

* ``portal``  — /patient/...: patients (password + TOTP) see their history, set their controls
* ``pages``   — /espace/...: the same as server-rendered pages

Both answer ``GET /health``. Neither is given an ``Authority``: the broker signs with its own
token and asks the status tier for revocation; see ``cps_login.services``. Errors are mapped to
JSON in one place (``errors``): ``{"error": <code>}`` plus, for a refused card login,
``"reason"`` only when the reason is safe to tell (see README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, Request, Response, jsonify

from cps_login.config import LoginConfig
from pki.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from cps_login.patient_services import PatientServices
    from cps_login.services import BrokerServices

EXTENSION = "cps_login"


class _Request(Request):
    """Flask's request, except that a body nested too deeply for the JSON decoder
    (``b"[" * 100_000``: ``RecursionError``, not ``ValueError``) is refused like any other
    body that is not JSON — ``None`` when silent, 400 otherwise — instead of a 500 with a
    logged traceback for an anonymous client."""

    def get_json(self, force: bool = False, silent: bool = False,
                 cache: bool = True) -> Any:
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            if silent:
                return None
            from werkzeug.exceptions import BadRequest

            raise BadRequest("the body is not JSON") from None


def _flask(name: str) -> Flask:
    from cps_login.web import errors

    app = Flask(name)
    app.request_class = _Request
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=256 * 1024,
                      PROPAGATE_EXCEPTIONS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    errors.register(app)

    @app.get("/health")
    def health() -> Response:
        # The app exists only once its services are built (store read, token key open).
        return jsonify({"status": "ok"})

    return app


def create_broker_app(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                      services: BrokerServices | None = None,
                      **service_options: Any) -> Flask:
    """The login broker and the professionals' API. ``service_options`` go to
    ``build_broker_services`` (``fetcher=``, ``challenges=``, ``token_hsm=``)."""
    from cps_login.services import build_broker_services
    from cps_login.web import broker, records
    from cps_login.web.proxy import TrustedProxies

    if services is None:
        services = build_broker_services(config, clock=clock, **service_options)
    app = _flask("cps_login.broker")
    app.extensions[EXTENSION] = services
    app.register_blueprint(broker.bp)
    app.register_blueprint(records.bp)
    from cps_sign.web import bp as verify_bp

    app.register_blueprint(verify_bp)      # POST /verify: signature reports (cps_sign)
    from cps_login.oidc import install as install_oidc

    install_oidc(app, services, clock)     # the OpenID Connect provider (docs/oidc.md)
    # The client's address (sign-in throttling, challenge bounds) behind the configured proxies
    # (the supervisor's front among them), as in the patient app.
    front = TrustedProxies(app.wsgi_app, config.trusted_proxies)
    # the requests the HTTP server may answer on its event loop (pki.http.server), seen
    # whether it is given the app or its WSGI callable (cps_login.roles gives the latter)
    front.answers_without_waiting = app.answers_without_waiting  # type: ignore[attr-defined]
    app.wsgi_app = front  # type: ignore[method-assign]
    return app


def create_patient_app(config: LoginConfig, *, clock: Clock = SYSTEM_CLOCK,
                       services: PatientServices | None = None, **service_options: Any) -> Flask:
    """The patient space: JSON under /patient, pages under /espace."""
    from cps_login import pages
    from cps_login.patient_services import build_patient_services
    from cps_login.web import portal
    from cps_login.web.proxy import TrustedProxies

    if services is None:
        services = build_patient_services(config, clock=clock, **service_options)
    app = _flask("cps_login.patient")
    app.extensions[EXTENSION] = services
    app.register_blueprint(portal.bp)
    app.register_blueprint(pages.bp)   # /espace: the patient space as web pages
    # client address and scheme from X-Forwarded-* of the configured proxies only
    app.wsgi_app = TrustedProxies(app.wsgi_app, config.trusted_proxies)  # type: ignore[method-assign]
    return app


def services_of(app: Flask) -> Any:
    """The app's services: ``BrokerServices`` or ``PatientServices``."""
    return app.extensions[EXTENSION]
