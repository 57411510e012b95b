"""The broker's WSGI app: ``create_app(config)`` with one blueprint per concern.

* ``broker``  — /login/challenge, /login, /.well-known/jwks.json, /introspect, /openapi.json
* ``records`` — /api/...: the patient-record API for professionals (Bearer access token)
* ``portal``  — /patient/...: patients (password + TOTP) see their history, set their controls

Errors are mapped to JSON in one place (``errors``): ``{"error": <code>}`` plus, for a refused
card login, ``"reason"`` only when the reason is safe to tell (see README).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from cps_login.config import LoginConfig
from cps_login.services import Services, build_services
from pki.ca.authority import Authority
from pki.clock import SYSTEM_CLOCK, Clock

EXTENSION = "cps_login"


def create_app(config: LoginConfig | None = None, *, auth: Authority | None = None,
               ocsp: Any = None, services: Services | None = None,
               clock: Clock | None = None, **service_options: Any) -> Flask:
    """The WSGI app of the login broker and the patient API.

    ``config``: the broker settings (``LoginConfig.from_home(home)``); derived from ``auth``'s
    home when omitted. ``auth``: an open Authority to share (its HSM session signs the tokens).
    ``ocsp``: a running ``pki.ocsp.service.OcspService`` of the same process — revocation
    requests for this home's OCSP URL are then answered in process (same DER, same checks, no
    socket); other URLs still go over HTTP. ``services`` may be given whole (tests).
    ``service_options`` go to ``build_services`` (``fetcher=``, ``challenges=``).
    """
    from cps_login import pages
    from cps_login.web import broker, errors, portal, records

    if config is None:
        if auth is None:
            raise ValueError("create_app needs a LoginConfig or an Authority")
        config = LoginConfig.from_home(auth.config.home, db_url=auth.store.url)
    if clock is None:
        clock = auth.clock if auth is not None else SYSTEM_CLOCK
    if ocsp is not None and "fetcher" not in service_options:
        from cps_login.revocation import HttpFetcher, OcspServiceFetcher

        base = (auth.config.base_url if auth is not None else config.pki.base_url)
        service_options["fetcher"] = OcspServiceFetcher(ocsp, base.rstrip("/") + "/ocsp",
                                                        HttpFetcher())
    if auth is not None:
        service_options.setdefault("authority", auth)

    app = Flask("cps_login")
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=256 * 1024,
                      PROPAGATE_EXCEPTIONS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if services is None:
        services = build_services(config, clock=clock, **service_options)
    app.extensions[EXTENSION] = services
    errors.register(app)
    app.register_blueprint(broker.bp)
    app.register_blueprint(records.bp)
    app.register_blueprint(portal.bp)
    app.register_blueprint(pages.bp)   # /espace: the patient space as web pages
    return app


def services_of(app: Flask) -> Services:
    services = app.extensions[EXTENSION]
    assert isinstance(services, Services)
    return services
