"""``cps-admin serve`` (the supervisor) starts the tsa role once the home has a TSA certificate
and routes ``POST /tsa`` to it through the one front address."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cps_sign.tsa_client import timestamp, token_info
from pki.ca.hierarchy import init_home
from pki.cli.serve import RoleOptions
from pki.config import TSA_CHAIN_FILE
from pki.roles.front import route
from pki.roles.supervisor import plan
from tests.roles.processes import serve
from tests.tsa.helpers import provision_tsa


@pytest.fixture(scope="module")
def bare_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sup") / "home"
    init_home(home, key_type="p256")
    return home


def test_the_front_routes_tsa_to_the_tsa_role() -> None:
    assert route("/tsa") == "tsa"
    assert route("/tsa/") == "tsa"
    assert route("/tsaX") != "tsa"


def test_the_front_bounds_a_query_as_the_role_does() -> None:
    from cps_sign.tsa import MAX_QUERY
    from pki.roles.front import FrontLimits
    from pki.roles.tsa import LIMITS

    assert FrontLimits().request.body_limit("/tsa") == MAX_QUERY == LIMITS.body_limit("/tsa")
    assert FrontLimits().request.body_limit("/ocsp") == LIMITS.body_limit("/ocsp")


def test_no_tsa_child_until_the_ceremony(bare_home: Path) -> None:
    roles = [c.role for c in plan(bare_home, None, RoleOptions(), web=True)]
    assert "tsa" not in roles
    (bare_home / TSA_CHAIN_FILE).parent.mkdir()
    (bare_home / TSA_CHAIN_FILE).write_text("")
    try:
        roles = [c.role for c in plan(bare_home, None, RoleOptions(), web=True)]
        assert roles.count("tsa") == 1
        assert "tsa" not in [c.role for c in plan(bare_home, None, RoleOptions(), web=False)]
    finally:
        (bare_home / TSA_CHAIN_FILE).unlink()


def test_serve_starts_the_tsa_role_and_routes_post_tsa(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("sup-tsa") / "home"
    init_home(home, key_type="p256")
    provision_tsa(home)
    log = tmp_path_factory.mktemp("sup-log") / "serve.log"
    with serve(home, log) as pids:
        assert "tsa" in pids
        port = next(int(line.split("http://127.0.0.1:")[1].split()[0].rstrip(")"))
                    for line in log.read_text().splitlines()
                    if line.startswith("supervisor pid") and "front on" in line)
        digest = hashlib.sha256(b"via the front").digest()
        token = timestamp(f"http://127.0.0.1:{port}/tsa", digest)
        assert token_info(token)["message_imprint"]["hashed_message"].native == digest
    text = log.read_text()
    assert "tsa     pid" in text or "tsa pid" in text
    assert "TSA token CPS-TSA" in text


def test_the_role_without_a_certificate_exits_with_one_error_line(bare_home: Path) -> None:
    import subprocess

    from tests.servers import free_port
    from tests.tsa.helpers import BIN

    done = subprocess.run([str(BIN / "cps-admin"), "--home", str(bare_home), "serve", "--role",
                           "tsa", "--port", str(free_port())], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no TSA certificate at {bare_home / TSA_CHAIN_FILE}: run "
                      "`cps-admin tsa cert` first"]
