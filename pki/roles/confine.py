"""Each role sees only its own secrets: the files of the others are hidden from its process.

On one machine every role of ``cps-admin serve`` runs as the same user, so file modes alone would
let a compromised public process read ``secrets/ca.pin``. Before a role starts, this module puts
the process (and the workers it will fork) in a private mount namespace where every secret the
role has no use for is covered:

* ``status``: no secret at all — an empty read-only tmpfs over ``secrets/`` and ``tokens/``, and
  the SoftHSM configuration replaced by an empty file.
* ``patient``: only its session and TOTP keys, and the messages key; no PIN, no token
  directory. These web-role keys are found where the home's ``login.json`` puts them (a custom
  ``totp_key_file`` outside ``secrets/`` is hidden from every other role too).
* ``broker``: only its own token PIN (``broker.pin``), its TLS key, and the messages key (the
  professionals read and write secure messages through its ``/api``).
* ``tsa``: only its own token PIN (``tsa.pin``).
* ``signer``: only the CA token PIN; never the root's or the broker's.

A file is hidden by bind-mounting ``/dev/null`` over it (reads give nothing, the real bytes are
out of reach); a directory by an empty tmpfs. Only a file that exists can be covered: a secret a
role made after another was confined would stay in that one's reach. So every web-role secret
is made first — by the supervisor before it starts any child, and by ``confine``'s ``prepare``
step (``serve --role X``: ``LoginConfig.create_role_secrets``) once the namespace exists,
before anything is hidden; a web secret still missing then is named in the log.

This needs CAP_SYS_ADMIN (``serve`` run as root, as ``make demo`` and CI do). Without it the
role starts anyway, says once that its secrets are only as separate as the file owners make
them, and a deployment gives each role its own user (docs/deployment.md); ``prepare`` is then
not run either, so no role makes another's key with its own owner.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pki.config import BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE, MESSAGE_KEY_FILE, Config

log = logging.getLogger("cps.confine")

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# Defaults of the web roles' secret files (cps_login.config.LoginConfig names the same).
SESSION_KEY_FILE = "secrets/login-session.key"
PAGES_SESSION_KEY_FILE = "secrets/pages-session.key"   # cps_login.pages.security.SECRET_FILE
TOTP_KEY_FILE = "secrets/totp.key"


@dataclass(frozen=True)
class Confinement:
    applied: bool
    hidden: tuple[str, ...]          # paths relative to the home
    reason: str = ""
    missing: tuple[str, ...] = ()    # web secrets not made yet: they could not be covered


@dataclass(frozen=True)
class WebSecrets:
    """The secret files of the web roles, home-relative (or absolute) as login.json names them:
    ``patient`` the patient role's own keys, ``shared`` those of the patient and broker roles
    (the messages key)."""

    patient: tuple[str, ...]
    shared: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return (*self.patient, *self.shared)


def _login_settings(config: Config) -> dict[str, object]:
    path = config.home / "login.json"
    try:
        raw = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        raw = {}
    return raw if isinstance(raw, dict) else {}


def web_secrets(config: Config) -> WebSecrets:
    """The web roles' secret files as the home's ``login.json`` names them (read as plain JSON:
    pki does not import cps_login; ``serve`` passes ``LoginConfig.web_secrets()`` itself)."""
    raw = _login_settings(config)

    def setting(name: str, default: str) -> str:
        value = raw.get(name)
        return value if isinstance(value, str) and value else default

    return WebSecrets(
        patient=(setting("session_key_file", SESSION_KEY_FILE), PAGES_SESSION_KEY_FILE,
                 setting("totp_key_file", TOTP_KEY_FILE)),
        shared=(setting("message_key_file", MESSAGE_KEY_FILE),))


def message_key_file(config: Config) -> str:
    """The messages key as the home's ``login.json`` names it (``message_key_file``), else the
    default."""
    return web_secrets(config).shared[0]


def allowed_secrets(role: str, config: Config,
                    web: WebSecrets | None = None) -> frozenset[str] | None:
    """Home-relative secret files ``role`` may read; None: hide the whole folder."""
    hsm = config.hsm
    web = web or web_secrets(config)
    if role == "status":
        return None
    if role == "signer":
        return frozenset({hsm.user_pin_file})
    if role == "broker":
        return frozenset({hsm.broker_pin_file, BROKER_TLS_KEY_FILE, BROKER_TLS_CERT_FILE,
                          *web.shared})
    if role == "patient":
        return frozenset(web.all())
    if role == "tsa":
        return frozenset({hsm.tsa_pin_file})
    raise ValueError(f"unknown role {role!r}")


def _norm(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _under(path: Path, folder: Path) -> bool:
    return _norm(path).startswith(_norm(folder).rstrip(os.sep) + os.sep)


def plan(role: str, config: Config,
         web: WebSecrets | None = None) -> tuple[list[Path], list[Path]]:
    """(files to cover with /dev/null, folders to cover with an empty tmpfs)."""
    home = config.home
    secrets_dir = home / "secrets"
    web = web or web_secrets(config)
    files: list[Path] = []
    dirs: list[Path] = []
    allowed = allowed_secrets(role, config, web)
    own = set() if allowed is None else {_norm(home / name) for name in allowed}
    if allowed is None:
        dirs.append(secrets_dir)
    elif secrets_dir.is_dir():
        files.extend(p for p in sorted(secrets_dir.iterdir())
                     if p.is_file() and _norm(p) not in own)
    if role in ("status", "patient"):
        dirs.append(home / "tokens")
        conf = config.softhsm_conf_path()
        if conf is not None and conf.is_file():   # a role's own home may have none
            files.append(conf)
    dirs = [d for d in dirs if d.is_dir()]
    # A web secret login.json keeps elsewhere than secrets/ (a custom totp_key_file, ...).
    listed = {_norm(p) for p in files}
    for name in web.all():
        path = home / name
        if (path.is_file() and _norm(path) not in own and _norm(path) not in listed
                and not any(_under(path, d) for d in dirs)):
            files.append(path)
            listed.add(_norm(path))
    return files, dirs


def _relative(path: Path, home: Path) -> str:
    try:
        return str(path.relative_to(home))
    except ValueError:
        return str(path)


def confine(role: str, config: Config, web: WebSecrets | None = None,
            prepare: Callable[[], None] | None = None) -> Confinement:
    """Hide from this process every secret ``role`` does not need (see the module text).

    ``web``: the web roles' secret files (default: from login.json); ``prepare``: run once the
    private namespace exists, before anything is hidden — where ``serve`` makes every web-role
    secret still missing, so that it can be covered (not run when no namespace can be had)."""
    if not sys.platform.startswith("linux"):
        return Confinement(False, (), "not Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        reason = "no privilege for a mount namespace" if err == errno.EPERM else os.strerror(err)
        return Confinement(False, (), reason)
    # Our mounts must not propagate back to the host's namespace.
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    if prepare is not None:
        prepare()      # same files as the host's: only mounts are private to this process
    web = web or web_secrets(config)
    files, dirs = plan(role, config, web)
    for folder in dirs:
        _mount(libc, "tmpfs", str(folder), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
               "size=4k,mode=0500")
    for path in files:
        _mount(libc, "/dev/null", str(path), None, MS_BIND, None)
    own = allowed_secrets(role, config, web) or frozenset()
    missing = tuple(name for name in web.all()
                    if name not in own and not (config.home / name).exists()
                    and not any(_under(config.home / name, d) for d in dirs))
    return Confinement(True, tuple(_relative(p, config.home) for p in (*dirs, *files)),
                       missing=missing)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot hide {target} from this role: {os.strerror(err)}")


def confine_or_warn(role: str, config: Config, web: WebSecrets | None = None,
                    prepare: Callable[[], None] | None = None) -> Confinement:
    """``confine``, logging what was hidden — or, once, why nothing could be."""
    result = confine(role, config, web, prepare)
    if result.applied:
        log.info("%s pid %d: hidden from this role: %s", role, os.getpid(),
                 ", ".join(result.hidden) or "(nothing to hide)")
        if result.missing:
            log.warning("%s pid %d: not made yet, so not hidden if another role makes it "
                        "later: %s", role, os.getpid(), ", ".join(result.missing))
    else:
        log.warning("%s pid %d: secrets of other roles NOT hidden (%s); give each role its own "
                    "user (docs/deployment.md)", role, os.getpid(), result.reason)
    return result
