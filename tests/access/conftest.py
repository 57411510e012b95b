"""The patient API tests run on the login tests' live home (see tests/login/conftest.py)."""

from tests.login.conftest import env, foreign  # noqa: F401 - fixtures
