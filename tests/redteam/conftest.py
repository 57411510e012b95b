"""Red-team probes: the running roles attacked as a hostile client, page, relying service,
patient or professional would. Each test asserts the SECURE behaviour: a failing one is a
finding (listed in the team's findings file), a passing one a defence that holds."""

from tests.login.conftest import env  # noqa: F401
from tests.oidc.conftest import clock, oidc  # noqa: F401
