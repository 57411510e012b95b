"""Shared fixtures: CPS homes in SoftHSM, and a throw-away PostgreSQL database per run.

Every home gets its own SOFTHSM2_CONF and token directory (pki.ca.hierarchy.init_home does
that); tests use small CA keys (rsa2048 / p256) for speed, the product default being rsa4096.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki import ids
from pki.ca.authority import Authority
from pki.ca.hierarchy import init_home
from pki.store.models import Professional, Structure

PG_ADMIN_URL = os.environ.get("CPS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped afterwards)."""
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    name = f"cps_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh schema inside the run's database, for one test."""
    from sqlalchemy import create_engine, text

    schema = f"t_{secrets.token_hex(4)}"
    engine = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{pg_server_url}?options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def make_home(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Create an initialised home: make_home(key_type="rsa2048", db_url=None, **init_kwargs)."""

    def _make(key_type: str = "rsa2048", **kwargs: object) -> Path:
        home = tmp_path_factory.mktemp("home") / "cps"
        init_home(home, key_type=key_type, **kwargs)  # type: ignore[arg-type]
        return home

    return _make


@pytest.fixture
def home(make_home: Callable[..., Path]) -> Path:
    return make_home()


@pytest.fixture
def authority(home: Path) -> Iterator[Authority]:
    auth = Authority.open(home)
    try:
        yield auth
    finally:
        auth.close()


def add_professional(auth: Authority, body: str = "1000345678", profession: int = 10,
                     given: str = "Jeanne", surname: str = "Dupont") -> str:
    """Insert a professional directly; returns the RPPS (Luhn-completed ``body``)."""
    rpps = ids.luhn_complete(body)
    with auth.store.session() as session:
        session.add(Professional(rpps=rpps, profession_code=profession, given_name=given,
                                 surname=surname, created_at=dt.datetime.now(dt.UTC)))
    return rpps


def add_structure(auth: Authority, finess_body: str = "75000001", name: str = "CHU Test",
                  state: str = "Paris (75)") -> str:
    structure_id = ids.validate_structure("FINESS", ids.luhn_complete(finess_body))
    with auth.store.session() as session:
        session.add(Structure(structure_id=structure_id, register="FINESS", name=name,
                              state=state, created_at=dt.datetime.now(dt.UTC)))
    return structure_id


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
