"""A role process gives up every privilege that could undo its confinement (``harden``).

``pki.roles.confine`` hides the other roles' secrets in a private mount namespace, but a process
running as root with every capability could simply ``umount`` the covers (CAP_SYS_ADMIN), read
another role's files through ``/proc/<pid>/root`` (same uid, CAP_SYS_PTRACE or a dumpable
target), or ``setns`` into the signer's namespace. So right after the namespace is set up and
before the role serves, the process:

* remounts read-only (a bind mount in its own namespace) what no role changes while serving:
  ``config.json``, ``login.json``, the SoftHSM configuration, ``ca/`` and ``tsa/``. The home
  itself stays writable: the SQLite store and its ``-wal``/``-shm`` files, the signer's socket
  and lease;
* drops every capability: the bounding set (so no later ``execve`` gets any back), the ambient
  set, then effective, permitted and inheritable. Root keeps reading its own files (``0600``/
  ``0700``, owned by uid 0) by owner rights, without CAP_DAC_OVERRIDE. CAP_NET_BIND_SERVICE is
  kept only when the role was asked to listen on a port below
  ``net.ipv4.ip_unprivileged_port_start`` (the roles bind after this step; deployments put
  HAProxy on 80/443 and the roles on high ports, so normally nothing is kept);
* sets ``no_new_privs`` (no set-uid or file capability can give privileges back);
* becomes non-dumpable: another process of the same uid cannot read its memory (the signer
  holds the CA PIN), ``/proc/PID/mem``, ``environ`` or ``root``. Fork keeps it: gunicorn
  workers inherit all of the above.

Without its capabilities a role also cannot reach a process that has more (the supervisor):
the kernel allows ``/proc/PID/root`` of a same-uid process only when the target's permitted
capabilities are a subset of the caller's.

As another user than root there is nothing to drop but ``no_new_privs`` is still set; the
separation then comes from each role's own user (docs/deployment.md), and the role says so once
(``confine_or_warn`` already warned that nothing was hidden).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pki.config import Config

log = logging.getLogger("cps.confine")

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_NET_BIND_SERVICE = 10
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
READ_ONLY = ("config.json", "login.json", "ca", "tsa")  # home-relative; softhsm2.conf added


@dataclass(frozen=True)
class Hardening:
    applied: bool                       # capabilities dropped, not dumpable
    kept: tuple[str, ...] = ()          # capabilities kept
    read_only: tuple[str, ...] = ()     # remounted read-only
    reason: str = ""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def needs_low_port(ports: Iterable[int | None]) -> bool:
    """True when binding one of ``ports`` needs CAP_NET_BIND_SERVICE."""
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    return any(port is not None and 0 < port < start for port in ports)


def harden(role: str, config: Config, *, confined: bool,
           ports: Iterable[int | None] = ()) -> Hardening:
    """Give up what could undo the confinement (see the module text); ``confined``: this
    process is in the private namespace ``confine`` made (read-only remounts only there)."""
    if not sys.platform.startswith("linux"):
        return Hardening(False, reason="not Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    read_only = _remount_read_only(libc, config) if confined else ()
    keep = (CAP_NET_BIND_SERVICE,) if needs_low_port(ports) else ()
    if os.geteuid() != 0:
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        return Hardening(False, read_only=read_only, reason=f"uid {os.geteuid()}, not root")
    _drop_bounding(libc, keep)
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _capset(libc, keep)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    _prctl(libc, PR_SET_DUMPABLE, 0)        # last: a credential change could reset it
    return Hardening(True, tuple("CAP_NET_BIND_SERVICE" for _ in keep), read_only)


def _remount_read_only(libc: ctypes.CDLL, config: Config) -> tuple[str, ...]:
    home = config.home
    targets = [home / name for name in READ_ONLY]
    conf = config.softhsm_conf_path()
    if conf is not None:
        targets.append(conf)
    done = []
    for path in targets:
        if not path.exists():
            continue
        # MS_REC: a plain bind of a folder would drop the covers mounted inside it.
        _mount(libc, path, MS_BIND | MS_REC)
        # Keep nosuid/nodev/noexec of the mount underneath; the flags given replace them.
        kept = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(libc, path, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
        done.append(str(path.relative_to(home)) if path.is_relative_to(home) else str(path))
    return tuple(done)


def _mount(libc: ctypes.CDLL, path: Path, flags: int) -> None:
    target = os.fsencode(path)
    if libc.mount(target, target, None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot make {path} read-only for this role: {os.strerror(err)}")


def _drop_bounding(libc: ctypes.CDLL, keep: tuple[int, ...]) -> None:
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 63          # older kernels: EINVAL past the last one, ignored below
    for cap in range(last + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                # No CAP_SETPCAP (a unit that bounded root): still safe, as no_new_privs keeps
                # an execve from getting more than the (emptied) permitted set.
                return
            if err != errno.EINVAL:          # EINVAL: no such capability on this kernel
                raise OSError(err, f"cannot drop capability {cap}: {os.strerror(err)}")


def _capset(libc: ctypes.CDLL, keep: tuple[int, ...]) -> None:
    """Effective and permitted = ``keep``, inheritable empty (both 32-bit halves)."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in keep:
        bit = 1 << (cap % 32)
        data[cap // 32].effective |= bit
        data[cap // 32].permitted |= bit
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot drop this role's capabilities: {os.strerror(err)}")


def _prctl(libc: ctypes.CDLL, option: int, value: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def harden_or_warn(role: str, config: Config, *, confined: bool,
                   ports: Iterable[int | None] = ()) -> Hardening:
    """``harden``, logging one line on what this role process gave up."""
    result = harden(role, config, confined=confined, ports=ports)
    if result.applied:
        caps = ("only " + ", ".join(result.kept)) if result.kept else "no capabilities"
        log.info("%s pid %d: %s, no new privileges, not dumpable; read-only: %s", role,
                 os.getpid(), caps, ", ".join(result.read_only) or "(nothing)")
    else:
        log.info("%s pid %d: no new privileges; nothing else to give up (%s)", role,
                 os.getpid(), result.reason)
    return result
