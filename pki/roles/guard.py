"""A public role refuses to start in a process that could reach a CA key (docs/roles.md).

The check runs before the role's runner: ``cps-admin serve --role status|broker|patient|tsa``
exits with one ``error:`` line if this process has a token open other than the role's own (the
broker has ``CPS-BROKER``, the time-stamping authority ``CPS-TSA``), and ``status``
additionally if the PKCS#11 module is loaded at all — it serves pre-signed bytes and has no
business with a token.

This module imports nothing of PKCS#11: it asks ``pki.hsm`` only if something else already
imported it (no ``Hsm`` can be open otherwise).
"""

from __future__ import annotations

import sys
from collections.abc import Collection

from pki.errors import PkiError

PUBLIC_ROLES = ("status", "broker", "patient", "tsa")


class RoleRefused(PkiError):
    code = "role_refused"
    http_status = 500


def open_tokens() -> list[str]:
    """Labels of the tokens this process has an open ``pki.hsm.Hsm`` session on."""
    hsm = sys.modules.get("pki.hsm")
    if hsm is None:
        return []
    labels: list[str] = hsm.open_tokens()
    return labels


def refuse_key_holders(role: str, allowed_tokens: Collection[str] = ()) -> None:
    """Raise ``RoleRefused`` if public ``role`` must not start in this process."""
    if role not in PUBLIC_ROLES:
        raise ValueError(f"{role!r} is not a public role")
    held = [label for label in open_tokens() if label not in allowed_tokens]
    if held:
        raise RoleRefused(
            f"refusing to start the public {role} role: this process has the HSM token(s) "
            f"{', '.join(held)} open, and a public role must not be able to reach a CA key")
    if role == "status" and "pkcs11" in sys.modules:
        raise RoleRefused(
            "refusing to start the status role: the PKCS#11 module is loaded in this process "
            "(status serves pre-signed bytes and loads no PKCS#11 module)")
