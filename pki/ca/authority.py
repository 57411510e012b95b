"""The certificate authority of one home: its CAs, their HSM keys, and issuance.

``Authority`` is the only object that holds signing handles. Publishers (CRL, OCSP, the token
issuer) receive ``TbsSigner`` objects from it; everything else receives certificates.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pki import audit, ids, urls
from pki.ca import profiles
from pki.ca.issuer import LintedTbs, hsm_signature, linted_tbs, pipelined, release
from pki.clock import SYSTEM_CLOCK, Clock, utc_seconds
from pki.config import Config, default_home
from pki.errors import BadCsr, HsmKeyNotFound, InvalidInput, NotFound, PkiError
from pki.hsm import Hsm, HsmEcKey, HsmRsaKey
from pki.signer import TbsSigner
from pki.store.db import Store
from pki.store.models import Certificate, CertificateAuthority, Professional, Structure

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# Backdating absorbs clock skew between the CA and relying parties.
BACKDATE = dt.timedelta(minutes=5)
# issue_many reads the directory entries of this many requests ahead in one query.
HOLDER_PREFETCH = 256
# The table itself: a Core bulk INSERT skips the ORM's per-row bookkeeping.
_CERTIFICATE = Certificate.metadata.tables[Certificate.__tablename__]


@dataclass(frozen=True)
class CaInfo:
    id: int
    slug: str
    name: str
    role: str
    range: str
    key_label: str
    key_type: str
    der: bytes
    certificate: x509.Certificate
    parent_id: int | None

    @functools.cached_property
    def view(self) -> profiles.IssuerView:
        """The builders' view of this CA (one per CA: it caches the repeated extensions)."""
        return profiles.IssuerView(self.slug, self.certificate)


@dataclass(frozen=True)
class IssueRequest:
    """One certificate to issue for a professional (auth/sign) or a structure (org)."""

    profile: str
    public_key: PublicKey
    rpps: str | None = None
    structure_id: str | None = None
    dns_names: tuple[str, ...] = ()
    common_name: str | None = None
    card_id: int | None = None
    renewed_from_id: int | None = None
    # Where the private key lives (the product category). Unset: "card" for a key generated
    # on a registered card (card_id), else "software" -- never more than the CA knows.
    key_storage: profiles.KeyStorage | None = None

    @property
    def storage(self) -> profiles.KeyStorage:
        if self.key_storage is not None:
            return self.key_storage
        return "card" if self.card_id is not None else "software"


@dataclass(frozen=True)
class IssuedCertificate:
    id: int
    serial: str
    profile: str
    ca_slug: str
    der: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def serial_hex(serial: int) -> str:
    """Upper-case hex with an even number of digits, as `openssl x509 -serial` prints it."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> str:
    """Accept `0x..`, colons, any case; return the canonical form used in the store."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InvalidInput(f"serial must be hexadecimal, got {text!r}") from None
    if value <= 0:
        raise InvalidInput(f"serial must be positive, got {text!r}")
    return serial_hex(value)


class _Holder(NamedTuple):
    professional_id: int
    profession_code: int
    subject: x509.Name
    subject_text: str


def _holder(professional_id: int, profession_code: int, given_name: str, surname: str,
            rpps: str) -> _Holder:
    subject = profiles.professional_subject(ids.profession(profession_code).label, given_name,
                                            surname, ids.national_id(rpps))
    return _Holder(professional_id, profession_code, subject, profiles.name_text(subject))


class _Prepared(NamedTuple):
    request: IssueRequest
    builder: x509.CertificateBuilder
    ca: CaInfo
    serial: int
    subject: str
    professional_id: int | None
    structure_pk: int | None
    not_before: dt.datetime
    not_after: dt.datetime


class Authority:
    def __init__(self, config: Config, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._hsm: Hsm | None = None
        # The signer's threads (OCSP pre-signing, CRLs, live answers) ask for the token at once
        # when it starts: one session, opened once — a second C_OpenSession/C_Login racing the
        # first session's calls aborts SoftHSM.
        self._hsm_lock = threading.Lock()
        self._cas: dict[str, CaInfo] | None = None
        # Called with the serials of every committed status change made through this
        # authority (pki.ca.lifecycle.add_listener): the signer's OCSP re-signing.
        self.status_listeners: list[Callable[[list[str]], object]] = []

    @classmethod
    def open(cls, home: Path | None = None, db_url: str | None = None,
             clock: Clock = SYSTEM_CLOCK) -> Authority:
        config = Config.load(home or default_home())
        return cls(config, Store(config.effective_db_url(db_url)), clock)

    # --- HSM ---------------------------------------------------------------------------
    @property
    def hsm(self) -> Hsm:
        """The CA token (issuing CAs, OCSP responders): never the root token."""
        with self._hsm_lock:
            if self._hsm is None:
                c = self.config
                self._hsm = Hsm(c.hsm.module, c.hsm.token_label,
                                c.read_secret(c.hsm.user_pin_file), c.softhsm_conf_path())
            return self._hsm

    def _key(self, ca: CaInfo) -> HsmRsaKey | HsmEcKey:
        return self.hsm.key(ca.key_label)

    def signer(self, slug: str) -> TbsSigner:
        """Signs TBS structures (CRLs) with the CA's own key (issuing CAs only: ``hsm`` is the
        CA token, and a root's key lives in the offline root token, see pki.ca.root)."""
        ca = self.ca(slug)
        if ca.role == "ROOT":
            raise HsmKeyNotFound(f"{slug} is a root CA: its key is in the offline root token "
                                 f"{self.config.hsm.root_token_label!r}, opened only by "
                                 f"`cps-admin root` ceremonies")
        return TbsSigner(self._key(ca), ca.certificate)

    def key_signer(self, label: str, certificate: x509.Certificate) -> TbsSigner:
        """Signs with another HSM key of this authority (OCSP responder, token issuer)."""
        return TbsSigner(self.hsm.key(label), certificate)

    def close(self) -> None:
        with self._hsm_lock:
            if self._hsm is not None:
                self._hsm.close()
                self._hsm = None
        self.store.dispose()

    # --- CAs ---------------------------------------------------------------------------
    def cas(self) -> list[CaInfo]:
        if self._cas is None:
            with self.store.read() as session:
                rows = session.execute(select(CertificateAuthority)
                                       .order_by(CertificateAuthority.id)).scalars().all()
                self._cas = {r.slug: _ca_info(r) for r in rows}
        return list(self._cas.values())

    def ca(self, slug: str) -> CaInfo:
        for ca in self.cas():
            if ca.slug == slug:
                return ca
        raise NotFound(f"no CA {slug!r}; known: {', '.join(c.slug for c in self.cas())}")

    def ca_by_id(self, ca_id: int) -> CaInfo:
        for ca in self.cas():
            if ca.id == ca_id:
                return ca
        raise NotFound(f"no CA with id {ca_id}")

    def issuing_cas(self) -> list[CaInfo]:
        return [c for c in self.cas() if c.role != "ROOT"]

    def issuing_ca(self, role: str, range_: str = "FORT") -> CaInfo:
        for ca in self.cas():
            if ca.role == role and ca.range == range_:
                return ca
        raise NotFound(f"no {range_} {role} CA in this home")

    def chain(self, slug: str) -> list[CaInfo]:
        """The CA and its ancestors up to the root."""
        out = [self.ca(slug)]
        while out[-1].parent_id is not None:
            out.append(self.ca_by_id(out[-1].parent_id))
        return out

    def invalidate_cache(self) -> None:
        self._cas = None

    # --- issuance ----------------------------------------------------------------------
    def issue(self, request: IssueRequest, *, actor: str = "cps-admin") -> IssuedCertificate:
        return next(iter(self.issue_many([request], actor=actor)))

    def issue_many(self, requests: Iterable[IssueRequest], *, actor: str = "cps-admin",
                   batch_size: int = 200) -> Iterator[IssuedCertificate]:
        """Issue certificates through lint-then-sign, storing them in batches.

        Build, lint and store run on this thread; HSM signatures of the linted TBS bytes on
        one worker thread, overlapping them. Each batch is one transaction (certificates +
        audit links); a failure stores nothing of that batch and the error propagates.
        """
        # Directory lookups cached for this call: the holders of the next HOLDER_PREFETCH
        # requests are read in one query, so a card's auth and sign certificates (and a batch's
        # repeated holders) cost one read, and a chunk of requests one read transaction.
        holders: dict[str, _Holder] = {}
        serials = profiles.random_serials(64)

        def prepare(req: IssueRequest) -> tuple[_Prepared, LintedTbs]:
            prepared = self._prepare(req, holders, serials)
            return prepared, linted_tbs(prepared.builder, self._key(prepared.ca),
                                        f"{req.profile} certificate")

        def sign(item: tuple[_Prepared, LintedTbs]) -> tuple[_Prepared, LintedTbs, bytes]:
            # The HSM thread signs and nothing else: checking the signature and assembling
            # the certificate happen here, so the next C_Sign starts at once.
            prepared, linted = item
            return prepared, linted, hsm_signature(linted, self._key(prepared.ca))

        # A stream: a population of millions is never held in memory.
        signed = pipelined(self._prefetching(iter(requests), holders), prepare, sign)
        results = ((prepared, release(linted, self._key(prepared.ca), signature))
                   for prepared, linted, signature in signed)
        batch: list[tuple[_Prepared, bytes]] = []
        for item in results:
            batch.append(item)
            if len(batch) >= batch_size:
                yield from self._store_batch(batch, actor)
                batch = []
        if batch:
            yield from self._store_batch(batch, actor)

    def _prefetching(self, requests: Iterator[IssueRequest], holders: dict[str, _Holder]
                     ) -> Iterator[IssueRequest]:
        """``requests`` unchanged, the holders of each chunk read ahead into ``holders``."""
        while chunk := list(itertools.islice(requests, HOLDER_PREFETCH)):
            self._prefetch_holders(chunk, holders)
            yield from chunk

    def _prefetch_holders(self, requests: list[IssueRequest],
                          holders: dict[str, _Holder]) -> None:
        """Read the professionals of ``requests`` missing from ``holders`` in one query.

        Only what is found and valid goes in: for an unknown or malformed RPPS (or a directory
        entry that cannot make a subject) ``_prepare`` looks again and raises the usual error
        when that request's turn comes, so nothing of its batch is stored.
        """
        table = profiles.profiles()
        wanted: dict[str, list[str]] = {}
        seen: set[str] = set()
        for req in requests:
            rpps = req.rpps
            if rpps is None or rpps in holders or rpps in seen:
                continue
            seen.add(rpps)
            prof = table.get(req.profile)
            if prof is None or prof.subject != "professional":
                continue
            try:
                number = ids.validate_rpps(rpps)
            except InvalidInput:
                continue
            wanted.setdefault(number, []).append(rpps)
        if not wanted:
            return
        with self.store.read() as session:
            rows = session.execute(
                select(Professional.id, Professional.profession_code, Professional.given_name,
                       Professional.surname, Professional.rpps)
                .where(Professional.rpps.in_(list(wanted)))).all()
        for pk, code, given_name, surname, number in rows:
            try:
                holder = _holder(pk, code, given_name, surname, number)
            except PkiError:
                continue
            for rpps in wanted.get(number, ()):
                holders[rpps] = holder

    def _prepare(self, req: IssueRequest, holders: dict[str, _Holder] | None = None,
                 serials: Iterator[int] | None = None) -> _Prepared:
        prof = profiles.profile(req.profile)
        ca = self.issuing_ca(prof.issuer_role)
        now = utc_seconds(self.clock.now())
        serial = profiles.random_serial() if serials is None else next(serials)
        not_before = now - BACKDATE
        professional_id = structure_pk = None
        profession_code = None
        if prof.subject == "professional":
            if req.rpps is None:
                raise InvalidInput(f"profile {prof.name} needs --rpps")
            holder = holders.get(req.rpps) if holders is not None else None
            if holder is None:
                with self.store.read() as session:
                    pro = _professional(session, req.rpps)
                    holder = _holder(pro.id, pro.profession_code, pro.given_name, pro.surname,
                                     pro.rpps)
                if holders is not None:
                    holders[req.rpps] = holder
            professional_id, profession_code, subject, subject_text = holder
        else:
            with self.store.read() as session:
                if req.structure_id is None:
                    raise InvalidInput(f"profile {prof.name} needs a structure")
                st = _structure(session, req.structure_id)
                structure_pk = st.id
                subject = profiles.structure_subject(
                    st.state, st.name, st.structure_id,
                    req.common_name or (req.dns_names[0] if req.dns_names else st.name))
            subject_text = profiles.name_text(subject)
        view = ca.view
        not_after = min(not_before + dt.timedelta(days=prof.validity_days(self.config)),
                        view.not_after)
        builder = profiles.end_entity_builder(
            self.config, prof, view, subject, req.public_key, serial=serial,
            not_before=not_before, profession_code=profession_code, dns_names=req.dns_names,
            not_after=not_after, key_storage=req.storage)
        return _Prepared(req, builder, ca, serial, subject_text, professional_id, structure_pk,
                         not_before, not_after)

    def _store_batch(self, batch: list[tuple[_Prepared, bytes]],
                     actor: str) -> list[IssuedCertificate]:
        shards = self.config.crl.shards
        now = self.clock.now
        serials = [serial_hex(prep.serial) for prep, _ in batch]
        rows = [{
            "serial": serial, "ca_id": prep.ca.id, "profile": prep.request.profile,
            "subject": prep.subject, "professional_id": prep.professional_id,
            "structure_id": prep.structure_pk, "card_id": prep.request.card_id,
            "not_before": prep.not_before, "not_after": prep.not_after, "status": "active",
            "shard": urls.shard_of(prep.serial, shards) or 0,
            "renewed_from_id": prep.request.renewed_from_id, "der": der, "created_at": now(),
        } for (prep, der), serial in zip(batch, serials, strict=True)]
        with self.store.session() as session:
            # One multi-row INSERT .. RETURNING for the batch (SQLAlchemy "insertmanyvalues"),
            # not one unit-of-work INSERT per certificate; the ids come back in no particular
            # order, matched by the unique serial.
            ids_by_serial: dict[str, int] = dict(session.execute(
                insert(_CERTIFICATE).returning(_CERTIFICATE.c.serial, _CERTIFICATE.c.id), rows
            ).all())
            audit.append_many(session, [
                ("cert.issue", serial,
                 {"profile": prep.request.profile, "ca": prep.ca.slug, "subject": prep.subject})
                for (prep, _), serial in zip(batch, serials, strict=True)],
                actor=actor, clock=self.clock)
        return [IssuedCertificate(ids_by_serial[serial], serial, prep.request.profile,
                                  prep.ca.slug, der)
                for (prep, der), serial in zip(batch, serials, strict=True)]

    def issue_from_csr(self, csr_data: bytes, profile: str, *, rpps: str | None = None,
                       structure_id: str | None = None, actor: str = "cps-admin",
                       key_storage: profiles.KeyStorage = "software") -> IssuedCertificate:
        """Issue from a PKCS#10 request after checking its proof of possession.

        A CSR's key was made outside any card we personalised: "software" unless the officer
        vouches for a security module ("hsm"); never "card".
        """
        if key_storage not in ("software", "hsm"):
            raise InvalidInput(f"a key from a CSR cannot be stored as {key_storage!r}: only "
                               f"`card issue` makes card keys (software|hsm)")
        csr = load_csr(csr_data)
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise BadCsr("CSR key must be RSA or EC")
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise BadCsr(f"CSR RSA key is {public_key.key_size} bits; at least 2048 required")
        dns: tuple[str, ...] = ()
        if profile == "org":
            try:
                san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                dns = tuple(san.value.get_values_for_type(x509.DNSName))
            except x509.ExtensionNotFound:
                dns = ()
        return self.issue(IssueRequest(profile=profile, public_key=public_key, rpps=rpps,
                                       structure_id=structure_id, dns_names=dns,
                                       key_storage=key_storage), actor=actor)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = (x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_csr(data))
    except (ValueError, x509.InvalidVersion) as exc:   # InvalidVersion is no ValueError
        raise BadCsr(f"CSR does not parse: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception as exc:
        raise BadCsr(f"CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise BadCsr("CSR signature is invalid (no proof of possession of the key)")
    return csr


def _professional(session: Session, rpps: str) -> Professional:
    rpps = ids.validate_rpps(rpps)
    pro = session.execute(select(Professional).where(Professional.rpps == rpps)
                          ).scalar_one_or_none()
    if pro is None:
        raise NotFound(f"no professional with RPPS {rpps} (add with `cps-admin pro add`)")
    return pro


def _structure(session: Session, structure_id: str) -> Structure:
    st = session.execute(select(Structure).where(Structure.structure_id == structure_id)
                         ).scalar_one_or_none()
    if st is None:
        raise NotFound(f"no structure {structure_id}")
    return st


def _ca_info(row: CertificateAuthority) -> CaInfo:
    return CaInfo(id=row.id, slug=row.slug, name=row.name, role=row.role, range=row.range,
                  key_label=row.key_label, key_type=row.key_type, der=row.cert_der,
                  certificate=x509.load_der_x509_certificate(row.cert_der),
                  parent_id=row.parent_id)
