"""A role process keeps no privilege that would let it undo its confinement (issue 13).

Before: every ``serve --role X`` ran as uid 0 with every capability, NoNewPrivs 0 and dumpable,
so code running in the status role could ``umount`` the tmpfs over ``secrets/``
(CAP_SYS_ADMIN), read the signer's files through ``/proc/<signer>/root`` (same uid, dumpable,
CAP_SYS_PTRACE), ``setns`` into the signer's mount namespace, or rewrite ``config.json``.
Each attack is tried twice from a probe process confined as ``status``: without ``harden`` (the
control, which must succeed, so the test can fail) and with it (which must be refused).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.ca.hierarchy import init_home
from tests.roles.processes import descendants, serve

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="capabilities and a mount namespace need root (CI is)")

BIN = Path(sys.executable).parent
NET_BIND_SERVICE = 1 << 10

ATTACK = """
import ctypes, errno, os, sys
from pathlib import Path
from pki.config import Config
from pki.roles.confine import confine
home, signer, supervisor = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = Config.load(home)
assert confine("status", config).applied
libc = ctypes.CDLL(None, use_errno=True)
held = os.open(f"/proc/{signer}/ns/mnt", os.O_RDONLY)   # the strongest case: an fd from before
if sys.argv[4] == "harden":
    from pki.roles.privileges import harden
    harden("status", config, confined=True)

def outcome(attempt):
    try:
        attempt()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))

def check(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def read_pin(pid):
    def attempt():
        data = Path(f"/proc/{pid}/root{home}/secrets/ca.pin").read_bytes()
        assert data.strip(), "empty"
    return attempt

def write_config():
    os.close(os.open(home / "config.json", os.O_WRONLY | os.O_APPEND))

print("signer-root", outcome(read_pin(signer)))
print("supervisor-root", outcome(read_pin(supervisor)))
print("signer-ns-open", outcome(lambda: os.close(os.open(f"/proc/{signer}/ns/mnt", os.O_RDONLY))))
print("write-config", outcome(write_config))
print("umount", outcome(lambda: check(libc.umount2(os.fsencode(home / "secrets"), 2))))
print("setns", outcome(lambda: check(libc.setns(held, 0x00020000))))
"""


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = (tmp_path_factory.mktemp("priv") / "home").resolve()
    init_home(home, key_type="p256")
    (home / "secrets" / "login-session.key").write_text("00" * 32 + "\n")
    return home


@pytest.fixture(scope="module")
def served(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """``cps-admin serve`` (every role, as the supervisor starts them); role -> pid."""
    with serve(home, tmp_path_factory.mktemp("priv-log") / "serve.log") as pids:
        yield pids


def test_every_role_process_and_worker_holds_no_capability(served: dict[str, int]) -> None:
    for role in ("signer", "status", "broker", "patient"):
        pids = descendants(served[role])
        if role in ("broker", "patient"):
            assert len(pids) > 1, f"{role}: no gunicorn worker found"
        for pid in pids:
            status = _status(pid)
            for field in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
                # On loopback ports above 1023 nothing is kept, not even NET_BIND_SERVICE.
                assert int(status[field], 16) == 0, (role, pid, field, status[field])
            assert status["NoNewPrivs"] == "1", (role, pid)
    # The supervisor routes, it is not a role: it keeps its privileges (it holds no secret).
    assert int(_status(served["supervisor"])["CapEff"], 16) != 0


def _attack(home: Path, served: dict[str, int], mode: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", ATTACK, str(home), str(served["signer"]),
                           str(served["supervisor"]), mode],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_the_attacks_work_from_an_unhardened_status_process(home: Path,
                                                             served: dict[str, int]) -> None:
    """The control: the same probe with today's privileges gets every secret."""
    seen = _attack(home, served, "control")
    assert seen == {"signer-root": "ok", "supervisor-root": "ok", "signer-ns-open": "ok",
                    "write-config": "ok", "umount": "ok", "setns": "ok"}


def test_a_hardened_status_process_cannot_undo_its_confinement(home: Path,
                                                               served: dict[str, int]) -> None:
    seen = _attack(home, served, "harden")
    assert seen["umount"] == "EPERM"                  # no CAP_SYS_ADMIN
    assert seen["signer-root"] == "EACCES"            # the signer is not dumpable
    assert seen["supervisor-root"] == "EACCES"        # it holds capabilities the probe has not
    assert seen["signer-ns-open"] == "EACCES"
    assert seen["setns"] == "EPERM"                   # even with an fd opened before
    assert seen["write-config"] == "EROFS"            # config.json is a read-only mount


HARDENED = """
import ctypes, os, sqlite3, sys
from pathlib import Path
from pki.config import Config
from pki.roles.confine import confine
from pki.roles.privileges import harden
home, role = Path(sys.argv[1]), sys.argv[2]
config = Config.load(home)
harden(role, config, confined=confine(role, config).applied)
libc = ctypes.CDLL(None, use_errno=True)
print("dumpable", libc.prctl(3, 0, 0, 0, 0))
print("config", bool(config.to_json()))
print("ca", len(list((home / "ca").glob("*.pem"))))
for name in ("ca.pin", "root.pin"):
    try:
        print(name, "READABLE" if (home / "secrets" / name).read_bytes() else "empty")
    except FileNotFoundError:
        print(name, "absent")
try:
    (home / "ca" / "x.pem").write_text("x")
    print("ca-write", "ok")
except OSError as exc:
    print("ca-write", exc.errno)
db = sqlite3.connect(home / "cps.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t_harden (x)")
db.execute("INSERT INTO t_harden VALUES (1)")
db.commit()
print("sqlite", db.execute("SELECT count(*) FROM t_harden").fetchone()[0] > 0)
"""


@pytest.mark.parametrize("role", ["signer", "status"])
def test_after_harden_the_role_reads_its_files_and_writes_the_store(tmp_path: Path,
                                                                    role: str) -> None:
    """Root-owned 0600/0700 files are read by owner rights (no CAP_DAC_OVERRIDE needed); the
    read-only remounts keep the covers over the hidden secrets; SQLite (WAL) still writes."""
    import errno

    copy = tmp_path.resolve() / "home"
    init_home(copy, key_type="p256")
    done = subprocess.run([sys.executable, "-c", HARDENED, str(copy), role],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert seen["dumpable"] == "0"
    assert seen["config"] == "True" and int(seen["ca"]) >= 3
    assert seen["ca-write"] == str(errno.EROFS)
    hidden = "empty" if role == "signer" else "absent"     # status: a tmpfs over secrets/
    assert seen["root.pin"] == hidden
    assert seen["ca.pin"] == ("READABLE" if role == "signer" else hidden)
    assert seen["sqlite"] == "True"
    assert not (copy / "ca" / "x.pem").exists()


WITHOUT_SETPCAP = """
import ctypes, sys
from pathlib import Path
from pki.config import Config
from pki.roles import privileges as p
libc = ctypes.CDLL(None, use_errno=True)
def status():
    lines = open("/proc/self/status").read().splitlines()
    return dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
# Root bounded by its unit: what it has but CAP_SETPCAP (8), so no bounding-set drop.
held = int(status()["CapPrm"], 16)
p._capset(libc, tuple(c for c in range(64) if held >> c & 1 and c != 8))
result = p.harden("status", Config.load(Path(sys.argv[1])), confined=False)
after = status()
print(result.applied, int(after["CapEff"], 16), int(after["CapPrm"], 16), after["NoNewPrivs"],
      int(after["CapBnd"], 16) != 0)
"""


def test_root_without_setpcap_still_ends_with_no_capability(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home, key_type="p256")
    done = subprocess.run([sys.executable, "-c", WITHOUT_SETPCAP, str(home)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # The bounding set stays (no CAP_SETPCAP to drop it); no_new_privs keeps execve from using it.
    assert done.stdout.split() == ["True", "0", "0", "1", "True"]
