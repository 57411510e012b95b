"""Least privilege on PostgreSQL: one database user per role, each granted only what it does.

SQLite (the embedded default) has no users: every role that opens the file can write every
table. There the signer's own rules hold (pki.ocsp.service ``refused``, the CRL floor in
pki.crl.source): a revocation it published is never undone by what a row says. On PostgreSQL
``cps-admin db grants`` makes that a property of the database as well: no public role can
write ``certificate``, ``status_event``, ``ca``, ``crl`` or ``ocsp_*`` at all.

The tables below come from what each role's code reads and writes (the models it imports, its
``session.add``/``insert``/``update``/``delete`` and ``audit.append`` calls). Officers
(``cps-admin cert ...``, ``init``, migrations) keep using the schema owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

ROLES = ("signer", "status", "broker", "patient")

_AUDIT = {"audit_log": "SELECT, INSERT", "audit_head": "SELECT, UPDATE"}
_DIRECTORY = ("professional", "structure", "card", "professional_activity", "exercise_situation")
_PATIENT_DATA = ("patient", "care_team", "legal_representative", "consent", "patient_block",
                 "document", "access_event", "patient_session_revoked")

# role -> table -> privileges. A table missing from a role's map is not granted at all.
GRANTS: dict[str, dict[str, str]] = {
    # Pre-signs OCSP and publishes CRLs: writes its records, CRLs, the CRL counter, the audit
    # chain, and issues its OCSP responder certificates (rows of ``certificate``).
    "signer": {
        "ca": "SELECT, UPDATE (crl_number)",
        "certificate": "SELECT, INSERT", "status_event": "SELECT",
        "crl": "SELECT, INSERT", "ocsp_record": "SELECT, INSERT, UPDATE, DELETE",
        "ocsp_responder": "SELECT, INSERT, UPDATE, DELETE",
        **{t: "SELECT" for t in _DIRECTORY}, **_AUDIT,
    },
    # Serves pre-signed bytes: reads, never writes.
    "status": {t: "SELECT" for t in ("ca", "crl", "ocsp_record", "ocsp_responder",
                                     "certificate")},
    # Logs professionals in: reads the directory and certificates, writes its audit records;
    # as OpenID Connect provider reads its clients and keeps its state (cps_login.oidc).
    "broker": {
        **{t: "SELECT" for t in ("ca", "certificate", "crl", *_DIRECTORY)}, **_AUDIT,
        "oidc_client": "SELECT", "oidc_state": "SELECT, INSERT, UPDATE, DELETE",
    },
    # The patient space: its own tables, and its audit records.
    "patient": {
        **{t: "SELECT" for t in ("ca", "certificate", *_DIRECTORY)},
        **{t: "SELECT, INSERT, UPDATE, DELETE" for t in _PATIENT_DATA}, **_AUDIT,
    },
}

# Tables no public role may ever write (checked by tests/roles/test_store_integrity.py).
PROTECTED = ("certificate", "status_event", "ca", "crl", "ocsp_record", "ocsp_responder")


@dataclass(frozen=True)
class Granted:
    user: str
    created: bool
    tables: int


def user_name(prefix: str, role: str) -> str:
    return f"{prefix}_{role}"


def _ident(conn: Connection, name: str) -> str:
    return str(conn.execute(text("SELECT quote_ident(:n)"), {"n": name}).scalar_one())


def apply(conn: Connection, prefix: str, passwords: Mapping[str, str | None]) -> list[Granted]:
    """Create the role users if missing and grant exactly ``GRANTS`` on the current schema.

    Runs in the caller's transaction: a failure leaves no half-granted user. Existing grants
    of these users on the schema's tables are revoked first, so running it again after a
    migration (new tables) or after this table changed leaves exactly what it says."""
    if conn.dialect.name != "postgresql":
        raise ValueError("database users exist on PostgreSQL only; SQLite cannot separate "
                         "privileges (docs/roles.md)")
    schema = str(conn.execute(text("SELECT current_schema()")).scalar_one())
    database = str(conn.execute(text("SELECT current_database()")).scalar_one())
    tables = set(conn.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars())
    missing = sorted({t for g in GRANTS.values() for t in g} - tables)
    if missing:
        raise ValueError(f"schema {schema} has no table {missing[0]}; run the migrations "
                         f"(cps-admin init) first")
    out = []
    for role in ROLES:
        user = user_name(prefix, role)
        out.append(_grant_role(conn, role, user, schema, database, sorted(tables),
                               passwords.get(role)))
    return out


def _grant_role(conn: Connection, role: str, user: str, schema: str, database: str,
                tables: list[str], password: str | None) -> Granted:
    q_user, q_schema = _ident(conn, user), _ident(conn, schema)
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :u"),
                          {"u": user}).first() is not None
    if not exists:
        conn.execute(text(f"CREATE ROLE {q_user} LOGIN"))
    if password is not None:
        literal = conn.execute(text("SELECT quote_literal(:p)"), {"p": password}).scalar_one()
        conn.execute(text(f"ALTER ROLE {q_user} LOGIN PASSWORD {literal}"))
    conn.execute(text(f"GRANT CONNECT ON DATABASE {_ident(conn, database)} TO {q_user}"))
    conn.execute(text(f"GRANT USAGE ON SCHEMA {q_schema} TO {q_user}"))
    conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {q_schema} FROM {q_user}"))
    conn.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {q_schema} FROM {q_user}"))
    grants = GRANTS[role]
    for table in tables:
        privileges = grants.get(table)
        if privileges is None:
            continue
        q_table = f"{q_schema}.{_ident(conn, table)}"
        conn.execute(text(f"GRANT {privileges} ON {q_table} TO {q_user}"))
        if "INSERT" in privileges:      # the id sequence of a table it adds rows to
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"),
                               {"t": q_table}).scalar_one_or_none() \
                if _has_id(conn, schema, table) else None
            if seq is not None:
                conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {seq} TO {q_user}"))
    return Granted(user, not exists, sum(1 for t in tables if t in grants))


def _has_id(conn: Connection, schema: str, table: str) -> bool:
    return conn.execute(text(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = :s AND table_name = :t "
        "AND column_name = 'id'"), {"s": schema, "t": table}).first() is not None
