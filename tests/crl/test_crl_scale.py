"""100k entries: memory stays under 3x the DER, and the result parses back entry for entry."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import tracemalloc
from pathlib import Path

from cryptography import x509

from pki.crl import builder
from pki.crl.builder import CrlFields, EntryBuffer

from .conftest import START, SoftSigner

N = 100_000


def test_100k_entries_memory_and_round_trip(ec_signer: SoftSigner, tmp_path: Path) -> None:
    rnd = random.Random(42)
    reasons = [None, "keyCompromise", "superseded", "unspecified", "cessationOfOperation"]
    rows = []
    for i in range(N):
        when = (START - dt.timedelta(seconds=rnd.randrange(10**7))).strftime(
            "%Y-%m-%d %H:%M:%S.%f")
        reason = reasons[i % len(reasons)]
        rows.append((f"{rnd.getrandbits(127) | 1 << 126:032X}", when, reason,
                     when if reason == "keyCompromise" else None,
                     "hold" if i % 97 == 0 else "revoked"))
    fields = CrlFields(ec_signer.certificate, START, START + dt.timedelta(days=7), 77)
    tracemalloc.start()
    try:
        buf = EntryBuffer()
        buf.extend(rows)
        der = builder.build(fields, buf, ec_signer)
        del buf
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(der), f"peak {peak} for {len(der)} bytes of DER"

    crl = x509.load_der_x509_crl(der)
    assert len(crl) == N and crl.is_signature_valid(ec_signer.key.public_key())
    for i in (0, 1, 97, N // 2, N - 1):
        entry = crl.get_revoked_certificate_by_serial_number(int(rows[i][0], 16))
        assert entry is not None
        assert entry.revocation_date_utc == dt.datetime.fromisoformat(rows[i][1]).replace(
            tzinfo=dt.UTC)
        has_reason = rows[i][2] not in (None, "unspecified") or rows[i][4] == "hold"
        assert any(isinstance(e.value, x509.CRLReason) for e in entry.extensions) == has_reason
    path = tmp_path / "big.crl"
    path.write_bytes(der)
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout
    assert text.count("Serial Number:") == N
    assert text.count("Certificate Hold") == len(range(0, N, 97))
