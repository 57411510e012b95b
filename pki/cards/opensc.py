"""Running OpenSC (opensc-pkcs11.so, pkcs11-tool) against the software card.

Stock OpenSC (no ``OPENSC_CONF``) reads the card as the IAS-ECC CPS3 it answers as, through its
own ``iasecc`` driver: that is the default and needs nothing from here. Two configurations exist
for the other cases:

* :data:`OPENSC_CONF` maps the CPS3 ATR to OpenSC's PIV driver, which reads the card's second
  application, its PIV view (:func:`opensc_env`, :func:`use_opensc_conf`);
* :data:`OPENSC_UNBLOCK_CONF` keeps the iasecc driver and only turns on OpenSC's PKCS#11 PIN
  unblock (``C_SetPIN(PUK, new PIN)`` in a session not logged in), which OpenSC leaves off by
  default (:func:`opensc_unblock_env`).
"""

from __future__ import annotations

import os
from pathlib import Path

OPENSC_PKCS11 = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
OPENSC_CONF = Path(__file__).resolve().parent / "data" / "opensc-cps.conf"
OPENSC_UNBLOCK_CONF = Path(__file__).resolve().parent / "data" / "opensc-unblock.conf"


def stock_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for stock OpenSC: no ``OPENSC_CONF`` (the iasecc driver reads the card)."""
    env = dict(os.environ if base is None else base)
    env.pop("OPENSC_CONF", None)
    return env


def opensc_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an OpenSC process: maps the CPS3 ATR to OpenSC's PIV driver."""
    env = dict(os.environ if base is None else base)
    env["OPENSC_CONF"] = str(OPENSC_CONF)
    return env


def opensc_unblock_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which ``pkcs11-tool --unlock-pin --puk PUK`` unblocks the PIN."""
    env = dict(os.environ if base is None else base)
    env["OPENSC_CONF"] = str(OPENSC_UNBLOCK_CONF)
    return env


def use_opensc_conf() -> None:
    """Same for this process; call before the first load of opensc-pkcs11.so."""
    os.environ["OPENSC_CONF"] = str(OPENSC_CONF)
