"""File modes of a new home (docs/roles.md): home and secrets/ 0700; PINs, config.json and the
SQLite store 0600; CA certificates stay public (0644) — whatever the umask, and also when `init`
fills a folder that already existed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.ca.hierarchy import init_home
from pki.errors import HomeExists, LintFailed


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)      # what most shells run with: files 0644, folders 0755
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check(home: Path) -> None:
    assert _mode(home) == 0o700
    assert _mode(home / "secrets") == 0o700
    pins = sorted(p.name for p in (home / "secrets").iterdir())
    assert pins == ["broker-so.pin", "broker.pin", "ca-so.pin", "ca.pin", "root-so.pin",
                    "root.pin", "tsa-so.pin", "tsa.pin"]
    for path in (home / "secrets").iterdir():
        assert _mode(path) == 0o600, path
    assert _mode(home / "config.json") == 0o600
    db_files = [p for p in home.iterdir() if p.name.startswith("cps.db")]
    assert home / "cps.db" in db_files
    for path in db_files:                       # with its -wal / -shm files, if any are left
        assert _mode(path) == 0o600, path
    pems = list((home / "ca").glob("*.pem"))
    assert len(pems) == 3 and all(_mode(p) == 0o644 for p in pems)


def test_modes_of_a_new_home(tmp_path: Path) -> None:
    home = tmp_path / "new" / "cps"
    init_home(home, key_type="p256")
    _check(home)


def test_modes_when_init_fills_an_existing_open_folder(tmp_path: Path) -> None:
    home = tmp_path / "existing"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    init_home(home, key_type="p256")
    _check(home)


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "busy"
    home.mkdir(mode=0o755)
    (home / "notes.txt").write_text("mine")
    with pytest.raises(HomeExists):
        init_home(home, key_type="p256")
    assert _mode(home) == 0o755 and [p.name for p in home.iterdir()] == ["notes.txt"]


def test_a_failed_init_leaves_nothing(tmp_path: Path) -> None:
    # pkilint refuses the issuing CAs' URLs (no dot in the host), after the tokens, the root
    # key and the store were made: all of it goes.
    existing = tmp_path / "existing"
    existing.mkdir()
    for home in (tmp_path / "new" / "cps", existing):
        with pytest.raises(LintFailed):
            init_home(home, key_type="p256", base_url="http://x")
    assert not (tmp_path / "new" / "cps").exists()
    assert list(existing.iterdir()) == []


def test_a_pin_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    """Issue 13 #7: a secret others may read is refused, by officer commands and roles alike."""
    import subprocess
    import sys

    from pki.config import Config
    from pki.errors import ConfigError

    home = tmp_path / "home"
    init_home(home, key_type="p256")
    pin = home / "secrets" / "ca.pin"
    os.chmod(pin, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Config.load(home).read_secret("secrets/ca.pin")
    admin = str(Path(sys.executable).parent / "cps-admin")
    done = subprocess.run([admin, "--home", str(home), "crl", "publish"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and "readable by others" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    os.chmod(pin, 0o600)
    assert Config.load(home).read_secret("secrets/ca.pin")
