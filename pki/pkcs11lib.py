"""Loading a PKCS#11 library once per process, whoever asks (CA key store or card backend).

python-pkcs11 keeps one library object per module path, and SoftHSM reads ``SOFTHSM2_CONF``
only at C_Initialize (and lists the tokens present then). When a process moves to another
SoftHSM configuration (tests give each home its own), the library is re-initialised; note that
this invalidates every open session on that module in the process.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import pkcs11

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library

_LOCK = threading.Lock()
_CONF: dict[str, str | None] = {}


def load(module: str) -> Library:
    """The initialised library for ``module``, under the current ``SOFTHSM2_CONF``."""
    with _LOCK:
        lib = pkcs11.lib(module)
        conf = os.environ.get("SOFTHSM2_CONF")
        if module in _CONF and _CONF[module] != conf:
            lib.reinitialize()
        _CONF[module] = conf
        return lib


def refresh(module: str) -> Library:
    """Re-initialise ``module`` so tokens created since the last C_Initialize become visible."""
    with _LOCK:
        lib = pkcs11.lib(module)
        lib.reinitialize()
        _CONF[module] = os.environ.get("SOFTHSM2_CONF")
        return lib
