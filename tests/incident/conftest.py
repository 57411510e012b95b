"""An issuing-CA home whose store holds cards of several chip models and their certificates.

Rows are written straight into the store (no DER, no signature): what selections, the
lifecycle's batches and the incident report read. Tests that need real certificates (OCSP
answers checked by openssl) issue them through the Authority.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from pki import ids
from pki.ca.authority import Authority, serial_hex
from pki.ca.hierarchy import init_home
from pki.store.models import Card, Certificate, Professional

WEAK = "3BAC00402A00122500648000031000 9000".replace(" ", "")
STRONG = "SoftHSM project / SoftHSM v2"


@pytest.fixture
def incident_home(tmp_path: Path) -> Path:
    home = tmp_path / "cps"
    init_home(home, key_type="p256")
    return home


@pytest.fixture
def auth(incident_home: Path) -> Iterator[Authority]:
    a = Authority.open(incident_home)
    try:
        yield a
    finally:
        a.close()


def add_cards(auth: Authority, model: str | None, cards: int, *,
              not_before: dt.datetime | None = None, role: str = "PERSONNES"
              ) -> list[tuple[int, list[str]]]:
    """``cards`` cards of ``model``, each with an auth and a sign certificate; returns
    (card id, [serials]) per card."""
    ca = auth.issuing_ca(role)
    now = dt.datetime.now(dt.UTC)
    not_before = not_before or now - dt.timedelta(days=1)
    out = []
    with auth.store.session() as session:
        for _ in range(cards):
            rpps = ids.luhn_complete("9" + f"{secrets.randbelow(10**9):09d}")
            pro = Professional(rpps=rpps, profession_code=10, given_name="G", surname="S",
                               created_at=now)
            session.add(pro)
            session.flush()
            card = Card(card_number=secrets.token_hex(8), professional_id=pro.id,
                        backend="pkcs11", location="t", status="active", created_at=now,
                        model=model)
            session.add(card)
            session.flush()
            serials = [serial_hex(secrets.randbits(127) | (1 << 120)) for _ in range(2)]
            session.execute(insert(Certificate), [
                {"serial": s, "ca_id": ca.id, "profile": p, "subject": f"CN=8{rpps}",
                 "professional_id": pro.id, "card_id": card.id, "not_before": not_before,
                 "not_after": not_before + dt.timedelta(days=1095), "status": "active",
                 "shard": 0, "der": b"", "created_at": not_before}
                for s, p in zip(serials, ("auth", "sign"), strict=True)])
            out.append((card.id, serials))
    return out
