"""The login tests' live home (see tests/login/conftest.py) for the emergency-access test."""

from tests.login.conftest import env  # noqa: F401 - fixture
