"""Set up a SoftHSM token for a CPS home, without ever putting a PIN on a command line.

``softhsm2-util --init-token`` takes PINs in argv (visible in ``ps``) or from a terminal, so the
token is initialised through PKCS#11 itself (C_InitToken, C_InitPIN) in a short child process:
C_Finalize there cannot disturb the parent's python-pkcs11 sessions. PINs travel in 0600 files.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

from pki.config import write_private
from pki.errors import HsmError

CKF_TOKEN_INITIALIZED = 0x400
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_SO = 0


def write_softhsm_conf(conf_path: Path, token_dir: Path) -> None:
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Same shape as softhsm/softhsm2.conf.template in the repository.
    text = (f"# SoftHSM configuration for this CPS home (generated)\n"
            f"directories.tokendir = {token_dir.resolve()}\n"
            f"objectstore.backend = file\n"
            f"log.level = ERROR\n"
            f"slots.removable = false\n")
    write_private(conf_path, text, mode=0o600)


def init_token(module: str, softhsm_conf: Path, label: str, so_pin_file: Path,
               user_pin_file: Path) -> None:
    """Initialise a fresh token labelled ``label`` in the first free slot."""
    env = {"SOFTHSM2_CONF": str(softhsm_conf.resolve()), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "pki.ca.softhsm", module, label, str(so_pin_file.resolve()),
         str(user_pin_file.resolve())],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise HsmError(f"token initialisation failed: {proc.stderr.strip() or proc.returncode}")


def _check(rv: int, what: str) -> None:
    if rv != 0:
        raise HsmError(f"{what} failed: CKR 0x{rv:08x}")


def _init_in_child(module: str, label: str, so_pin: bytes, user_pin: bytes) -> None:
    lib = ctypes.CDLL(module)
    ulong = ctypes.c_ulong
    _check(lib.C_Initialize(None), "C_Initialize")
    try:
        count = ulong(0)
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)), "C_GetSlotList")
        slots = (ulong * max(count.value, 1))()
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)), "C_GetSlotList")
        info = ctypes.create_string_buffer(512)   # CK_TOKEN_INFO; flags follow 96 label bytes
        free_slot = None
        for i in range(count.value):
            _check(lib.C_GetTokenInfo(slots[i], info), "C_GetTokenInfo")
            flags = ulong.from_buffer_copy(info.raw[96:96 + ctypes.sizeof(ulong)]).value
            if not flags & CKF_TOKEN_INITIALIZED:
                free_slot = slots[i]
                break
        if free_slot is None:
            raise HsmError("no free slot to initialise a token in")
        padded = label.encode("utf-8")[:32].ljust(32, b" ")
        _check(lib.C_InitToken(free_slot, so_pin, ulong(len(so_pin)), padded), "C_InitToken")
        session = ulong(0)
        _check(lib.C_OpenSession(free_slot, ulong(CKF_SERIAL_SESSION | CKF_RW_SESSION), None,
                                 None, ctypes.byref(session)), "C_OpenSession")
        _check(lib.C_Login(session, ulong(CKU_SO), so_pin, ulong(len(so_pin))), "C_Login(SO)")
        _check(lib.C_InitPIN(session, user_pin, ulong(len(user_pin))), "C_InitPIN")
        lib.C_Logout(session)
        lib.C_CloseSession(session)
    finally:
        lib.C_Finalize(None)


if __name__ == "__main__":
    try:
        _module, _label, _so_file, _user_file = sys.argv[1:5]
        _init_in_child(_module, _label, Path(_so_file).read_bytes().strip(),
                       Path(_user_file).read_bytes().strip())
    except (HsmError, OSError, ValueError) as _exc:
        print(f"error: {_exc}", file=sys.stderr)
        sys.exit(1)
