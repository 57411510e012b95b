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
from pki.cards.errors import CardError
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
                   location=location, status="personalising", created_at=auth.clock.now(),
                   model=card_model(card))
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


def card_model(card: object) -> str | None:
    """The chip as it presents itself, recorded at personalisation so that an incident can
    select its certificates (``cps-admin cert revoke --card-model``): the ATR in upper-case hex
    for a card in a PC/SC reader, ``manufacturer / model`` of a PKCS#11 token; None when the
    card says nothing usable (the personalisation goes on: the model serves incidents only)."""
    from pki.cards.pcsc import PcscCard, reader_states
    from pki.cards.pkcs11_card import Pkcs11Personaliser

    if isinstance(card, PcscCard):
        try:
            atr = next((s.atr for s in reader_states() if s.name == card.reader), b"")
        except CardError:
            return None
        return atr.hex().upper() or None
    if isinstance(card, Pkcs11Personaliser):
        token = card.module.token(card.token_label)
        parts = [str(getattr(token, name, "") or "").strip()
                 for name in ("manufacturer_id", "model")]
        return " / ".join(p for p in parts if p) or None
    return None


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


def _change_card(auth: Authority, card_number: str, event: str, reason: str | None,
                 allowed: str, refusal: str, new_status: str, actor: str) -> list[str]:
    """Check the card row and change it and its certificates in one transaction (the row is
    locked, so two officers blocking and revoking the same card cannot interleave)."""
    with auth.store.session() as session:
        card = session.execute(select(Card).where(Card.card_number == card_number.upper())
                               .with_for_update()).scalar_one_or_none()
        if card is None:
            raise NotFound(f"no card {card_number}")
        if (card.status != allowed) if allowed != "any" else card.status == "revoked":
            raise InvalidTransition(refusal.format(card=card.card_number, status=card.status))
        want = {"hold": ("active",), "release": ("hold",), "revoke": ("active", "hold")}[event]
        certs = session.execute(select(Certificate).where(Certificate.card_id == card.id)
                                .order_by(Certificate.id)).scalars().all()
        changed = [lifecycle.change_in(session, auth, c.serial, event, reason, actor=actor
                                       ).serial for c in certs if c.status in want]
        card.status = new_status
        audit.append(session, f"card.{new_status}", card.card_number, {"certificates": changed},
                     actor=actor, clock=auth.clock)
    lifecycle.notify_changed(auth, changed)
    return changed


def block_card(auth: Authority, card_number: str, *, actor: str = "cps-admin") -> list[str]:
    """Suspend both certificates of a card (certificateHold)."""
    return _change_card(auth, card_number, "hold", "certificateHold", "active",
                        "card {card} is {status}; only an active card can be blocked",
                        "blocked", actor)


def unblock_card(auth: Authority, card_number: str, *, actor: str = "cps-admin") -> list[str]:
    return _change_card(auth, card_number, "release", None, "blocked",
                        "card {card} is {status}; only a blocked card can be unblocked",
                        "active", actor)


def revoke_card(auth: Authority, card_number: str, reason: str = "keyCompromise", *,
                actor: str = "cps-admin") -> list[str]:
    """Revoke both certificates (lost, stolen, compromised card): final."""
    reason = lifecycle.parse_reason(reason)
    if reason == "certificateHold":
        raise InvalidInput("a card is put on hold with `card block`, not revoked")
    return _change_card(auth, card_number, "revoke", reason, "any",
                        "card {card} is already revoked", "revoked", actor)


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
