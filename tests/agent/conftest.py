"""The tests/login environment (SoftHSM home, broker, real OCSP responder) for the agent tests."""

from tests.login.conftest import env  # noqa: F401 - fixture
