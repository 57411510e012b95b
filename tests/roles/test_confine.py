"""Each role sees only its own secrets: what a role process can read of the home's secrets/.

The confinement needs a mount namespace (root, as in CI and `make demo`); each check runs in a
child process, because the namespace is the process's for good.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pki.ca.hierarchy import init_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a mount namespace needs root (CI and make demo are)")

PROBE = """
import sys
from pathlib import Path
from pki.config import Config
from pki.roles.confine import confine
home = Path(sys.argv[1]); role = sys.argv[2]
result = confine(role, Config.load(home))
print("applied", result.applied)
for name in ("root.pin", "ca.pin", "broker.pin", "root-so.pin", "ca-so.pin", "login-session.key"):
    try:
        data = (home / "secrets" / name).read_bytes()
        print(name, "empty" if not data else "READABLE")
    except FileNotFoundError:
        print(name, "absent")
print("tokens", sorted(p.name for p in (home / "tokens").iterdir()) and "listed" or "empty")
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("confine") / "home"
    init_home(home, key_type="p256")
    (home / "secrets" / "login-session.key").write_text("00" * 32 + "\n")
    return home


def _probe(home: Path, role: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(home), role], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_status_sees_no_secret_and_no_token(home: Path) -> None:
    seen = _probe(home, "status")
    assert seen["applied"] == "True"
    assert {seen[n] for n in ("root.pin", "ca.pin", "broker.pin", "login-session.key")} \
        == {"absent"}
    assert seen["tokens"] == "empty"


def test_broker_sees_its_pin_only(home: Path) -> None:
    seen = _probe(home, "broker")
    assert seen["broker.pin"] == "READABLE"
    assert seen["ca.pin"] == seen["root.pin"] == seen["ca-so.pin"] == "empty"
    assert seen["login-session.key"] == "empty"
    assert seen["tokens"] == "listed"            # its own token lives there (PIN-protected)


def test_signer_sees_the_ca_pin_never_the_root_or_broker_pin(home: Path) -> None:
    seen = _probe(home, "signer")
    assert seen["ca.pin"] == "READABLE"
    assert seen["root.pin"] == seen["broker.pin"] == seen["root-so.pin"] == "empty"


def test_patient_sees_its_keys_and_no_pin(home: Path) -> None:
    seen = _probe(home, "patient")
    assert seen["login-session.key"] == "READABLE"
    assert {seen[n] for n in ("root.pin", "ca.pin", "broker.pin")} == {"empty"}
    assert seen["tokens"] == "empty"


def test_the_host_keeps_every_secret(home: Path) -> None:
    _probe(home, "status")                        # the namespace dies with the child
    assert (home / "secrets" / "ca.pin").read_bytes().strip()
    assert (home / "secrets" / "root.pin").read_bytes().strip()


def test_a_running_status_role_has_secrets_covered(home: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "status.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cps-admin"), "--home", str(home),
                             "serve", "--role", "status", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        secrets_dir = str((home / "secrets").resolve())
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "status.log").read_text()
            mounts = Path(f"/proc/{proc.pid}/mountinfo").read_text()
            if f" {secrets_dir} " in mounts:
                break
            assert time.monotonic() < deadline, "no mount over secrets/ in the status process"
            time.sleep(0.1)
        assert f" {secrets_dir} " not in Path("/proc/self/mountinfo").read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_home_without_softhsm_conf_confines_fine(tmp_path: Path) -> None:
    """A status replica's own home (docs/deployment.md) may hold no SoftHSM configuration."""
    from pki.config import Config
    from pki.roles.confine import plan

    home = tmp_path / "home"
    init_home(home, key_type="p256")
    (home / "softhsm2.conf").unlink()
    files, _ = plan("status", Config.load(home))
    assert all(p.exists() for p in files)
    seen = _probe(home, "status")
    assert seen["applied"] == "True" and seen["ca.pin"] == "absent"
