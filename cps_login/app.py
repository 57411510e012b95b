"""The two public login roles' WSGI app factories (see cps_login.web and cps_login.roles)."""

from cps_login.web import create_broker_app, create_patient_app

__all__ = ["create_broker_app", "create_patient_app"]
