"""The signer re-signs every affected OCSP answer after a mass suspension — in its signing
processes for a burst — and the status side sees only complete, verifiable records."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.ocsp import records as rec
from pki.ocsp import recordstore
from pki.ocsp import service as service_module
from pki.ocsp.service import OcspService

from .conftest import STRONG, WEAK, add_cards


def _verify(state: rec.CaState, serial_hex: str, record: bytes) -> ocsp.OCSPResponse:
    serial = rec.serial_content(serial_hex)
    answer = ocsp.load_der_ocsp_response(state.assemble(serial, record))
    responder = x509.load_der_x509_certificate(state.responder_der)
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert answer.serial_number == int(serial_hex, 16)
    return answer


def test_burst_resigned_by_the_pool_then_in_process(auth: Authority,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "POOL_MIN", 500)
    monkeypatch.setattr(service_module, "BATCH", 300)
    weak = [s for _, pair in add_cards(auth, WEAK, 600) for s in pair]
    strong = [s for _, pair in add_cards(auth, STRONG, 5) for s in pair]
    service = OcspService(auth, poll_interval=0.05, sign_processes=2)
    try:
        service.start(wait=True, timeout=120)
        ca = auth.issuing_ca("PERSONNES")
        state = service.states[ca.id]
        before = {s: state.records[rec.serial_content(s)] for s in weak + strong}
        # Another process (the CLI) suspends: the signer's watcher finds the events.
        lifecycle.change_many(auth, weak, "hold", selection={"card_model": WEAK},
                              batch_size=2000)     # one commit: one burst
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(rec.status_of(state.records[rec.serial_content(s)])[1] == 6 for s in weak):
                break
            time.sleep(0.1)
        assert service.pool is not None and not service.pool.broken
        assert service.pool.signed >= len(weak) + len(weak) + len(strong)   # fill + burst
        stored = recordstore.load(auth.store, ca.id, state.responder_serial)
        for serial in weak[::97] + weak[-1:]:
            record = stored[rec.serial_content(serial)]
            assert record == state.records[rec.serial_content(serial)] != before[serial]
            answer = _verify(state, serial, record)
            assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
            assert answer.revocation_reason == x509.ReasonFlags.certificate_hold
        for serial in strong:                       # not selected: the very same bytes
            assert state.records[rec.serial_content(serial)] == before[serial]
            answer = _verify(state, serial, before[serial])
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        # A small change afterwards is signed in the signer itself, and verifies as well.
        lifecycle.revoke(auth, strong[0], "keyCompromise")
        deadline = time.monotonic() + 10
        while rec.status_of(state.records[rec.serial_content(strong[0])])[0] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _verify(state, strong[0], state.records[rec.serial_content(strong[0])])
    finally:
        service.stop()
