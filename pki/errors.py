"""One error hierarchy for the whole product.

Every error carries a machine ``code`` (stable, used in JSON answers, audit records and tests)
and an HTTP status used by the web layer; the message names the field or object at fault.
"""

from __future__ import annotations

import datetime as dt


class PkiError(Exception):
    """Base of every error the product raises on purpose."""

    code = "error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(PkiError):
    code = "config"
    http_status = 500


class HomeNotFound(ConfigError):
    code = "home_not_found"


class HomeExists(ConfigError):
    code = "home_exists"
    http_status = 409


class HsmError(PkiError):
    code = "hsm"
    http_status = 503


class HsmPinIncorrect(HsmError):
    code = "hsm_pin_incorrect"


class HsmKeyNotFound(HsmError):
    code = "hsm_key_not_found"


class StoreError(PkiError):
    code = "store"
    http_status = 503


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class NotFound(PkiError):
    code = "not_found"
    http_status = 404


class Duplicate(PkiError):
    code = "duplicate"
    http_status = 409


class InvalidInput(PkiError):
    """Bad outside input: a malformed identifier, CSR, CSV row or request."""

    code = "invalid_input"


class InvalidIdentifier(InvalidInput):
    code = "invalid_identifier"


class UnknownProfession(InvalidInput):
    code = "unknown_profession"


class BadCsr(InvalidInput):
    code = "bad_csr"


class LintFailed(PkiError):
    """The to-be-signed object has pkilint findings: nothing reached the HSM."""

    code = "lint_failed"
    http_status = 500

    def __init__(self, what: str, findings: list[str]) -> None:
        super().__init__(f"{what} failed lint: " + "; ".join(findings))
        self.findings = findings


class InvalidTransition(PkiError):
    """A lifecycle change that the state machine forbids (revoke twice, release a revoked cert)."""

    code = "invalid_transition"
    http_status = 409


class RevokedError(PkiError):
    code = "revoked"
    http_status = 403

    def __init__(self, reason: str, revoked_at: dt.datetime) -> None:
        super().__init__(f"certificate revoked ({reason}) at {revoked_at.isoformat()}")
        self.reason = reason
        self.revoked_at = revoked_at


class NotAuthorised(PkiError):
    code = "not_authorised"
    http_status = 403

    def __init__(self, rule: str, message: str | None = None) -> None:
        super().__init__(message or f"refused by rule {rule}")
        self.rule = rule

