"""Shared tiers: a second signer reuses the records the first one signed, from the store
(``ocsp_record``) or, when the store has none for the responder, from Redis."""

from __future__ import annotations

import secrets
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import delete, func, select

from pki.ocsp.service import Answer, OcspService
from pki.store.models import OcspRecord

from .conftest import Env


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="Redis not reachable on 127.0.0.1:6379")
def test_second_process_loads_presigned_records_from_redis(env: Env) -> None:
    prefix = f"test-{secrets.token_hex(6)}:"
    url = "redis://127.0.0.1:6379/0"
    first = OcspService(env.auth, redis_url=url, redis_prefix=prefix)
    second = OcspService(env.auth, redis_url=url, redis_prefix=prefix)
    store = env.auth.store

    def stored() -> int:
        with store.read() as session:
            return int(session.execute(select(func.count()).select_from(OcspRecord)).scalar()
                       or 0)

    def forget_store() -> None:
        with store.session() as session:
            session.execute(delete(OcspRecord))

    try:
        forget_store()
        first.load()
        assert first.signed_total >= 4
        count = stored()
        assert count == first.presigned_count()
        forget_store()
        second.load()
        assert second.signed_total == 0          # everything came from Redis...
        assert second.presigned_count() == first.presigned_count()
        assert stored() == count                 # ...and went back to the store
        third = OcspService(env.auth)            # no Redis: the store alone
        third.load()
        assert third.signed_total == 0 and third.presigned_count() == count
        cert = x509.load_pem_x509_certificate(env.certs["revoked"].read_bytes())
        issuer = x509.load_pem_x509_certificate(env.ca_pem.read_bytes())
        der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build() \
            .public_bytes(serialization.Encoding.DER)
        answer = second.lookup(der)
        assert isinstance(answer, Answer) and answer.kind == "revoked"
        assert answer.body == first.lookup(der).body  # type: ignore[union-attr]
    finally:
        assert first.redis is not None
        first.redis.delete_prefix()
        assert not list(first.redis.client.scan_iter(match=f"{prefix}*"))
