"""Card renewal: successor keys generated on the card, certified, written, then the old ones
superseded.

Order, so that a card pulled (or a command failing) at any step keeps a working pair and a rerun
finishes the job:

1. per usage, the card generates a *pending* key beside the current one; the CA certifies it
   (``lifecycle.renew``, ``renewed_from`` the card's current certificate); the certificate is
   written as the pending one; the card activates it (PC/SC: one atomic swap on the chip);
2. only when both usages hold their successor, the store revokes the predecessors
   (``superseded``), both in one transaction. The card therefore never holds only certificates
   the store revoked.

A rerun reads the card: a current certificate whose predecessor is still unrevoked means step 2
was not reached; a pending certificate already issued for this renewal is activated rather than
issued again; a successor issued but never activated on the card is revoked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e
from sqlalchemy import select

from pki import audit
from pki.ca import lifecycle
from pki.ca.authority import Authority, serial_hex
from pki.cards.apdu import tlv
from pki.cards.card import USAGES, KeyType, Usage
from pki.cards.errors import CardCommandError, PinIncorrect, PinLocked
from pki.cards.pcsc import FID_CERT, KEY_ALG, KEY_REF, PcscCard
from pki.cards.pkcs11_card import (
    CPS_LABELS,
    KEY_IDS,
    Pkcs11Module,
    certificate_object,
    generate_card_key,
)
from pki.errors import InvalidInput, InvalidTransition, NotFound
from pki.store.models import Card, Certificate

PENDING = 0x80  # PC/SC: pending key ref = ref | 80, pending certificate EF = EF + 0100


class RenewableCard(Protocol):
    """What a personalised card offers for renewal (the holder's PIN already verified)."""

    def current_certificate(self, usage: Usage) -> x509.Certificate: ...

    def pending_certificate(self, usage: Usage) -> x509.Certificate | None: ...

    def generate_pending_key(self, usage: Usage, key_type: KeyType) -> PublicKeyTypes: ...

    def write_pending_certificate(self, usage: Usage, der: bytes) -> None: ...

    def activate_pending(self, usage: Usage) -> None: ...

    def settle(self, usage: Usage) -> None:
        """Finish an activation an earlier run left half-done (no-op where it is atomic)."""


@dataclass(frozen=True)
class RenewalResult:
    card_number: str
    renewed: dict[Usage, str]   # usage -> serial now on the card
    superseded: tuple[str, ...]  # predecessors revoked (superseded) by this run


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _serial(cert: x509.Certificate) -> str:
    return serial_hex(cert.serial_number)


def renew_card(auth: Authority, card_number: str, device: RenewableCard, *,
               actor: str = "cps-admin") -> RenewalResult:
    """Renew both certificates of ``card_number`` onto ``device`` (see the module docstring)."""
    number = card_number.strip().upper()
    with auth.store.read() as session:
        card = session.execute(select(Card).where(Card.card_number == number)
                               ).scalar_one_or_none()
        if card is None:
            raise NotFound(f"no card {number}")
        if card.status != "active":
            raise InvalidTransition(f"card {number} is {card.status}; only an active card can "
                                    f"be renewed")
        rows = list(session.execute(select(Certificate).where(Certificate.card_id == card.id)
                                    ).scalars())
        session.expunge_all()
    by_serial = {r.serial: r for r in rows}
    by_id = {r.id: r for r in rows}
    renewed: dict[Usage, str] = {}
    predecessors: list[str] = []
    for usage in USAGES:
        device.settle(usage)
        current = device.current_certificate(usage)
        row = by_serial.get(_serial(current))
        if row is None:
            raise InvalidInput(f"the card presented is not card {number}: its {usage} "
                               f"certificate {_serial(current)} is none of this card's")
        before = by_id.get(row.renewed_from_id) if row.renewed_from_id is not None else None
        if before is not None and before.status != "revoked":
            renewed[usage] = row.serial   # activated by an interrupted run
            predecessors.append(before.serial)
            continue
        if row.status != "active":
            raise InvalidTransition(f"{usage} certificate {row.serial} of card {number} is "
                                    f"{row.status}; only active certificates are renewed")
        renewed[usage] = _write_successor(auth, device, usage, row, current, rows, actor)
        predecessors.append(row.serial)
    # Only now, with both successors on the card, do the old certificates stop being valid —
    # both in one transaction, so a rerun never sees one superseded and the other not.
    with auth.store.session() as session:
        for serial in predecessors:
            lifecycle.change_in(session, auth, serial, "revoke", "superseded", actor=actor)
        audit.append(session, "card.renew", number, {"renewed": dict(renewed),
                                                     "superseded": predecessors},
                     actor=actor, clock=auth.clock)
    lifecycle.notify_changed(auth, predecessors)
    return RenewalResult(number, renewed, tuple(predecessors))


def _write_successor(auth: Authority, device: RenewableCard, usage: Usage, row: Certificate,
                     current: x509.Certificate, rows: list[Certificate], actor: str) -> str:
    successors = [r for r in rows if r.renewed_from_id == row.id and r.status == "active"]
    pending = device.pending_certificate(usage)
    if pending is not None and _serial(pending) in {r.serial for r in successors}:
        device.activate_pending(usage)   # issued and written by an interrupted run
        new_serial = _serial(pending)
    else:
        key_type: KeyType = ("p256" if isinstance(current.public_key(),
                                                  ec.EllipticCurvePublicKey) else "rsa2048")
        public_key = device.generate_pending_key(usage, key_type)
        issued = lifecycle.renew(auth, row.serial, public_key=public_key, key_storage="card",
                                 actor=actor)
        if _spki(issued.certificate.public_key()) != _spki(public_key):
            raise InvalidInput(f"{usage} successor does not certify the key the card generated")
        device.write_pending_certificate(usage, issued.der)
        device.activate_pending(usage)
        new_serial = issued.serial
    for orphan in successors:   # issued by an interrupted run, never reached the card
        if orphan.serial != new_serial:
            lifecycle.revoke(auth, orphan.serial, "cessationOfOperation", actor=actor)
    return new_serial


class PcscRenewal:
    """Renewal on a CPS card in a PC/SC reader (the card swaps pending for current itself)."""

    def __init__(self, card: PcscCard, pin: str) -> None:
        self.card = card
        card.verify_pin(pin)   # stays verified until the card is reset (close)

    def current_certificate(self, usage: Usage) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.card.read_file(FID_CERT[usage]))

    def pending_certificate(self, usage: Usage) -> x509.Certificate | None:
        try:
            der = self.card.read_file(FID_CERT[usage] + 0x100)
        except CardCommandError as exc:
            if exc.sw == 0x6A82:
                return None
            raise
        return x509.load_der_x509_certificate(der)

    def generate_pending_key(self, usage: Usage, key_type: KeyType) -> PublicKeyTypes:
        with self.card.transaction():
            self.card.select()
            spki = self.card.command(0x47, 0x00, PENDING | KEY_REF[usage],
                                     tlv(0x80, bytes((KEY_ALG[key_type],))), le=256)
        return load_der_public_key(spki)

    def write_pending_certificate(self, usage: Usage, der: bytes) -> None:
        fid = FID_CERT[usage] + 0x100
        with self.card.transaction():
            self.card.select()
            self.card._chained(0xDA, fid >> 8, fid & 0xFF, der)

    def activate_pending(self, usage: Usage) -> None:
        with self.card.transaction():
            self.card.select()
            self.card.command(0x44, 0x01, PENDING | KEY_REF[usage])

    def settle(self, usage: Usage) -> None:
        """The chip swaps atomically: nothing is ever left half-done."""

    def close(self) -> None:
        self.card.close()


# PKCS#11 object IDs: 01/02 current (what Pkcs11Card uses), 81/82 pending, 41/42 retiring.
def _pending_id(usage: Usage) -> bytes:
    return bytes((KEY_IDS[usage][0] | PENDING,))


def _retiring_id(usage: Usage) -> bytes:
    return bytes((KEY_IDS[usage][0] | 0x40,))


class Pkcs11Renewal:
    """Renewal on a PKCS#11 token standing for a card, logged in with the holder's PIN.

    PKCS#11 has no transaction, so activation is a sequence every rerun can resume: the current
    objects move to the retiring ID (only while a pending certificate exists), the pending
    certificate then its keys move to the current ID, the retiring objects are destroyed.
    """

    def __init__(self, module: Pkcs11Module, token_label: str, pin: str) -> None:
        self.module = module
        with module.lock:
            token = module.token(token_label)
            try:
                self.session = token.open(rw=True, user_pin=pin)
            except p11e.PinIncorrect:
                raise PinIncorrect(None) from None
            except p11e.PinLocked:
                raise PinLocked() from None

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        with self.module.lock:
            yield self.session

    def _objects(self, key_id: bytes, object_class: ObjectClass | None = None) -> list[Any]:
        template: dict[Attribute, Any] = {Attribute.ID: key_id}
        if object_class is not None:
            template[Attribute.CLASS] = object_class
        return list(self.session.get_objects(template))

    def _certificate(self, key_id: bytes) -> x509.Certificate | None:
        with self._locked():
            found = self._objects(key_id, ObjectClass.CERTIFICATE)
            return x509.load_der_x509_certificate(bytes(found[0][Attribute.VALUE])) if found \
                else None

    def current_certificate(self, usage: Usage) -> x509.Certificate:
        cert = self._certificate(KEY_IDS[usage])
        if cert is None:
            raise InvalidInput(f"the token holds no current {usage} certificate")
        return cert

    def pending_certificate(self, usage: Usage) -> x509.Certificate | None:
        return self._certificate(_pending_id(usage))

    def generate_pending_key(self, usage: Usage, key_type: KeyType) -> PublicKeyTypes:
        with self._locked() as session:
            for stale in self._objects(_pending_id(usage)):
                stale.destroy()
            label = CPS_LABELS[usage].replace("Certificat", "Cle") + " (renouvellement)"
            return generate_card_key(session, _pending_id(usage), label, key_type)

    def write_pending_certificate(self, usage: Usage, der: bytes) -> None:
        with self._locked() as session:
            session.create_object(certificate_object(
                CPS_LABELS[usage] + " (renouvellement)", _pending_id(usage), der))

    def activate_pending(self, usage: Usage) -> None:
        with self._locked():
            if self._objects(_pending_id(usage), ObjectClass.CERTIFICATE):
                for old in self._objects(KEY_IDS[usage]):
                    old[Attribute.ID] = _retiring_id(usage)
            self._promote(usage)

    def _promote(self, usage: Usage) -> None:
        # The certificate first: a pending key left without its certificate is then seen by
        # settle() as the rest of an activation, never mistaken for a stale pending key.
        for cert in self._objects(_pending_id(usage), ObjectClass.CERTIFICATE):
            cert[Attribute.LABEL] = CPS_LABELS[usage]
            cert[Attribute.ID] = KEY_IDS[usage]
        for key in self._objects(_pending_id(usage)):
            key[Attribute.LABEL] = CPS_LABELS[usage].replace("Certificat", "Cle")
            key[Attribute.ID] = KEY_IDS[usage]
        for old in self._objects(_retiring_id(usage)):
            old.destroy()

    def settle(self, usage: Usage) -> None:
        with self._locked():
            retiring = self._objects(_retiring_id(usage))
            if self._objects(_pending_id(usage), ObjectClass.CERTIFICATE):
                if retiring or not self._objects(KEY_IDS[usage], ObjectClass.CERTIFICATE):
                    self.activate_pending(usage)   # stopped while retiring the old objects
                return   # otherwise renew_card decides: activate it or replace it
            if retiring or not self._objects(KEY_IDS[usage], ObjectClass.PRIVATE_KEY):
                self._promote(usage)   # stopped after moving the certificate

    def close(self) -> None:
        with self.module.lock:
            self.session.close()


__all__ = ["PcscRenewal", "Pkcs11Renewal", "RenewableCard", "RenewalResult", "renew_card"]
