"""The login broker service: challenge in, card signature in, access token out (SPEC §7).

Order of the checks, each refusal with its own audited reason:

1. the request parses (``malformed``);
2. the challenge is consumed — atomically, before anything else, so that two concurrent uses
   of one challenge cannot both pass (``challenge_unknown`` / ``challenge_replayed`` /
   ``challenge_expired``);
3. the signature over ``proof.login_message(challenge, issuer)`` verifies with the key of the
   presented certificate (``bad_signature``) — proof of possession comes first, so that
   nothing below is ever told to someone who merely holds a (public) certificate;
4. the certificate's validity window (``expired`` / ``not_yet_valid``), its path to one of the
   home's roots (``other_ca``), its usage: digitalSignature + authentication policy
   (``wrong_usage``, e.g. the signature certificate);
5. live revocation status: OCSP, CRL fallback (``revoked`` / ``hold`` / ``status_unknown`` /
   ``revocation_unavailable`` when both are unreachable: fail closed);
6. the requested organisation is one of the professional's practices
   (``unknown_organisation``).

This module never imports Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy import select
from sqlalchemy.orm import Session

from cps_login.auditsink import AuditSink
from cps_login.challenges import Challenge, ChallengeStore
from cps_login.errors import ChallengeRefused, CredentialRefused, RevocationUnavailable
from cps_login.pathcheck import Holder, PathValidator, check_usage, holder_of
from cps_login.proof import login_message, verify_login_signature
from cps_login.revocation import RevocationChecker
from cps_login.tokens import IssuedToken, TokenIssuer
from pki.clock import Clock
from pki.store.db import Store
from pki.store.models import Professional, Structure
from pki.store.patient_models import ProfessionalActivity

MAX_CHAIN = 4
_MEMO_SIZE = 200_000


@dataclass(frozen=True)
class LoginRequest:
    certificate: bytes                    # DER of the card's authentication certificate
    chain: tuple[bytes, ...]              # DER of intermediates the client sends (optional)
    challenge: bytes
    signature: bytes
    organisation_id: str | None = None
    client: str = ""                      # remote address, for the audit record

    @classmethod
    def from_json(cls, body: Mapping[str, Any], client: str = "") -> LoginRequest:
        """Parse the JSON body of ``POST /login``; any defect is ``malformed``."""
        def b64(value: object) -> bytes:
            if not isinstance(value, str):
                raise CredentialRefused("malformed", "expected base64 strings")
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise CredentialRefused("malformed", "bad base64") from None

        chain = body.get("chain", [])
        if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
            raise CredentialRefused("malformed", "chain must be a list of at most 4")
        org = body.get("organisation_id")
        if org is not None and not isinstance(org, str):
            raise CredentialRefused("malformed", "organisation_id must be a string")
        return cls(certificate=b64(body.get("certificate")),
                   chain=tuple(b64(c) for c in chain), challenge=b64(body.get("challenge")),
                   signature=b64(body.get("signature")), organisation_id=org, client=client)


@dataclass(frozen=True)
class _Leaf:
    """What a card certificate's DER yields, whatever the login: parsed once per distinct DER
    (keyed by the SHA-256 of the bytes presented)."""

    certificate: x509.Certificate
    public_key: CertificatePublicKeyTypes
    serial: str
    issuer: str
    thumbprint: str


@dataclass(frozen=True)
class LoginResult:
    token: IssuedToken
    holder: Holder
    serial: str


class LoginService:
    def __init__(self, *, store: Store, clock: Clock, challenges: ChallengeStore,
                 paths: PathValidator, revocation: RevocationChecker, tokens: TokenIssuer,
                 audit: AuditSink, issuer: str, audience: str, auth_policy_oid: str,
                 practice_ttl_seconds: float = 60.0) -> None:
        self._store = store
        self._clock = clock
        self._challenges = challenges
        self._paths = paths
        self._revocation = revocation
        self._tokens = tokens
        self._audit = audit
        self.issuer = issuer
        self.audience = audience
        self._policy = auth_policy_oid
        # Directory data (practices) may be this many seconds stale; revocation never is.
        self._practice_ttl = practice_ttl_seconds
        self._practices: dict[str, tuple[float, Sequence[str]]] = {}
        self._holders: dict[bytes, Holder] = {}
        self._leaves: dict[bytes, _Leaf] = {}

    def challenge(self) -> Challenge:
        return self._challenges.issue()

    def login(self, request: LoginRequest) -> LoginResult:
        """A token for a valid card login; CredentialRefused / ChallengeRefused otherwise.

        Every outcome, success or refusal, is in the audit chain before this returns.
        """
        facts: dict[str, Any] = {"client": request.client}
        try:
            result = self._login(request, facts)
        except (CredentialRefused, ChallengeRefused, RevocationUnavailable) as exc:
            reason = getattr(exc, "reason", exc.code)
            facts["reason"] = reason
            if isinstance(exc, CredentialRefused) and exc.detail:
                facts["detail"] = exc.detail[:300]
            if isinstance(exc, RevocationUnavailable):
                facts["detail"] = exc.message[:300]
            self._audit.record("login.refused", facts.get("national_id", "unknown"), facts,
                               actor=facts.get("national_id", "anonymous"))
            raise
        facts.update(jti=result.token.claims["jti"], exp=result.token.claims["exp"])
        self._audit.record("login.success", result.holder.national_id, facts,
                           actor=result.holder.national_id)
        return result

    def _login(self, request: LoginRequest, facts: dict[str, Any]) -> LoginResult:
        digest = hashlib.sha256(request.certificate).digest()
        parsed = self._leaves.get(digest)
        try:
            if parsed is None:
                parsed = _parse_leaf(request.certificate)
                if len(self._leaves) >= _MEMO_SIZE:
                    self._leaves.clear()
                self._leaves[digest] = parsed
            presented = [x509.load_der_x509_certificate(c) for c in request.chain]
        # cryptography parses lazily and raises more than ValueError on a hostile DER (an
        # issuer attribute of the wrong ASN.1 type is a TypeError): each is "malformed".
        except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
            raise CredentialRefused("malformed", "certificate does not parse") from None
        leaf = parsed.certificate
        facts["serial"] = parsed.serial
        facts["issuer"] = parsed.issuer
        self._challenges.consume(request.challenge)
        message = login_message(request.challenge, self.issuer)
        if not verify_login_signature(parsed.public_key, message, request.signature):
            raise CredentialRefused("bad_signature")
        at = self._clock.now()
        path = self._paths.validate(leaf, presented, at)
        holder = self._holder(leaf, digest)
        facts["national_id"] = holder.national_id
        status = self._revocation.status(leaf, path.issuer)
        facts["revocation_source"] = status.source
        if status.ocsp_problem:
            facts["ocsp_problem"] = status.ocsp_problem[:200]
        if status.status != "good":
            raise CredentialRefused(status.status, status.reason or "")
        organisation = self._organisation(holder, request.organisation_id)
        if organisation:
            facts["organisation_id"] = organisation
        token = self._tokens.issue(subject=holder.national_id, audience=self.audience,
                                   profession_code=holder.profession_code,
                                   organisation_id=organisation,
                                   extra={"cnf": {"x5t#S256": parsed.thumbprint}})
        return LoginResult(token, holder, parsed.serial)

    def _holder(self, leaf: x509.Certificate, key: bytes) -> Holder:
        """Usage checks and holder of a leaf, memoised by the SHA-256 of its DER (a certificate
        never changes)."""
        holder = self._holders.get(key)
        if holder is None:
            check_usage(leaf, self._policy)
            holder = holder_of(leaf)
            if len(self._holders) >= _MEMO_SIZE:
                self._holders.clear()
            self._holders[key] = holder
        return holder

    def _organisation(self, holder: Holder, wanted: str | None) -> str | None:
        rpps = holder.national_id[1:]
        now = time.monotonic()
        cached = self._practices.get(rpps)
        if cached is not None and cached[0] > now:
            practices = cached[1]
        else:
            with self._store.read() as session:
                practices = _practices(session, rpps)
            if len(self._practices) >= _MEMO_SIZE:
                self._practices.clear()
            self._practices[rpps] = (now + self._practice_ttl, practices)
        if wanted is None:
            return practices[0] if len(practices) == 1 else None
        if wanted not in practices:
            raise CredentialRefused("unknown_organisation", wanted)
        return wanted


def _practices(session: Session, rpps: str) -> Sequence[str]:
    rows = session.execute(
        select(Structure.structure_id)
        .join(ProfessionalActivity, ProfessionalActivity.structure_id == Structure.id)
        .join(Professional, Professional.id == ProfessionalActivity.professional_id)
        .where(Professional.rpps == rpps).order_by(Structure.structure_id)).scalars().all()
    return list(rows)


def _parse_leaf(der: bytes) -> _Leaf:
    cert = x509.load_der_x509_certificate(der)
    thumbprint = cert.fingerprint(hashes.SHA256())   # of the certificate's own DER encoding
    return _Leaf(cert, cert.public_key(), f"{cert.serial_number:X}", cert.issuer.rfc4514_string(),
                 base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode())
