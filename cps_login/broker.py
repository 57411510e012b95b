"""The login broker service: challenge in, card signature in, access token out (SPEC §7).

Order of the checks, each refusal with its own audited reason:

1. the request has the shape of one (JSON, base64, sizes: ``malformed``) — nothing parsed yet;
2. the challenge is consumed — atomically, and before the certificate is even parsed, so that
   two concurrent uses of one challenge cannot both pass and a request without one of our
   challenges costs a lookup and no more (``challenge_unknown`` / ``challenge_replayed`` /
   ``challenge_expired``);
3. the certificate parses (``malformed``) and the signature over
   ``proof.login_message(challenge, issuer)`` verifies with its key (``bad_signature``) —
   proof of possession comes first, so that nothing below is ever told to someone who merely
   holds a (public) certificate; a signature that verifies over the broker URL the client says
   it used (``"broker"`` in the body) but not over our issuer is ``wrong_issuer``, told with
   both URLs (the broker was reached under another name than its issuer URL);
4. the certificate's validity window (``expired`` / ``not_yet_valid``), its path to one of the
   home's roots (``other_ca``), its usage: digitalSignature + authentication policy
   (``wrong_usage``, e.g. the signature certificate);
5. where its key lives (product category): a software key is accepted at a lower assurance,
   or refused when ``accept_software_keys`` is false (``software_key_refused``);
6. live revocation status: OCSP, CRL fallback (``revoked`` / ``hold`` / ``status_unknown`` /
   ``revocation_unavailable`` when both are unreachable: fail closed);
7. the requested organisation is one of the professional's exercise situations
   (``unknown_organisation``): its national structure id, or its bare FINESS/SIRET/SIREN
   number; without one, the only structure of a professional who has one.

Memory and audit stay bounded whatever is sent: only certificates whose path reached our roots
are cached (``ByteLru``, bounded in bytes), and an audit record names a certificate by its
SHA-256 and bounded fields, never by the text of an untrusted certificate.

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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from cps_login.auditsink import AuditSink
from cps_login.challenges import Challenge, ChallengeStore
from cps_login.errors import ChallengeRefused, CredentialRefused, RevocationUnavailable
from cps_login.pathcheck import (
    DEFAULT_CACHE_BYTES,
    ENTRY_OVERHEAD,
    ByteLru,
    Holder,
    PathValidator,
    check_usage,
    holder_of,
    key_storage_of,
)
from cps_login.proof import login_message, verify_login_signature
from cps_login.revocation import RevocationChecker
from cps_login.tokens import ASSURANCE_BY_KEY_STORAGE, Assurance, IssuedToken, TokenIssuer
from pki.clock import Clock
from pki.situations import ExerciseSituation, pick, situations_for
from pki.store.db import Store

MAX_CHAIN = 4
# A CPS authentication certificate is about 1.5 KB and a signature at most 512 bytes (RSA-4096):
# anything much larger is not a login, and is refused before it is decoded any further.
MAX_CERTIFICATE_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 1024
_MEMO_SIZE = 200_000
_AUDIT_TEXT = 300            # characters of any free text in an audit record


@dataclass(frozen=True)
class LoginRequest:
    certificate: bytes                    # DER of the card's authentication certificate
    chain: tuple[bytes, ...]              # DER of intermediates the client sends (optional)
    challenge: bytes
    signature: bytes
    organisation_id: str | None = None
    client: str = ""                      # remote address, for the audit record
    broker: str | None = None             # the issuer URL the client signed for (diagnosis)

    @classmethod
    def from_json(cls, body: Mapping[str, Any], client: str = "") -> LoginRequest:
        """Parse the JSON body of ``POST /login``; any defect is ``malformed``."""
        def b64(value: object, limit: int = MAX_CERTIFICATE_BYTES) -> bytes:
            if not isinstance(value, str):
                raise CredentialRefused("malformed", "expected base64 strings")
            if len(value) > 4 * ((limit + 2) // 3):
                raise CredentialRefused("malformed", f"a field is over {limit} bytes")
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise CredentialRefused("malformed", "bad base64") from None

        chain = body.get("chain", [])
        if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
            raise CredentialRefused("malformed", "chain must be a list of at most 4")
        org = body.get("organisation_id", body.get("organisation"))
        if org is not None and (not isinstance(org, str) or len(org) > 64):
            raise CredentialRefused("malformed", "organisation_id must be a string")
        broker = body.get("broker")
        if broker is not None and (not isinstance(broker, str) or len(broker) > 512):
            raise CredentialRefused("malformed", "broker must be a URL string")
        return cls(certificate=b64(body.get("certificate")),
                   chain=tuple(b64(c) for c in chain), challenge=b64(body.get("challenge")),
                   signature=b64(body.get("signature"), MAX_SIGNATURE_BYTES),
                   organisation_id=org, client=client, broker=broker)


@dataclass(frozen=True)
class _Leaf:
    """What a card certificate's DER yields, whatever the login."""

    certificate: x509.Certificate
    public_key: CertificatePublicKeyTypes
    serial: str
    thumbprint: str
    size: int


@dataclass(frozen=True)
class _Known:
    """A certificate whose path reached our roots and passed the usage checks: what the next
    logins with it need, kept by the SHA-256 of its DER (a certificate never changes)."""

    leaf: _Leaf
    holder: Holder
    key_storage: str
    issuer: str


@dataclass(frozen=True)
class Authenticated:
    """A card login that passed every check, before (or without) a broker token: what the
    OpenID Connect provider needs of it (it signs tokens of its own)."""

    holder: Holder
    serial: str
    key_storage: str                      # where the certificate's key lives (card|hsm|software)
    organisation: ExerciseSituation | None
    assurance: Assurance
    auth_time: int
    thumbprint: str                       # x5t#S256 of the certificate
    certificate: bytes = b""              # its DER: checked again at each refresh of a session


@dataclass(frozen=True)
class LoginResult:
    token: IssuedToken
    holder: Holder
    serial: str
    key_storage: str = "software"         # where the certificate's key lives (card|hsm|software)
    organisation: ExerciseSituation | None = None

    @property
    def auth_time(self) -> int:
        return int(self.token.claims["auth_time"])


class LoginService:
    def __init__(self, *, store: Store, clock: Clock, challenges: ChallengeStore,
                 paths: PathValidator, revocation: RevocationChecker, tokens: TokenIssuer,
                 audit: AuditSink, issuer: str, audience: str, auth_policy_oid: str,
                 practice_ttl_seconds: float = 60.0, accept_software_keys: bool = True,
                 cache_max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
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
        self._accept_software = accept_software_keys
        # Both filled only for certificates of our CAs, both bounded in bytes.
        self._practices: ByteLru[str, tuple[float, Sequence[ExerciseSituation]]] = ByteLru(
            cache_max_bytes, _MEMO_SIZE)
        self._known: ByteLru[bytes, _Known] = ByteLru(cache_max_bytes, _MEMO_SIZE)

    def cache_sizes(self) -> dict[str, int]:
        """Bytes held by the caches (as counted against their budgets)."""
        return {"certificates": self._known.bytes, "practices": self._practices.bytes,
                "paths": self._paths.cache_bytes}

    def challenge(self, client: str | None = None) -> Challenge:
        """A fresh challenge for ``client`` (an HTTP client's address: each holds a bounded
        number; None for an in-process caller)."""
        return self._challenges.issue(client)

    def login(self, request: LoginRequest) -> LoginResult:
        """A token for a valid card login; CredentialRefused / ChallengeRefused otherwise.

        Every outcome, success or refusal, is in the audit chain before this returns.
        """
        facts: dict[str, Any] = {"client": request.client[:64]}
        try:
            checked = self._check(request, facts)
            result = self._issue(checked)
        except (CredentialRefused, ChallengeRefused, RevocationUnavailable) as exc:
            self._refused(exc, facts)
            raise
        facts.update(jti=result.token.claims["jti"], exp=result.token.claims["exp"])
        self._audit.record("login.success", result.holder.national_id, facts,
                           actor=result.holder.national_id)
        return result

    def authenticate(self, request: LoginRequest, *, purpose: str,
                     challenge_claimed: bool = False) -> Authenticated:
        """Every check and audit record of ``login``, without the broker token: for a caller
        that issues tokens of its own (the OpenID Connect provider, ``purpose`` "oidc"),
        which would otherwise sign a token in the HSM only to throw it away.

        ``challenge_claimed``: the caller drew ``request.challenge`` itself and has claimed it,
        once, already (a browser login transaction's own challenge); else it must be one of
        this broker's challenges, consumed here.

        Every outcome, success or refusal, is in the audit chain before this returns.
        """
        facts: dict[str, Any] = {"client": request.client[:64]}
        try:
            checked = self._check(request, facts, challenge_claimed)
        except (CredentialRefused, ChallengeRefused, RevocationUnavailable) as exc:
            self._refused(exc, facts)
            raise
        facts["for"] = purpose[:32]
        self._audit.record("login.success", checked.holder.national_id, facts,
                           actor=checked.holder.national_id)
        return checked

    def recheck(self, certificate: bytes) -> None:
        """A certificate that logged in earlier, checked again now, as a login checks it
        (path to our roots and validity at this moment, usage, live revocation): before a
        session it opened goes on (an OpenID Connect refresh). ``CredentialRefused`` (revoked,
        on hold, expired, no longer trusted...) or ``RevocationUnavailable`` (fail closed)."""
        digest = hashlib.sha256(certificate).digest()
        known = self._known.get(digest)
        leaf = known.leaf if known is not None else _parse_leaf(certificate)
        path = self._paths.validate(leaf.certificate, [], self._clock.now())
        if known is None:
            known = self._trusted(leaf, path.issuer)
            self._known.put(digest, known, leaf.size + ENTRY_OVERHEAD)
        self._assurance(known.key_storage)       # software keys refused since: refused now
        status = self._revocation.status(leaf.certificate, path.issuer)
        if status.status != "good":
            raise CredentialRefused(status.status, status.reason or "")

    def known_certificate(self, thumbprint: str) -> bytes | None:
        """The DER of a certificate this process has seen log in, by its x5t#S256 (a broker
        token's ``cnf``); None when it is not (or no longer) in the cache."""
        try:
            digest = base64.urlsafe_b64decode(thumbprint + "=" * (-len(thumbprint) % 4))
        except (ValueError, TypeError):
            return None
        known = self._known.get(digest)
        if known is None:
            return None
        return known.leaf.certificate.public_bytes(serialization.Encoding.DER)

    def refusal(self, request: LoginRequest, exc: ChallengeRefused) -> ChallengeRefused:
        """``exc``, audited as ``login`` audits a refused challenge (for a caller that checks
        challenges of its own: a browser login transaction's)."""
        facts: dict[str, Any] = {"client": request.client[:64]}
        if request.certificate:
            facts["certificate"] = hashlib.sha256(request.certificate).hexdigest()
        self._refused(exc, facts)
        return exc

    def _refused(self, exc: CredentialRefused | ChallengeRefused | RevocationUnavailable,
                 facts: dict[str, Any]) -> None:
        """The refusal's audit record."""
        facts["reason"] = getattr(exc, "reason", exc.code)
        if isinstance(exc, CredentialRefused) and exc.detail:
            facts["detail"] = exc.detail[:_AUDIT_TEXT]
        if isinstance(exc, RevocationUnavailable):
            facts["detail"] = exc.message[:_AUDIT_TEXT]
        self._audit.record("login.refused", facts.get("national_id", "unknown"), facts,
                           actor=facts.get("national_id", "anonymous"))

    def _check(self, request: LoginRequest, facts: dict[str, Any],
               challenge_claimed: bool = False) -> Authenticated:
        if not request.certificate or not request.signature:
            raise CredentialRefused("malformed", "certificate and signature are required")
        # Before any parsing: without one of our fresh challenges a request costs this lookup.
        if not challenge_claimed:
            self._challenges.consume(request.challenge)
        digest = hashlib.sha256(request.certificate).digest()
        facts["certificate"] = digest.hex()    # an untrusted certificate: by its digest only
        known = self._known.get(digest)
        leaf = known.leaf if known is not None else _parse_leaf(request.certificate)
        presented = _parse_chain(request.chain)
        facts["serial"] = leaf.serial
        message = login_message(request.challenge, self.issuer)
        if not verify_login_signature(leaf.public_key, message, request.signature):
            raise self._signature_refusal(request, leaf)
        path = self._paths.validate(leaf.certificate, presented, self._clock.now())
        if known is None:
            known = self._trusted(leaf, path.issuer)
            self._known.put(digest, known, leaf.size + ENTRY_OVERHEAD)
        holder = known.holder
        facts.update(issuer=known.issuer, national_id=holder.national_id,
                     key_storage=known.key_storage)
        assurance = self._assurance(known.key_storage)
        status = self._revocation.status(leaf.certificate, path.issuer)
        facts["revocation_source"] = status.source
        if status.ocsp_problem:
            facts["ocsp_problem"] = status.ocsp_problem[:200]
        if status.status != "good":
            raise CredentialRefused(status.status, status.reason or "")
        organisation = self._organisation(holder, request.organisation_id)
        if organisation is not None:
            facts["organisation_id"] = organisation.structure_id
        return Authenticated(holder, leaf.serial, known.key_storage, organisation, assurance,
                             int(self._clock.now().timestamp()), leaf.thumbprint,
                             request.certificate)

    def _issue(self, checked: Authenticated) -> LoginResult:
        """The broker's own access token for a checked login (signed in the HSM)."""
        extra: dict[str, Any] = {"cnf": {"x5t#S256": checked.thumbprint},
                                 "cps_key_location": checked.key_storage}
        organisation = checked.organisation
        if organisation is not None:
            extra["SubjectOrganization"] = organisation.structure_name
        token = self._tokens.issue(subject=checked.holder.national_id, audience=self.audience,
                                   profession_code=checked.holder.profession_code,
                                   organisation_id=organisation.structure_id
                                   if organisation is not None else None,
                                   assurance=checked.assurance, extra=extra)
        return LoginResult(token, checked.holder, checked.serial, checked.key_storage,
                           organisation)

    def _signature_refusal(self, request: LoginRequest, leaf: _Leaf) -> CredentialRefused:
        """``wrong_issuer`` when the card signed for the broker URL the client says it used and
        that is not our issuer (proven by the signature itself); ``bad_signature`` otherwise."""
        claimed = request.broker
        if claimed and claimed.rstrip("/") != self.issuer.rstrip("/"):
            try:
                other = login_message(request.challenge, claimed.rstrip("/"))
            except ValueError:
                return CredentialRefused("bad_signature")
            if verify_login_signature(leaf.public_key, other, request.signature):
                return CredentialRefused(
                    "wrong_issuer", f"the card signed for broker {claimed.rstrip('/')!r} but "
                                    f"this broker's issuer URL is {self.issuer!r}: log in with "
                                    f"--broker {self.issuer}")
        return CredentialRefused("bad_signature")

    def _trusted(self, leaf: _Leaf, issuer: x509.Certificate) -> _Known:
        """Usage checks and holder of a leaf whose path reached our roots."""
        check_usage(leaf.certificate, self._policy)
        return _Known(leaf, holder_of(leaf.certificate), key_storage_of(leaf.certificate),
                      issuer.subject.rfc4514_string()[:_AUDIT_TEXT])

    def _assurance(self, key_storage: str) -> Assurance:
        """What the token says of this login: a card login alone carries the card level."""
        if key_storage != "card" and not self._accept_software:
            raise CredentialRefused("software_key_refused", f"key storage {key_storage}")
        return ASSURANCE_BY_KEY_STORAGE.get(key_storage, ASSURANCE_BY_KEY_STORAGE["software"])

    def _organisation(self, holder: Holder, wanted: str | None) -> ExerciseSituation | None:
        rpps = holder.national_id[1:]
        now = time.monotonic()
        cached = self._practices.get(rpps)
        if cached is not None and cached[0] > now:
            practices = cached[1]
        else:
            with self._store.read() as session:
                practices = situations_for(session, rpps)
            weight = 256 + sum(256 + len(p.structure_name) for p in practices)
            self._practices.put(rpps, (now + self._practice_ttl, practices), weight)
        try:
            return pick(practices, wanted)
        except ValueError:
            raise CredentialRefused("unknown_organisation", str(wanted)) from None


# cryptography parses lazily and raises more than ValueError on a hostile DER (an issuer
# attribute of the wrong ASN.1 type is a TypeError): each is "malformed".
_PARSE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)


def _parse_leaf(der: bytes) -> _Leaf:
    try:
        cert = x509.load_der_x509_certificate(der)
        public_key = cert.public_key()
        serial = f"{cert.serial_number:X}"[:64]        # RFC 5280: 20 octets at most
    except _PARSE_ERRORS:
        raise CredentialRefused("malformed", "certificate does not parse") from None
    thumbprint = cert.fingerprint(hashes.SHA256())   # of the certificate's own DER encoding
    return _Leaf(cert, public_key, serial,
                 base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode(), len(der))


def _parse_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(c) for c in chain]
    except _PARSE_ERRORS:
        raise CredentialRefused("malformed", "chain certificate does not parse") from None
