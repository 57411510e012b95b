"""The OpenID Connect provider on Authlib's server components: our data and policy, their
protocol.

* grants: authorization code (+ OpenID Connect, + PKCE: S256 only, required of public
  clients), refresh token (rotated, bound to its client; a rotated token used again ends the
  login session; the certificate that logged in checked again at each refresh), CIBA poll
  mode (``cps_login.oidc.ciba``);
* client authentication: ``client_secret_basic``, ``private_key_jwt`` (RFC 7523),
  ``tls_client_auth`` (RFC 8705, the organisation certificate verified by the TLS layer),
  ``none`` for public clients;
* endpoints: revocation (RFC 7009), introspection (RFC 7662), RP-initiated logout.

Tokens: the access token is the broker's RFC 9068 JWT (``cps_login.tokens.TokenIssuer``, 120 s,
with ``client_id``, ``scope`` and ``sid``), the ID token an ES256 JWT signed in the broker's
token, the refresh token ``<family>.<secret>``: one record per login session in the shared
state (by the family's digest), holding the digest of the one current secret.

A login session (``sid``) is revoked by: a code used twice (RFC 6749 §4.1.2: the tokens it
gave), a rotated refresh token used again, a refresh token revoked (RFC 7009), the certificate
that logged in found no longer good at a refresh, RP-initiated logout. Introspection and userinfo
refuse every token of a revoked session; refresh tokens of it stop working.

Every time check uses the injected clock.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from collections import defaultdict
from dataclasses import replace
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from authlib.common.security import is_secure_transport
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import (
    InsecureTransportError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import request as flask_request
from joserfc import jwt as jose_jwt
from sqlalchemy import select

from cps_login.claims_psc import AuthContext
from cps_login.errors import CredentialRefused, TokenInvalid
from cps_login.oidc.claims import Claims
from cps_login.oidc.clients import Client, ClientRegistry
from cps_login.oidc.front import Answer, WebRequest, parse_pairs, payload_lists
from cps_login.oidc.state import SharedState, Value
from cps_login.oidc.subject import Subject, digest, half_hash, sign_jwt
from cps_login.oidc.subject import thumbprint as thumbprint_of
from cps_login.tokens import TokenValidator
from cps_login.web.broker import PEER_CERT_ENVIRON
from pki.clock import Clock
from pki.errors import PkiError
from pki.store.models import Professional

if TYPE_CHECKING:
    from cps_login.ratelimit import RateLimiter
    from cps_login.services import BrokerServices

CODE_TTL = 60                 # seconds a code may wait for the token request
CODE_KEEP = 600               # a used code is remembered this long (replay → revocation)
REFRESH_TTL = 8 * 3600        # a refresh token, and a login session, last at most this long
ID_TOKEN_TTL = 300


class _Record:
    """A code or refresh token from the shared state, as Authlib's models see it."""

    def __init__(self, key: str, value: Value) -> None:
        self.key = key
        self.value = value

    def get_redirect_uri(self) -> str:
        return str(self.value.get("redirect_uri") or "")

    def get_scope(self) -> str:
        return str(self.value["scope"])

    def get_nonce(self) -> str | None:
        return self.value.get("nonce")

    def get_auth_time(self) -> int:
        return int(self.value["subject"]["auth_time"])

    def get_acr(self) -> str:
        return str(self.value["subject"]["acr"])

    def get_amr(self) -> list[str]:
        return list(self.value["subject"]["amr"])

    @property
    def code_challenge(self) -> str | None:
        return self.value.get("code_challenge")

    @property
    def code_challenge_method(self) -> str | None:
        return self.value.get("code_challenge_method")

    def check_client(self, client: Client) -> bool:
        return bool(self.value["client_id"] == client.client_id)

    def is_expired(self) -> bool:
        return False             # expiry is checked against the clock when it is read

    def is_revoked(self) -> bool:
        return False

    @property
    def subject(self) -> Subject:
        return Subject.from_json(self.value["subject"])


class _AccessToken:
    """A validated access token (introspection, revocation)."""

    def __init__(self, token: str, claims: dict[str, Any], revoked: bool) -> None:
        self.token = token
        self.claims = claims
        self.revoked = revoked

    def check_client(self, client: Client) -> bool:
        return bool(self.claims.get("client_id") == client.client_id)

    def is_expired(self) -> bool:
        return False              # validated against the clock already

    def is_revoked(self) -> bool:
        return self.revoked


# --- PKCE: S256 only; required of public clients -------------------------------------------
class _Pkce(CodeChallenge):  # type: ignore[misc]
    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client = grant.request.client
        if client is not None and client.public and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required of public clients: code_challenge "
                                      "with code_challenge_method=S256",
                                      redirect_uri=redirect_uri)
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256",
                                      redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)


class _OpenID(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self._provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        key = f"nonce:{digest(request.payload.client_id + ' ' + nonce)}"
        return self._provider.state.get(key) is not None

    def generate_user_info(self, user: Subject, scope: str) -> dict[str, Any]:
        return self._provider.user_claims(user)

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        return self._provider.id_token(token, request)


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "private_key_jwt", "tls_client_auth",
                                   "none")
    provider: Provider

    def generate_authorization_code(self) -> str:
        # 288 bits; Authlib draws its 48 characters one system-random call each
        return secrets.token_urlsafe(36)

    def save_authorization_code(self, code: str, request: Any) -> None:
        self.provider.save_code(code, request)

    def query_authorization_code(self, code: str, client: Client) -> _Record | None:
        return self.provider.use_code(code, client)

    def delete_authorization_code(self, authorization_code: _Record) -> None:
        """Nothing: the code was marked used when it was read (and is kept, for replays)."""

    def authenticate_user(self, authorization_code: _Record) -> Subject:
        return authorization_code.subject


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _CodeGrant.TOKEN_ENDPOINT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    provider: Provider

    def authenticate_refresh_token(self, refresh_token: str) -> _Record | None:
        # Authlib has put the authenticated client on the request already
        return self.provider.use_refresh_token(refresh_token, self.request.client)

    def authenticate_user(self, refresh_token: _Record) -> Subject:
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token: _Record) -> None:
        """Nothing: ``save_token`` replaced it with the new one (compare-and-set)."""


class _PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client assertions. An assertion's ``exp`` may lie at most
    :data:`ASSERTION_MAX_LIFETIME` ahead, so its ``jti`` is remembered for as long as it could
    be presented again (a far-future ``exp`` would outlive the replay record)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    ASSERTION_MAX_LIFETIME = 300

    def __init__(self, provider: Provider) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self._provider = provider

    def get_audiences(self) -> list[str]:
        return [self._provider.issuer, self._provider.url("/oidc/token")]

    def extract_assertion(self, assertion: str) -> Any:
        # Read before any signature check: a header or payload of a thousand nested '['
        # raises RecursionError in the JSON decoder, which Authlib does not catch (a 500).
        try:
            return super().extract_assertion(assertion)
        except RecursionError:
            raise InvalidClientError(description="malformed client assertion") from None

    def resolve_client_public_key(self, client: Client) -> Any:
        from joserfc.jwk import KeySet

        if not client.jwks:
            raise InvalidClientError(description="no JWKS registered for this client")
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        exp = int(claims.get("exp", 0))
        ttl = max(1, exp - self._provider.now() + self.leeway + 60)  # exp is capped: see above
        return self._provider.state.put(f"jti:{digest(str(claims['sub']) + ' ' + jti)}",
                                        {"u": 1}, ttl)

    def verify_claims(self, claims: Any) -> None:
        registry = jose_jwt.JWTClaimsRegistry(
            now=self._provider.now, leeway=self.leeway, iss={"essential": True},
            sub={"essential": True}, aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True})
        try:
            registry.validate(claims)
        except Exception as exc:
            raise InvalidClientError(description=str(exc)) from None
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Issuer and Subject MUST match.")
        if int(claims["exp"]) > self._provider.now() + self.ASSERTION_MAX_LIFETIME + self.leeway:
            raise InvalidClientError(description=(
                f"client assertion expires too far ahead (exp at most "
                f"{self.ASSERTION_MAX_LIFETIME} s from now)"))
        if "jti" not in claims or not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="JWT ID missing or used before.")


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = _CodeGrant.TOKEN_ENDPOINT_AUTH_METHODS
    provider: Provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return self.provider.find_token(token_string, token_type_hint)

    def revoke_token(self, token: Any, request: Any) -> None:
        self.provider.revoke(token)


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ("client_secret_basic", "private_key_jwt", "tls_client_auth")
    provider: Provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return self.provider.find_token(token_string, token_type_hint)

    def check_permission(self, token: Any, client: Client, request: Any) -> bool:
        # relying services and resource servers, authenticated; a refresh token is its own
        # client's alone (an access token is shown to resource servers: any may ask)
        if client.public:
            return False
        return not isinstance(token, _Record) or token.check_client(client)

    def introspect_token(self, token: Any) -> dict[str, Any]:
        return self.provider.introspection(token)


class _EndSession(EndSessionEndpoint):  # type: ignore[misc]
    provider: Provider

    def get_server_jwks(self) -> dict[str, Any]:
        return self.provider.jwks()

    def validate_request(self, request: Any) -> Any:
        """Authlib's checks, and the hint must be an ID token of this provider: an access
        token (RFC 9068, also signed by this key and carrying ``sid``) is shown to every
        resource server, and must not let them end the professional's session."""
        validated = super().validate_request(request)
        claims = validated.id_token_claims
        if claims is not None and (not isinstance(claims.get("aud"), str)
                                   or "client_id" in claims or "scope" in claims
                                   or "at_hash" not in claims):
            raise InvalidRequestError("id_token_hint is not an ID token of this provider")
        return validated

    def end_session(self, end_session_request: Any) -> None:
        claims = end_session_request.id_token_claims or {}
        if claims.get("iss") != self.provider.issuer:
            return
        sid = claims.get("sid")
        if isinstance(sid, str):
            self.provider.revoke_session(sid, "logout")


class _Server(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server, also given requests other than Flask's current one (the
    provider's WSGI front's, the authorization request a login transaction stored, replayed at
    ``continue``). Its responses are ``Answer``s: the front sends them as they are, Flask
    routes make them Flask responses."""

    issuer = ""

    def create_oauth2_request(self, request: Any) -> Any:
        if isinstance(request, OAuth2Request):
            return request
        return OAuthRequest(flask_request, self.issuer)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Answer:
        if isinstance(payload, dict):
            answer = Answer.json(payload, status_code)
        else:
            answer = Answer(status_code, str(payload or "").encode())
        # one Content-Type, as Flask's response kept one: Authlib's own when it gives one
        extra = [(str(k), str(v)) for k, v in headers or ()]
        if any(k.lower() == "content-type" for k, _ in extra):
            answer.headers = [h for h in answer.headers if h[0].lower() != "content-type"]
        answer.headers.extend(extra)
        return answer


class _Payload(FlaskOAuth2Payload):  # type: ignore[misc]
    """Authlib's Flask payload rebuilds ``request.values`` at every parameter it reads (some
    fifty per token request): built once here."""

    @cached_property
    def data(self) -> Any:
        return self._request.values

    @cached_property
    def datalist(self) -> dict[str, list[str]]:
        # Authlib's walks the combined query + form keys and asks each list again
        return defaultdict(list, {k: list(v) for k, v in self.data.lists()})


@lru_cache(maxsize=16)
def _secure_transport(issuer: str, insecure_allowed: str | None) -> bool:
    """Authlib's transport rule for this issuer (every request's URI is the issuer's plus a
    path, so the answer is the issuer's), by the environment variable Authlib reads."""
    return bool(is_secure_transport(issuer + "/"))


def _request_init(request: OAuth2Request, method: str, uri: str, issuer: str,
                  headers: Any = None) -> None:
    """What ``OAuth2Request.__init__`` sets, with its transport check made once per issuer
    rather than by parsing each request's URI (tests/oidc/test_provider_requests.py holds the
    attributes equal to Authlib's, so that an Authlib release that adds one is noticed)."""
    if not _secure_transport(issuer, os.environ.get("AUTHLIB_INSECURE_TRANSPORT")):
        raise InsecureTransportError()
    request.method = method
    request.uri = uri
    request.headers = headers if headers is not None else {}
    request._body = None
    request.payload = None
    request.client = None
    request.auth_method = None
    request.user = None
    request.authorization_code = None
    request.refresh_token = None
    request.credential = None
    request._scope = None


class OAuthRequest(FlaskOAuth2Request):  # type: ignore[misc]
    """A Flask request as Authlib sees it. Its URI is the configured issuer's plus the path:
    Authlib refuses plain http off loopback by that URI (the issuer an operator set, not what
    a proxy in front made of the scheme), and werkzeug's ``request.url`` (an IRI rebuilt by
    quoting every part) is not computed three times a request."""

    def __init__(self, request: Any, issuer: str) -> None:
        _request_init(self, request.method, issuer + request.full_path.rstrip("?"), issuer,
                      headers=request.headers)
        self._request = request
        self.payload = _Payload(request)


class _StoredPayload(OAuth2Payload):  # type: ignore[misc]
    """Parameters as Authlib reads them: the first value of each (``data``), every value of
    each (``datalist``: Authlib refuses repeated PKCE parameters by it)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._data, self._datalist = payload_lists(pairs)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StoredRequest(OAuth2Request):  # type: ignore[misc]
    """An authorization request kept with its login transaction, replayed at ``continue``:
    read from its query string alone (no WSGI request is built for it), validated again by
    the same grant as when it came."""

    def __init__(self, query: str, issuer: str) -> None:
        _request_init(self, "GET", f"{issuer}/oidc/authorize?{query}", issuer)
        self.payload = _StoredPayload(parse_pairs(query))

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]

    @property
    def form(self) -> dict[str, str]:
        return {}


class WebOAuthRequest(OAuth2Request):  # type: ignore[misc]
    """A request of the provider's WSGI front as Authlib sees it: the issuer's URI plus the
    path (as ``OAuthRequest``), the query's parameters (and, unless it is a GET, the form's
    after them, as werkzeug's ``request.values`` combines them)."""

    def __init__(self, request: WebRequest, issuer: str) -> None:
        path = WebRequest._text(str(request.environ.get("PATH_INFO", "")))
        query = f"?{request.query_string}" if request.query_string else ""
        _request_init(self, request.method, issuer + path + query, issuer,
                      headers=request.headers)
        self.environ = request.environ
        pairs = request.arg_pairs
        if request.method != "GET":
            pairs = pairs + request.form_pairs
        self.payload = _StoredPayload(pairs)
        self._request = request

    @property
    def args(self) -> dict[str, str]:
        return payload_lists(self._request.arg_pairs)[0]

    @property
    def form(self) -> dict[str, str]:
        return payload_lists(self._request.form_pairs)[0]


class Provider:
    """The Authlib server and the storage hooks it calls, over the broker's services."""

    def __init__(self, services: BrokerServices, state: SharedState, clock: Clock,
                 tx_limiter: RateLimiter | None = None) -> None:
        self.services = services
        self.tx_limiter = tx_limiter
        self.state = state
        self.clock = clock
        self.issuer = services.config.issuer.rstrip("/")
        # The audience of the access tokens this provider gives relying services: not the
        # broker's (``config.audience``, the patient-record API), so that no validator of
        # the broker's own tokens takes them.
        self.audience = self.issuer + "/oidc"
        if self.audience == services.config.audience:
            raise ValueError("the OIDC audience must differ from the broker's")
        self.validator = TokenValidator(services.tokens.jwks(), issuer=services.config.issuer,
                                        audience=self.audience, clock=clock)
        self.clients = ClientRegistry(services.store)
        self._claims = Claims(services.store)
        server = _Server(query_client=self.clients.query, save_token=self.save_token)
        server.issuer = self.issuer
        server.register_token_generator("default", self.generate_token)
        server.register_client_auth_method("private_key_jwt", _PrivateKeyJwt(self))
        server.register_client_auth_method("tls_client_auth", self._tls_client_auth)
        for cls in (_CodeGrant, _RefreshGrant, _Revocation, _Introspection, _EndSession):
            cls.provider = self
        server.register_grant(_CodeGrant, [_Pkce(required=True), _OpenID(self)])
        server.register_grant(_RefreshGrant)
        from cps_login.oidc.ciba import CibaGrant

        CibaGrant.provider = self
        server.register_grant(CibaGrant, [_OpenID(self)])
        server.register_endpoint(_Revocation)
        server.register_endpoint(_Introspection)
        server.register_endpoint(_EndSession)
        self.server = server

    @cached_property
    def local_only(self) -> bool:
        """Whether the browser login's and the token endpoint's work all happens in this
        process, waiting on nothing: state and transaction bounds in memory, the store a local
        SQLite file (client and directory reads, cached), the token key in a software token
        loaded in the process (SoftHSM). Then the HTTP server may answer those requests on its
        event loop. Redis, PostgreSQL or a hardware HSM are waits: never on the loop."""
        from cps_login.oidc.state import MemoryState
        from cps_login.ratelimit import MemoryRateLimiter

        services = self.services
        return (isinstance(self.state, MemoryState)
                and (self.tx_limiter is None or isinstance(self.tx_limiter, MemoryRateLimiter))
                and services.store.engine.dialect.name == "sqlite"
                and services.config.pki.hsm.softhsm_conf is not None)

    # --- helpers -------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock.now().timestamp())

    def url(self, path: str) -> str:
        return self.issuer + path

    def jwks(self) -> dict[str, Any]:
        return self.services.tokens.jwks()

    def user_claims(self, subject: Subject) -> dict[str, Any]:
        return self._claims(subject)

    def subject_of_token(self, claims: dict[str, Any], sid: str,
                         certificate: bytes | None = None) -> Subject:
        """Who a broker access token speaks for, and how they authenticated (the token's own
        ``cps_key_location``: a software key stays a software key).

        The certificate that logged in (kept to check it again at each refresh) is the one
        the token's ``cnf`` names: ``certificate`` when its SHA-256 is that thumbprint, else
        the one this process saw log in with it, else none (no refresh token then)."""
        auth = AuthContext.from_token_claims(claims)
        cnf = claims.get("cnf")
        thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        der = b""
        if isinstance(thumbprint, str):
            if certificate and thumbprint_of(certificate) == thumbprint:
                der = certificate
            else:
                der = self.services.login.known_certificate(thumbprint) or b""
        roles = claims.get("SubjectRole") or []
        try:
            profession = int(roles[0]) if roles else None
        except (TypeError, ValueError):
            profession = None
        return self.with_names(Subject(
            sub=str(claims["sub"]), given_name="", family_name="", profession_code=profession,
            acr=auth.acr, amr=tuple(auth.amr), palier=auth.palier, auth_time=auth.auth_time,
            organisation=claims.get("SubjectOrganizationID"), key_storage=auth.key_location,
            sid=sid, cert=base64.b64encode(der).decode()))

    def with_names(self, subject: Subject) -> Subject:
        """The subject with the directory's names (a CIBA approval or userinfo starts from a
        token, which carries no names)."""
        if subject.given_name and subject.family_name:
            return subject
        with self.services.store.read() as session:
            row = session.execute(select(Professional.given_name, Professional.surname)
                                  .where(Professional.rpps == subject.rpps)).first()
        if row is None:
            return subject
        return replace(subject, given_name=row.given_name or "", family_name=row.surname or "")

    # --- tokens --------------------------------------------------------------------------
    def generate_token(self, grant_type: str, client: Client, user: Subject | None = None,
                       scope: str | None = None, expires_in: int | None = None,
                       include_refresh_token: bool = True) -> dict[str, Any]:
        assert user is not None
        scope = scope or "openid"
        # aud: the relying service and the provider's own endpoints — never the broker's
        # audience (the patient-record API, CIBA approval take the card-login token only).
        issued = self.services.tokens.issue(
            subject=user.sub, audience=self.audience,
            profession_code=user.profession_code, organisation_id=user.organisation,
            assurance=user.assurance,
            extra={"aud": [client.client_id, self.audience], "client_id": client.client_id,
                   "scope": scope, "sid": user.sid, "auth_time": user.auth_time,
                   "cps_key_location": user.key_storage})
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": issued.token,
                                 "expires_in": issued.expires_in, "scope": scope}
        # A refresh token only for a session whose certificate is known: each refresh checks
        # it again (revoked since, expired, no longer trusted: the session ends).
        if include_refresh_token and client.check_grant_type("refresh_token") and user.cert:
            # the secret part; save_token puts the session's family in front of it
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Keep the refresh token of a new session, or rotate the one a refresh presented.

        One record per session, whatever the number of refreshes (``rt:<family>``): the
        refresh token is ``<family>.<secret>``, the record holds the digest of the one secret
        that is current. Rotation replaces it in one compare-and-set; any other secret of the
        family presented later is a replay and ends the session (RFC 9700 §4.14.2). The record
        lives as long as the session may (8 h from the card login), never longer."""
        secret = token.get("refresh_token")
        if not secret:
            return
        old = getattr(request, "refresh_token", None)
        now = self.now()
        if isinstance(old, _Record):                      # a refresh: rotate
            family = old.value["family"]
            value = {**old.value, "current": digest(secret)}
            ttl = max(1, int(value["expires_at"]) - now)
            if not self.state.cas(old.key, old.value, value, ttl):
                # another refresh with the same token won the race: a replay
                self.revoke_session(old.subject.sid, "refresh_replay")
                raise InvalidGrantError("refresh token already used")
        else:
            subject: Subject = request.user
            family = secrets.token_urlsafe(18)
            expires_at = min(now + REFRESH_TTL, subject.auth_time + REFRESH_TTL)
            value = {"client_id": request.client.client_id, "scope": token["scope"],
                     "subject": subject.to_json(), "family": family,
                     "current": digest(secret), "expires_at": expires_at}
            if not self.state.put(f"rt:{digest(family)}", value, max(1, expires_at - now)):
                raise InvalidRequestError("refresh token collision")   # 2^-144: never
        # the dict Authlib answers with: the client gets the family with the secret
        token["refresh_token"] = f"{family}.{secret}"

    def id_token(self, token: dict[str, Any], request: Any) -> str:
        subject: Subject = request.user
        now = self.now()
        claims: dict[str, Any] = {
            **self.user_claims(subject),
            "iss": self.issuer, "aud": request.client.client_id,
            "azp": request.client.client_id, "iat": now, "exp": now + ID_TOKEN_TTL,
            "sid": subject.sid, "at_hash": half_hash(token["access_token"])}
        code = getattr(request, "authorization_code", None)
        if code is not None and code.get_nonce():
            claims["nonce"] = code.get_nonce()
        return sign_jwt(self.services.tokens.key, claims)

    # --- codes ---------------------------------------------------------------------------
    def save_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        subject: Subject = request.user
        nonce = data.get("nonce")
        value = {"client_id": request.client.client_id, "redirect_uri": data.get("redirect_uri"),
                 "scope": request.scope, "nonce": nonce, "subject": subject.to_json(),
                 "code_challenge": data.get("code_challenge"),
                 "code_challenge_method": data.get("code_challenge_method"),
                 "expires_at": self.now() + CODE_TTL, "used": False}
        if nonce:
            self.state.put(f"nonce:{digest(request.client.client_id + ' ' + nonce)}",
                           {"u": 1}, REFRESH_TTL)
        if not self.state.put(f"code:{digest(code)}", value, CODE_KEEP):
            raise InvalidRequestError("code collision")     # 2^-288: never

    def use_code(self, code: str, client: Client) -> _Record | None:
        """The code's record, marked used; None (invalid_grant) when unknown, another client's,
        expired, or used before — then the tokens it gave are revoked (RFC 6749 §4.1.2)."""
        if not isinstance(code, str) or len(code) > 256:
            return None
        key = f"code:{digest(code)}"
        value = self.state.get(key)
        if value is None or value["client_id"] != client.client_id:
            return None
        # used: only what a replay needs is kept (the client, the session to end), not the
        # subject and its certificate, nor the request
        used = {"client_id": value["client_id"], "used": True,
                "subject": {"sid": value["subject"]["sid"]}}
        if value["used"] or not self.state.cas(key, value, used, CODE_KEEP):
            self.revoke_session(value["subject"]["sid"], "code_replay")
            return None
        if self.now() >= value["expires_at"]:
            return None
        return _Record(key, value)

    # --- refresh tokens ------------------------------------------------------------------
    def use_refresh_token(self, refresh_token: str, client: Client) -> _Record | None:
        """The refresh token's session record when the token is its current one; None
        (invalid_grant) when unknown, another client's (left as it is), expired, of an ended
        session, or an earlier token of the session — a replay: the session ends (RFC 9700
        §4.14.2) — or when the certificate that logged in no longer passes (revoked, on hold,
        expired: the session ends). Nothing is written here: ``save_token`` rotates, once the
        new tokens are made (a refused scope, or the status tier away, 503, leaves the
        refresh token usable)."""
        found = self._refresh_record(refresh_token)
        if found is None:
            return None
        record, current = found
        if record.value["client_id"] != client.client_id:
            return None
        sid = record.subject.sid
        if not current:
            self.revoke_session(sid, "refresh_replay")
            return None
        if self.now() >= record.value["expires_at"] or self.session_revoked(sid):
            return None
        certificate = record.subject.certificate
        if not certificate:
            return None
        try:
            self.services.login.recheck(certificate)      # RevocationUnavailable: 503
        except CredentialRefused as exc:
            self.revoke_session(sid, f"certificate_{exc.reason}"[:64])
            return None
        return record

    def _refresh_record(self, token: object) -> tuple[_Record, bool] | None:
        """The session record a refresh token names, and whether the token is its current
        one; None when the token names no session."""
        if not isinstance(token, str) or len(token) > 256:
            return None
        family, dot, secret = token.partition(".")
        if not dot or not family or not secret:
            return None
        key = f"rt:{digest(family)}"
        value = self.state.get(key)
        if value is None or value.get("family") != family:
            return None
        current = value.get("current")
        return _Record(key, value), (isinstance(current, str)
                                     and hmac.compare_digest(current, digest(secret)))

    # --- sessions, revocation, introspection ---------------------------------------------
    def revoke_session(self, sid: str, why: str) -> None:
        """End a login session; audited once (a code or refresh token replayed again and again
        ends nothing more, and writes nothing more)."""
        if self.state.put(f"sid-revoked:{sid}", {"why": why}, REFRESH_TTL + 300):
            self.services.audit.record("oidc.session_revoked", sid, {"reason": why},
                                       actor="oidc")

    def session_revoked(self, sid: object) -> bool:
        return isinstance(sid, str) and self.state.get(f"sid-revoked:{sid}") is not None

    def validate_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a live access token of this provider; TokenInvalid otherwise."""
        claims = self.validator.validate(token)
        if self.clients.query(claims.get("client_id")) is None:
            raise TokenInvalid("token_revoked", "the client was removed")
        if self.state.get(f"jti-revoked:{digest(str(claims['jti']))}") is not None:
            raise TokenInvalid("token_revoked")
        if self.session_revoked(claims.get("sid")):
            raise TokenInvalid("token_revoked", "login session ended")
        return claims

    def find_token(self, token: str, hint: str | None) -> _AccessToken | _Record | None:
        """A live access token or current refresh token of this provider. The hint says
        where to look first, not only (RFC 7009 §2.1, RFC 7662 §2.1)."""
        if not isinstance(token, str) or len(token) > 8192:
            return None
        finders = ((self._live_refresh, self._live_access) if hint == "refresh_token"
                   else (self._live_access, self._live_refresh))
        for find in finders:
            found = find(token)
            if found is not None:
                return found
        return None

    def _live_access(self, token: str) -> _AccessToken | None:
        if token.count(".") != 2:
            return None
        try:
            return _AccessToken(token, self.validate_access_token(token), False)
        except TokenInvalid:
            return None

    def _live_refresh(self, token: str) -> _Record | None:
        found = self._refresh_record(token)
        if found is None or not found[1]:
            return None
        record = found[0]
        if self.now() >= record.value["expires_at"] or \
                self.session_revoked(record.subject.sid):
            return None
        return record

    def revoke(self, token: _AccessToken | _Record) -> None:
        if isinstance(token, _AccessToken):
            ttl = max(1, int(token.claims["exp"]) - self.now() + 60)
            self.state.put(f"jti-revoked:{digest(str(token.claims['jti']))}", {"u": 1}, ttl)
        else:
            # RFC 7009 §2.1: revoking a refresh token also ends the access tokens of its grant
            self.revoke_session(token.subject.sid, "revoked")

    def introspection(self, token: _AccessToken | _Record) -> dict[str, Any]:
        if isinstance(token, _AccessToken):
            return {"active": True, "token_type": "Bearer", **token.claims}
        value = token.value
        return {"active": True, "token_type": "refresh_token", "client_id": value["client_id"],
                "scope": value["scope"], "sub": value["subject"]["sub"],
                "exp": value["expires_at"], "iss": self.issuer,
                "sid": value["subject"]["sid"]}

    # --- tls_client_auth (RFC 8705 §2.1) -------------------------------------------------
    def _tls_client_auth(self, query_client: Any, request: Any) -> Client | None:
        client_id = request.payload.data.get("client_id")
        environ = getattr(request, "environ", None)
        if environ is None:
            environ = flask_request.environ
        der = environ.get(PEER_CERT_ENVIRON)
        if not client_id or not isinstance(der, bytes | bytearray):
            return None
        client = query_client(client_id)
        if client is None or client.auth_method != "tls_client_auth":
            return None
        try:
            cert = self.services.org_clients.check(bytes(der))
        except (CredentialRefused, PkiError, ValueError):
            raise InvalidClientError(description="client certificate refused") from None
        if cert.subject.rfc4514_string() != client.tls_subject_dn:
            raise InvalidClientError(description="client certificate subject does not match "
                                                 "the registered tls_client_auth_subject_dn")
        return client  # type: ignore[no-any-return]

