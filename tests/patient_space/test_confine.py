"""The messages key (secrets/messages.key, or login.json's message_key_file) is readable by the
patient and broker roles only: every other role finds it covered. Needs a mount namespace
(root, as in CI and make demo); each check runs in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pki.ca.hierarchy import init_home
from pki.config import MESSAGE_KEY_FILE, Config
from pki.roles.confine import allowed_secrets, message_key_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a mount namespace needs root (CI and make demo are)")

PROBE = """
import sys
from pathlib import Path
from pki.config import Config
from pki.roles.confine import confine
home = Path(sys.argv[1])
result = confine(sys.argv[2], Config.load(home))
data = (home / sys.argv[3]).read_bytes()
print(result.applied, "empty" if not data else "READABLE")
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("confine-messages") / "home"
    init_home(home, key_type="p256")
    (home / MESSAGE_KEY_FILE).write_text("11" * 32 + "\n")
    (home / MESSAGE_KEY_FILE).chmod(0o600)
    return home


def probe(home: Path, role: str, name: str = MESSAGE_KEY_FILE) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, str(home), role, name],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    applied, seen = done.stdout.split()
    assert applied == "True"
    return seen


@pytest.mark.parametrize(("role", "seen"), [("patient", "READABLE"), ("broker", "READABLE"),
                                            ("signer", "empty"), ("tsa", "empty")])
def test_only_the_web_roles_read_the_messages_key(home: Path, role: str, seen: str) -> None:
    assert probe(home, role) == seen


def test_status_sees_no_secret_at_all(home: Path) -> None:
    with pytest.raises(AssertionError):     # the whole secrets/ is an empty tmpfs: no file
        probe(home, "status")


def test_the_key_path_comes_from_login_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home, key_type="p256")
    config = Config.load(home)
    assert message_key_file(config) == MESSAGE_KEY_FILE
    (home / "login.json").write_text(json.dumps({"message_key_file": "secrets/msg-2027.key"}))
    assert message_key_file(config) == "secrets/msg-2027.key"
    assert "secrets/msg-2027.key" in (allowed_secrets("patient", config) or ())
    assert "secrets/msg-2027.key" not in (allowed_secrets("signer", config) or ())
    # the patient and broker roles read it through LoginConfig, from the same name
    from cps_login.config import LoginConfig
    from pki.errors import ConfigError

    login = LoginConfig.from_home(home)
    assert len(login.message_key()) == 32
    key = home / "secrets" / "msg-2027.key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        login.message_key()


def test_a_first_serve_hides_the_new_messages_key_from_the_signer(tmp_path: Path) -> None:
    """``cps-admin serve`` on a home without the key: made before any role is confined, so the
    signer (started first) finds it covered, while the web roles read it. Each process's view
    is read through /proc/<pid>/root, which resolves in that process's mount namespace."""
    from tests.roles.processes import serve

    home = tmp_path / "home"
    init_home(home, key_type="p256")
    key = home / MESSAGE_KEY_FILE
    assert not key.exists()
    with serve(home, tmp_path / "serve.log") as pids:
        def seen(role: str) -> bytes:
            return Path(f"/proc/{pids[role]}/root{key}").read_bytes()

        assert key.stat().st_mode & 0o777 == 0o600
        assert seen("signer") == b""
        assert seen("patient").strip() == key.read_bytes().strip() != b""
        assert seen("broker").strip() == key.read_bytes().strip()
