"""The patient space as web pages (``/espace``): sign-in, access history, privacy controls,
documents, health data, secure messages and shared summaries (``space_views``).

Server-rendered (Flask + Jinja), no script: every page works with JavaScript off. See
docs/patient-space.md. ``bp`` is registered by ``cps_login.web.create_patient_app``.
"""

from cps_login.pages import space_views  # noqa: F401 - its routes join ``bp``
from cps_login.pages.views import bp

__all__ = ["bp"]
