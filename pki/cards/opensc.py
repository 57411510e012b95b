"""Running OpenSC (opensc-pkcs11.so, pkcs11-tool) against the software card."""

from __future__ import annotations

import os
from pathlib import Path

OPENSC_PKCS11 = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
OPENSC_CONF = Path(__file__).resolve().parent / "data" / "opensc-cps.conf"


def opensc_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an OpenSC process: maps the CPS3 ATR to OpenSC's PIV driver."""
    env = dict(os.environ if base is None else base)
    env["OPENSC_CONF"] = str(OPENSC_CONF)
    return env


def use_opensc_conf() -> None:
    """Same for this process; call before the first load of opensc-pkcs11.so."""
    os.environ["OPENSC_CONF"] = str(OPENSC_CONF)
