"""`card block / unblock / revoke`: the card row is checked and changed with both of its
certificates in one transaction — a refusal half-way changes nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from pki.ca.authority import Authority
from pki.errors import InvalidInput, InvalidTransition
from pki.issuance.cards import block_card, issue_card, revoke_card, unblock_card
from pki.store.models import AuditRecord, Card, Certificate
from tests.ca.test_product_category import MemoryCard
from tests.conftest import add_professional


@pytest.fixture
def card(authority: Authority) -> str:
    issue_card(authority, add_professional(authority), MemoryCard(), "1234", backend="pkcs11",
               location="memory", card_number="C0FFEE", key_type="p256")
    return "C0FFEE"


def state(auth: Authority, number: str) -> tuple[str, list[tuple[str, str | None]]]:
    with auth.store.read() as session:
        row = session.execute(select(Card).where(Card.card_number == number)).scalar_one()
        certs = session.execute(select(Certificate.status, Certificate.reason)
                                .where(Certificate.card_id == row.id)
                                .order_by(Certificate.id)).all()
        return row.status, [tuple(c) for c in certs]   # type: ignore[misc]


def test_block_unblock_revoke(authority: Authority, card: str) -> None:
    assert len(block_card(authority, card)) == 2
    assert state(authority, card) == ("blocked", [("hold", "certificateHold")] * 2)
    with pytest.raises(InvalidTransition, match="only an active card"):
        block_card(authority, card)
    assert len(unblock_card(authority, card)) == 2
    assert state(authority, card) == ("active", [("active", None)] * 2)
    with pytest.raises(InvalidTransition, match="only a blocked card"):
        unblock_card(authority, card)
    assert len(revoke_card(authority, card.lower(), "keycompromise")) == 2
    assert state(authority, card) == ("revoked", [("revoked", "keyCompromise")] * 2)
    with pytest.raises(InvalidTransition, match="already revoked"):
        revoke_card(authority, card)
    with authority.store.read() as session:
        actions = [a for (a,) in session.execute(select(AuditRecord.action)
                                                 .where(AuditRecord.action.like("card.%"))
                                                 .order_by(AuditRecord.seq))]
    assert actions[-3:] == ["card.blocked", "card.active", "card.revoked"], actions


def test_a_refusal_half_way_changes_neither_card_nor_certificates(authority: Authority,
                                                                 card: str) -> None:
    # The sign certificate expired: it can no longer be held, only revoked. Blocking used to
    # hold the auth certificate, then fail on the sign one, leaving an "active" card half held.
    past = authority.clock.now() - dt.timedelta(days=1)
    with authority.store.session() as session:
        session.execute(update(Certificate).where(Certificate.profile == "sign")
                        .values(not_after=past))
    before = state(authority, card)
    with pytest.raises(InvalidTransition, match="expired"):
        block_card(authority, card)
    assert state(authority, card) == before == ("active", [("active", None)] * 2)
    revoke_card(authority, card, "cessationOfOperation")   # revoking still works
    assert state(authority, card)[0] == "revoked"


def test_a_card_is_not_revoked_on_hold(authority: Authority, card: str) -> None:
    with pytest.raises(InvalidInput, match="card block"):
        revoke_card(authority, card, "certificateHold")
    assert state(authority, card)[0] == "active"
