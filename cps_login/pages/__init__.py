"""The patient space as web pages (``/espace``): sign-in, access history, privacy controls.

Server-rendered (Flask + Jinja), no script: every page works with JavaScript off. See
docs/patient-space.md. ``bp`` is registered by ``cps_login.web.create_patient_app``.
"""

from cps_login.pages.views import bp

__all__ = ["bp"]
