"""Entry point for ``cps-admin serve``: ``create_app(auth=..., ocsp=...)`` (see cps_login.web)."""

from cps_login.web import create_app

__all__ = ["create_app"]
