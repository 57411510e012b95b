"""Fixtures of the reliability suite: homes on SQLite or on a schema of the shared PostgreSQL
(made with ``cps-admin --db URL init``), and the private PostgreSQL instance that the
database-loss test may kill."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import PrivatePostgres, admin, pg_bindir


@pytest.fixture
def cli_home(tmp_path: Path) -> Callable[..., Path]:
    """``cli_home(db_url=None)``: a home made by the real ``cps-admin init`` (P-256 CAs)."""

    def make(db_url: str | None = None, base_url: str = "http://127.0.0.1:8080") -> Path:
        home = tmp_path / "home"
        args = ["--db", db_url] if db_url else []
        admin(home, *args, "init", "--key-type", "p256", "--base-url", base_url)
        return home

    return make


@pytest.fixture
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite, a fresh schema URL for PostgreSQL (parametrised by ``backend``)."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()
