"""Each role sees only its own secrets: the files of the others are hidden from its process.

On one machine every role of ``cps-admin serve`` runs as the same user, so file modes alone would
let a compromised public process read ``secrets/ca.pin``. Before a role starts, this module puts
the process (and the workers it will fork) in a private mount namespace where every secret the
role has no use for is covered:

* ``status``: no secret at all — an empty read-only tmpfs over ``secrets/`` and ``tokens/``, and
  the SoftHSM configuration replaced by an empty file.
* ``patient``: only its session and TOTP keys, and the messages key; no PIN, no token
  directory.
* ``broker``: only its own token PIN (``broker.pin``), its TLS key, and the messages key (the
  professionals read and write secure messages through its ``/api``).
* ``tsa``: only its own token PIN (``tsa.pin``).
* ``signer``: only the CA token PIN; never the root's or the broker's.

A file is hidden by bind-mounting ``/dev/null`` over it (reads give nothing, the real bytes are
out of reach); a directory by an empty tmpfs. This needs CAP_SYS_ADMIN (``serve`` run as root,
as ``make demo`` and CI do). Without it the role starts anyway, says once that its secrets are
only as separate as the file owners make them, and a deployment gives each role its own user
(docs/deployment.md).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pki.config import BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE, MESSAGE_KEY_FILE, Config

log = logging.getLogger("cps.confine")

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# The patient role's own keys (sessions, pages' CSRF/session, TOTP seeds at rest).
PATIENT_KEYS = ("secrets/login-session.key", "secrets/pages-session.key", "secrets/totp.key")


@dataclass(frozen=True)
class Confinement:
    applied: bool
    hidden: tuple[str, ...]          # paths relative to the home
    reason: str = ""


def message_key_file(config: Config) -> str:
    """The messages key as the home's ``login.json`` names it (``message_key_file``, read as
    plain JSON: pki does not import cps_login), else the default."""
    path = config.home / "login.json"
    try:
        raw = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        raw = {}
    name = raw.get("message_key_file") if isinstance(raw, dict) else None
    return str(name) if isinstance(name, str) and name else MESSAGE_KEY_FILE


def allowed_secrets(role: str, config: Config) -> frozenset[str] | None:
    """Home-relative secret files ``role`` may read; None: hide the whole folder."""
    hsm = config.hsm
    if role == "status":
        return None
    if role == "signer":
        return frozenset({hsm.user_pin_file})
    if role == "broker":
        return frozenset({hsm.broker_pin_file, BROKER_TLS_KEY_FILE, BROKER_TLS_CERT_FILE,
                          message_key_file(config)})
    if role == "patient":
        return frozenset({*PATIENT_KEYS, message_key_file(config)})
    if role == "tsa":
        return frozenset({hsm.tsa_pin_file})
    raise ValueError(f"unknown role {role!r}")


def plan(role: str, config: Config) -> tuple[list[Path], list[Path]]:
    """(files to cover with /dev/null, folders to cover with an empty tmpfs)."""
    home = config.home
    secrets_dir = home / "secrets"
    files: list[Path] = []
    dirs: list[Path] = []
    allowed = allowed_secrets(role, config)
    if allowed is None:
        dirs.append(secrets_dir)
    elif secrets_dir.is_dir():
        files.extend(p for p in sorted(secrets_dir.iterdir())
                     if p.is_file() and str(p.relative_to(home)) not in allowed)
    if role in ("status", "patient"):
        dirs.append(home / "tokens")
        conf = config.softhsm_conf_path()
        if conf is not None and conf.is_file():   # a role's own home may have none
            files.append(conf)
    return files, [d for d in dirs if d.is_dir()]


def confine(role: str, config: Config) -> Confinement:
    """Hide from this process every secret ``role`` does not need (see the module text)."""
    files, dirs = plan(role, config)
    rel = tuple(str(p.relative_to(config.home)) for p in (*dirs, *files))
    if not sys.platform.startswith("linux"):
        return Confinement(False, (), "not Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        reason = "no privilege for a mount namespace" if err == errno.EPERM else os.strerror(err)
        return Confinement(False, (), reason)
    # Our mounts must not propagate back to the host's namespace.
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    for folder in dirs:
        _mount(libc, "tmpfs", str(folder), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
               "size=4k,mode=0500")
    for path in files:
        _mount(libc, "/dev/null", str(path), None, MS_BIND, None)
    return Confinement(True, rel)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot hide {target} from this role: {os.strerror(err)}")


def confine_or_warn(role: str, config: Config) -> Confinement:
    """``confine``, logging what was hidden — or, once, why nothing could be."""
    result = confine(role, config)
    if result.applied:
        log.info("%s pid %d: hidden from this role: %s", role, os.getpid(),
                 ", ".join(result.hidden) or "(nothing to hide)")
    else:
        log.warning("%s pid %d: secrets of other roles NOT hidden (%s); give each role its own "
                    "user (docs/deployment.md)", role, os.getpid(), result.reason)
    return result
