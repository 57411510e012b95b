"""One signer per store: the signer role holds a lease for as long as it runs.

The signer is the single writer of ``ocsp_record`` (it numbers ``seq`` itself, so status replicas
can poll ``seq > last``), and two signers would also race on CRL numbers and OCSP refreshes. The
unix socket already keeps a second signer of the same home from starting; the lease covers two
homes — or two machines — pointing at one database:

* PostgreSQL: a session-level advisory lock held on a dedicated connection. If that connection
  drops (database restart), the lease is re-taken; if another signer took it meanwhile, this one
  stops (``lost`` is set and the role shuts down) rather than write beside it.
* SQLite: an exclusive ``flock`` on a file beside the database (one machine by construction).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from pki.errors import InvalidInput
from pki.store.db import Store

log = logging.getLogger("cps.signer")

# The advisory lock key names the store: database and schema (several stores may share one
# PostgreSQL database in different schemas), hashed into PostgreSQL's 64-bit key space.
_KEY_SQL = text("SELECT ('x' || substr(md5('cps-signer:' || current_database() || ':' || "
                "current_schema()), 1, 16))::bit(64)::bigint")
CHECK_INTERVAL = 5.0


class SignerLease:
    """Take with ``acquire()`` (raises ``InvalidInput`` when another signer holds it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lost = threading.Event()
        self._fd: int | None = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def acquire(self) -> None:
        if self.store.dialect == "sqlite":
            self._acquire_file()
        else:
            if not self._try_advisory():
                raise InvalidInput("another signer holds this store's signer lease "
                                   "(PostgreSQL advisory lock); one signer per store")
            self._watch = threading.Thread(target=self._keep, name="signer-lease", daemon=True)
            self._watch.start()

    def release(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=CHECK_INTERVAL + 1)
        self._close_conn()
        if self._fd is not None:
            os.close(self._fd)       # releases the flock
            self._fd = None

    # --- SQLite --------------------------------------------------------------------------
    def _acquire_file(self) -> None:
        database = make_url(self.store.url).database
        if not database or database == ":memory:":
            return                   # a private in-memory store cannot be shared
        lock_path = Path(database).resolve().with_name(Path(database).name + ".signer-lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidInput(f"another signer holds this store's signer lease ({lock_path}); "
                               f"one signer per store") from None
        self._fd = fd

    # --- PostgreSQL ------------------------------------------------------------------------
    def _try_advisory(self) -> bool:
        self._close_conn()
        conn = self.store.engine.connect()
        try:
            key = conn.execute(_KEY_SQL).scalar()
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                     {"k": key}).scalar())
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not held:
            conn.close()
            return False
        self._conn = conn
        return True

    def _close_conn(self) -> None:
        if self._conn is not None:
            # Unlock explicitly: the server frees a closed session's locks only once its backend
            # has exited, which may be after the next signer asked.
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._conn.commit()
            try:
                # Invalidate, not close: a pooled connection would keep its session-level lock.
                self._conn.invalidate()
                self._conn.close()
            except Exception:        # the connection is already gone: the lock went with it
                log.debug("closing the lease connection failed", exc_info=True)
            self._conn = None

    def _keep(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL):
            try:
                self._conn.execute(text("SELECT 1")).scalar()
                self._conn.commit()
                continue
            except Exception:
                log.warning("signer lease connection lost; taking the lease again")
            try:
                if self._try_advisory():
                    log.warning("signer lease taken again")
                    continue
                log.critical("another signer took the lease while the database was away; "
                             "this signer stops")
                self.lost.set()
                return
            except Exception:        # database still away: nobody else can take it either
                log.debug("database still unreachable", exc_info=True)
