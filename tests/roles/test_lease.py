"""One signer per store: a second signer on the same database is refused, on SQLite and on
PostgreSQL (where two homes on two machines may point at one database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pki.errors import InvalidInput
from pki.roles.lease import SignerLease
from pki.store.db import Store


def test_sqlite_second_lease_refused_until_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cps.db'}"
    first, second = SignerLease(Store(url)), SignerLease(Store(url))
    first.acquire()
    try:
        with pytest.raises(InvalidInput, match="one signer per store"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_postgresql_second_lease_refused_other_schema_free(pg_url: str,
                                                           pg_server_url: str) -> None:
    first, second = SignerLease(Store(pg_url)), SignerLease(Store(pg_url))
    other = SignerLease(Store(pg_server_url))      # another store (schema) on the same server
    first.acquire()
    try:
        with pytest.raises(InvalidInput, match="advisory lock"):
            second.acquire()
        other.acquire()                            # a different store is not blocked
        other.release()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_run_signer_refuses_a_second_signer_on_the_same_store(tmp_path: Path) -> None:
    """Two sockets, one database: the lease, not the socket, refuses the second signer."""
    import threading
    import time

    from pki.ca.hierarchy import init_home
    from pki.roles.signer import run_signer

    home = tmp_path / "home"
    init_home(home, key_type="p256")
    stop = threading.Event()
    first = threading.Thread(target=run_signer, args=(home, None), kwargs={
        "redis_url": None, "socket_path": tmp_path / "a" / "s.sock", "stop": stop})
    first.start()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "a" / "s.sock").exists():
            assert time.monotonic() < deadline and first.is_alive()
            time.sleep(0.05)
        with pytest.raises(InvalidInput, match="one signer per store"):
            run_signer(home, None, redis_url=None, socket_path=tmp_path / "b" / "s.sock",
                       stop=threading.Event())
        assert not (tmp_path / "b" / "s.sock").exists()
    finally:
        stop.set()
        first.join(60)
    assert not first.is_alive()
