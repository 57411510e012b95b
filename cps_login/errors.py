"""Errors of the broker and the patient API, in the pki.errors hierarchy.

Credential refusals carry two codes: ``reason`` is the precise internal code that goes to the
audit chain; the outward answer is ``invalid_credentials`` and adds the reason only when
``disclose`` is true, i.e. when telling it is no enumeration oracle (see README: "What a
refused login says").
"""

from __future__ import annotations

from pki.errors import PkiError

# Reasons that may be told to the caller: each is only reached after the caller proved
# possession of the certificate's private key over a fresh challenge of ours.
DISCLOSED_REASONS = frozenset({"revoked", "hold", "expired", "not_yet_valid", "wrong_usage",
                               "status_unknown", "unknown_organisation", "wrong_issuer"})
# Reasons whose detail is told too: it names nothing the caller does not know already.
DETAILED_REASONS = frozenset({"wrong_issuer"})


class CredentialRefused(PkiError):
    code = "invalid_credentials"
    http_status = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"login refused: {reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail

    @property
    def disclose(self) -> bool:
        return self.reason in DISCLOSED_REASONS


class ChallengeRefused(PkiError):
    """The challenge is unknown, already used or expired: ask for a new one."""

    code = "invalid_challenge"
    http_status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(f"challenge refused: {reason}")
        self.reason = reason


class RevocationUnavailable(PkiError):
    """Neither OCSP nor the CRL gave a usable answer: the login fails closed."""

    code = "revocation_unavailable"
    http_status = 503


class CertificateRequired(PkiError):
    """A CIBA approval whose card certificate this broker cannot check: not in the body and
    not seen logging in here (another replica saw the card's login)."""

    code = "certificate_required"
    http_status = 401

    def __init__(self) -> None:
        super().__init__("approving needs the card's authentication certificate in the body "
                         '({"certificate": base64 DER}, the one the broker token is bound to) '
                         "so that its status is checked now; cps-login approve sends it")


class SharedStateUnavailable(PkiError):
    """Redis (challenges, rate limits shared by the replicas) does not answer: refuse now,
    work again as soon as it is back (the client reconnects by itself)."""

    code = "shared_state_unavailable"
    http_status = 503


class TokenInvalid(PkiError):
    code = "invalid_token"
    http_status = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"token refused: {reason}{': ' + detail if detail else ''}")
        self.reason = reason


class PatientAuthFailed(PkiError):
    """Unknown patient, wrong password and wrong TOTP code all look like this."""

    code = "invalid_credentials"
    http_status = 401

    def __init__(self, reason: str) -> None:
        super().__init__("sign-in refused")
        self.reason = reason


class RateLimited(PkiError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many attempts; retry in {retry_after} s")
        self.retry_after = retry_after
