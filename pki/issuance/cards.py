"""Card personalisation and card-level lifecycle: the CA certifies what the card generated.

The card generates its keys; the CA certifies the public halves with the auth and sign profiles
(``pki.cards.personalise`` checks each certificate certifies the key the card made). Blocking a
card suspends (certificateHold) both of its certificates; unblocking releases them; revoking a
card revokes both.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from sqlalchemy import select

from pki import audit, ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest, parse_serial
from pki.cards.card import HolderData, Usage
from pki.cards.personalise import PersonalisableCard, PersonalisationResult, personalise
from pki.errors import Duplicate, InvalidInput, InvalidTransition, NotFound
from pki.store.models import Card, Certificate, Professional


@dataclass(frozen=True)
class CardSummary:
    card_number: str
    rpps: str
    backend: str
    location: str
    status: str
    certificates: tuple[tuple[str, str, str], ...]   # (profile, serial, status)
    created_at: dt.datetime


def issue_card(auth: Authority, rpps: str, card: PersonalisableCard, pin: str, *,
               backend: str, location: str, card_number: str | None = None,
               key_type: str = "rsa2048", actor: str = "cps-admin") -> PersonalisationResult:
    """Personalise a blank card for ``rpps``: keys on the card, certificates from this CA."""
    rpps = ids.validate_rpps(rpps)
    if key_type not in ("rsa2048", "p256"):
        raise InvalidInput(f"card key type must be rsa2048 or p256, got {key_type!r}")
    number = card_number or secrets.token_hex(8).upper()
    with auth.store.session() as session:
        pro = session.execute(select(Professional).where(Professional.rpps == rpps)
                              ).scalar_one_or_none()
        if pro is None:
            raise NotFound(f"no professional with RPPS {rpps} (add with `cps-admin pro add`)")
        if session.execute(select(Card).where(Card.card_number == number)).first():
            raise Duplicate(f"card {number} is already registered")
        row = Card(card_number=number, professional_id=pro.id, backend=backend,
                   location=location, status="personalising", created_at=auth.clock.now())
        session.add(row)
        session.flush()
        card_id = row.id
        audit.append(session, "card.personalise.start", number, {"rpps": rpps,
                                                                 "backend": backend},
                     actor=actor, clock=auth.clock)
        holder = HolderData(rpps=pro.rpps, given_name=pro.given_name, surname=pro.surname,
                            profession_code=pro.profession_code,
                            profession_label=ids.profession(pro.profession_code).label)

    def certify(usage: Usage, public_key: PublicKeyTypes) -> bytes:
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise InvalidInput("card produced an unsupported key type")
        issued = auth.issue(IssueRequest(profile=usage, public_key=public_key, rpps=rpps,
                                         card_id=card_id), actor=actor)
        return issued.der

    try:
        result = personalise(card, holder, certify, pin,
                             key_type=key_type)  # type: ignore[arg-type]
    except BaseException:
        _abandon(auth, card_id, number, actor)
        raise
    with auth.store.session() as session:
        card_row = session.get(Card, card_id)
        assert card_row is not None
        card_row.status = "active"
        audit.append(session, "card.personalise", number,
                     {"rpps": rpps, "serials": {u: f"{c.serial_number:X}"
                                                for u, c in result.certificates.items()}},
                     actor=actor, clock=auth.clock)
    return result


def _abandon(auth: Authority, card_id: int, number: str, actor: str) -> None:
    """A personalisation that failed half-way: its certificates must not stay valid."""
    with auth.store.read() as session:
        serials = [c.serial for c in session.execute(
            select(Certificate).where(Certificate.card_id == card_id,
                                      Certificate.status != "revoked")).scalars()]
    for serial in serials:
        lifecycle.revoke(auth, serial, "cessationOfOperation", actor=actor)
    with auth.store.session() as session:
        row = session.get(Card, card_id)
        if row is not None:
            row.status = "failed"
        audit.append(session, "card.personalise.failed", number, {"revoked": serials},
                     actor=actor, clock=auth.clock)


def _card_and_serials(auth: Authority, card_number: str) -> tuple[Card, list[Certificate]]:
    with auth.store.read() as session:
        card = session.execute(select(Card).where(Card.card_number == card_number.upper())
                               ).scalar_one_or_none()
        if card is None:
            raise NotFound(f"no card {card_number}")
        certs = list(session.execute(select(Certificate).where(Certificate.card_id == card.id)
                                     ).scalars())
        session.expunge_all()
        return card, certs


def _set_card_status(auth: Authority, card_number: str, status: str, actor: str) -> None:
    with auth.store.session() as session:
        card = session.execute(select(Card).where(Card.card_number == card_number.upper())
                               ).scalar_one()
        card.status = status
        audit.append(session, f"card.{status}", card.card_number, {}, actor=actor,
                     clock=auth.clock)


def block_card(auth: Authority, card_number: str, *, actor: str = "cps-admin") -> list[str]:
    """Suspend both certificates of a card (certificateHold)."""
    card, certs = _card_and_serials(auth, card_number)
    if card.status != "active":
        raise InvalidTransition(f"card {card.card_number} is {card.status}; only an active "
                                f"card can be blocked")
    held = [lifecycle.hold(auth, c.serial, actor=actor).serial
            for c in certs if c.status == "active"]
    _set_card_status(auth, card.card_number, "blocked", actor)
    return held


def unblock_card(auth: Authority, card_number: str, *, actor: str = "cps-admin") -> list[str]:
    card, certs = _card_and_serials(auth, card_number)
    if card.status != "blocked":
        raise InvalidTransition(f"card {card.card_number} is {card.status}; only a blocked "
                                f"card can be unblocked")
    released = [lifecycle.release(auth, c.serial, actor=actor).serial
                for c in certs if c.status == "hold"]
    _set_card_status(auth, card.card_number, "active", actor)
    return released


def revoke_card(auth: Authority, card_number: str, reason: str = "keyCompromise", *,
                actor: str = "cps-admin") -> list[str]:
    """Revoke both certificates (lost, stolen, compromised card): final."""
    card, certs = _card_and_serials(auth, card_number)
    if card.status == "revoked":
        raise InvalidTransition(f"card {card.card_number} is already revoked")
    revoked = [lifecycle.revoke(auth, c.serial, reason, actor=actor).serial
               for c in certs if c.status != "revoked"]
    _set_card_status(auth, card.card_number, "revoked", actor)
    return revoked


def list_cards(auth: Authority) -> list[CardSummary]:
    with auth.store.read() as session:
        rows = session.execute(select(Card, Professional.rpps)
                               .join(Professional, Card.professional_id == Professional.id)
                               .order_by(Card.id)).all()
        certs = session.execute(select(Certificate.card_id, Certificate.profile,
                                       Certificate.serial, Certificate.status)
                                .where(Certificate.card_id.is_not(None))).all()
    by_card: dict[int, list[tuple[str, str, str]]] = {}
    for card_id, profile, serial, status in certs:
        if card_id is None:
            continue
        by_card.setdefault(card_id, []).append((profile, serial, status))
    return [CardSummary(card.card_number, rpps, card.backend, card.location, card.status,
                        tuple(by_card.get(card.id, [])), card.created_at)
            for card, rpps in rows]


def card_of_certificate(auth: Authority, serial: str) -> str | None:
    """The number of the card holding certificate ``serial`` (None for a certificate off-card)."""
    with auth.store.read() as session:
        return session.execute(select(Card.card_number).join(
            Certificate, Certificate.card_id == Card.id).where(
            Certificate.serial == parse_serial(serial))).scalar_one_or_none()
