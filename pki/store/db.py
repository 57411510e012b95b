"""Engine, transactions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pki.errors import Duplicate, InvalidInput, StoreError, StoreUnavailable


def _sqlite_setup(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN instead
    # (BEGIN IMMEDIATE) so that read-then-write transactions in two processes serialise instead
    # of failing with "database is locked" on the upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Read-only sessions (Store.read) take no write lock: WAL readers never block writers.
        readonly = conn.get_execution_options().get("cps_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Store:
    """A database: hands out transactional sessions and runs migrations."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5)
        try:
            self.engine = create_engine(url, **kwargs)
        except (ArgumentError, ImportError) as exc:   # NoSuchModuleError is an ArgumentError
            # Name the scheme only: the rest of the URL may carry a password.
            scheme = url.split(":", 1)[0] if ":" in url else url[:20]
            why = "its driver is not installed" if isinstance(exc, ImportError) else "unknown"
            raise InvalidInput(f"store URL scheme {scheme!r}: {why}; use sqlite:///PATH or "
                               f"postgresql+psycopg://USER@HOST/DB") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise Duplicate(f"store refused a duplicate: {_short(exc)}") from None
        except OperationalError as exc:
            session.rollback()
            raise StoreUnavailable(f"database unavailable: {_short(exc)}") from None
        except DBAPIError as exc:
            session.rollback()
            raise StoreError(f"database error: {_short(exc)}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (no write lock on SQLite); rolled back at the end."""
        session = self._sessions()
        try:
            session.connection(execution_options={"cps_readonly": True})
            yield session
        except OperationalError as exc:
            raise StoreUnavailable(f"database unavailable: {_short(exc)}") from None
        finally:
            # close() ends the transaction without expiring what was loaded, so rows read here
            # stay usable (detached) after the block; nothing was written to roll back.
            session.close()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revisions.

        ``heads``: features add their tables as branches off the same parent revision, so a store
        is brought to every branch's head (Alembic applies each revision once).
        """
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location",
                            str(resources.files("pki.store").joinpath("migrations")))
        cfg.attributes["engine"] = self.engine
        self._private_sqlite_file()
        try:
            command.upgrade(cfg, "heads")
        except OperationalError as exc:
            raise StoreUnavailable(f"database unavailable: {_short(exc)}") from None
        self._private_sqlite_file()

    def _private_sqlite_file(self) -> None:
        """Keep a SQLite store (and its WAL and shared-memory files) 0600.

        SQLite creates the file with the umask (0644 usually); created empty here first, at
        0600, it is never readable by others, and SQLite gives its -wal/-shm files the
        database file's mode."""
        path = self.engine.url.database
        if self.dialect != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
            return
        if not os.path.exists(path):
            # Only while the file does not exist, so no SQLite connection of this process can
            # hold locks on it: closing any descriptor of a database file drops every POSIX
            # lock this process holds on it, and another process would then take itself for
            # the last connection and checkpoint away the WAL under ours (a "malformed" image).
            with suppress(FileExistsError):     # another process made it meanwhile
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        for name in (path, f"{path}-wal", f"{path}-shm"):
            with suppress(FileNotFoundError):
                os.chmod(name, 0o600)

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise StoreUnavailable(f"database unavailable: {_short(exc)}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
