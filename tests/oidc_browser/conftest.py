"""Fixtures of the end-to-end OIDC tests: the login tests' live home, pcscd with vpcd, and
headless Chromium (Playwright on Debian's /usr/bin/chromium), as tests/pages uses them."""

import pytest

from tests.cards.conftest import pcscd  # noqa: F401 - fixture
from tests.login.conftest import env  # noqa: F401 - fixture
from tests.pages.conftest import chromium  # noqa: F401 - fixture


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (Playwright)")
