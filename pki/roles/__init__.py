"""One runner per role of `cps-admin serve` (docs/roles.md), and the supervisor that starts them.

Imports nothing: ``pki.roles.status`` must stay free of PKCS#11, ``pki.roles.signer`` opens it.
"""

from __future__ import annotations

from pathlib import Path


def signer_socket(home: Path) -> Path:
    """Where the signer listens for the status replicas (``HOME/run/signer.sock``)."""
    return home / "run" / "signer.sock"
