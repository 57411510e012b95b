"""Issue #16 follow-up: every web-role secret exists before any role is confined.

The confinement covers only files that exist when a role sets it up; the patient role used to
make its session, pages and TOTP keys at its own start, after the signer (started first) had
confined itself — so the signer could read them. Now ``serve`` (the supervisor, and
``serve --role X`` before confining) makes them all first, where login.json puts them.
Each role's view is read through ``/proc/<pid>/root``, which resolves in that process's mount
namespace. Needs root (a mount namespace), as CI and ``make demo`` have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cps_login.config import LoginConfig
from pki.ca.hierarchy import init_home
from pki.config import MESSAGE_KEY_FILE, Config
from pki.roles.confine import PAGES_SESSION_KEY_FILE, plan, web_secrets

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="a mount namespace needs root (CI and make demo are)")

CUSTOM = {"totp_key_file": "patient-keys/totp.key", "session_key_file": "secrets/sess-2027.key"}


def _home(tmp_path: Path, login: dict[str, str] | None = None) -> Path:
    home = tmp_path / "home"
    init_home(home, key_type="p256")
    if login is not None:
        (home / "login.json").write_text(json.dumps(login))
    return home


def test_pki_and_login_config_name_the_same_files(tmp_path: Path) -> None:
    """confine reads login.json as plain JSON; LoginConfig is what the roles read: same paths."""
    from cps_login.pages.security import SECRET_FILE

    assert SECRET_FILE == PAGES_SESSION_KEY_FILE
    for login in (None, {**CUSTOM, "message_key_file": "secrets/msg.key"}):
        home = _home(tmp_path / str(login is None), login)
        assert web_secrets(Config.load(home)) == LoginConfig.from_home(home).web_secrets()


def test_a_custom_totp_key_is_hidden_from_others_and_not_from_the_patient(
        tmp_path: Path) -> None:
    home = _home(tmp_path, CUSTOM)
    LoginConfig.from_home(home).create_role_secrets()
    totp, session = home / CUSTOM["totp_key_file"], home / CUSTOM["session_key_file"]
    assert totp.stat().st_mode & 0o777 == 0o600
    config = Config.load(home)
    for role in ("signer", "broker", "tsa", "status"):
        files, dirs = plan(role, config)
        assert totp in files, role                 # outside secrets/: covered file by file
        assert session in files or home / "secrets" in dirs, role
    files, _ = plan("patient", config)
    assert totp not in files and session not in files   # its own keys stay readable
    assert home / "secrets" / "ca.pin" in files


def test_role_secrets_are_made_once_and_not_replaced(tmp_path: Path) -> None:
    home = _home(tmp_path)
    login = LoginConfig.from_home(home)
    login.create_role_secrets()
    names = (*login.web_secrets().all(),)
    first = {n: (home / n).read_bytes() for n in names}
    assert len(first) == 4 and all(len(v.strip()) == 64 for v in first.values())
    login.create_role_secrets()
    assert {n: (home / n).read_bytes() for n in names} == first
    assert len(login.totp_key()) == 32 and len(login.session_key()) >= 32


@as_root
def test_a_first_serve_hides_every_patient_key_from_the_other_roles(tmp_path: Path) -> None:
    from tests.roles.processes import serve
    from tests.tsa.helpers import provision_tsa

    home = _home(tmp_path, {"totp_key_file": CUSTOM["totp_key_file"]})
    provision_tsa(home)                       # so that the supervisor starts the tsa role too
    login = LoginConfig.from_home(home)
    patient_keys = [home / n for n in login.web_secrets().patient]
    messages = home / MESSAGE_KEY_FILE
    assert not any(p.exists() for p in (*patient_keys, messages))
    with serve(home, tmp_path / "serve.log") as pids:
        assert {"signer", "status", "tsa", "broker", "patient"} <= set(pids), pids

        def seen(role: str, path: Path) -> bytes:
            try:
                return Path(f"/proc/{pids[role]}/root{path}").read_bytes()
            except FileNotFoundError:
                return b""                    # status: an empty tmpfs over secrets/

        for path in (*patient_keys, messages):
            real = path.read_bytes()
            assert len(real.strip()) == 64 and path.stat().st_mode & 0o777 == 0o600
            for role in ("signer", "status", "tsa"):
                assert seen(role, path) == b"", (role, path)
            assert seen("patient", path) == real, path
            assert seen("broker", path) == (real if path == messages else b""), path


@as_root
def test_serve_role_alone_makes_the_web_secrets_before_confining(tmp_path: Path) -> None:
    """``serve --role status`` on a fresh home (no supervisor): the web keys are made in its
    namespace before anything is hidden, so a patient role started later makes none."""
    import time

    from tests.servers import free_port

    home = _home(tmp_path, {"totp_key_file": CUSTOM["totp_key_file"]})
    totp = home / CUSTOM["totp_key_file"]
    log = (tmp_path / "status.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cps-admin"), "--home", str(home),
                             "serve", "--role", "status", "--port", str(free_port())],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while f" {totp} " not in Path(f"/proc/{proc.pid}/mountinfo").read_text():
            assert proc.poll() is None, (tmp_path / "status.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "status.log").read_text()
            time.sleep(0.1)
        for name in LoginConfig.from_home(home).web_secrets().all():
            assert len((home / name).read_bytes().strip()) == 64, name
        assert Path(f"/proc/{proc.pid}/root{totp}").read_bytes() == b""
        assert not Path(f"/proc/{proc.pid}/root{home}/secrets/login-session.key").exists()
    finally:
        proc.terminate()
        proc.wait(30)
