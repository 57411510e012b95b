"""Nothing in a public login role can reach a CA key (docs/roles.md, issue #12).

The attack of the issue — from the broker app's own objects to ``Authority.hsm`` and the root
key — must fail because nothing is there to reach:

* in a fresh process that builds the broker app exactly as the role does, ``gc.get_objects()``
  holds no ``Authority`` and no ``pki.hsm.Hsm`` on the CA or root token (and the one ``Hsm``
  it does hold is the broker's, which is how we know the walk sees sessions at all);
  ``pki.ca.authority`` is not even imported, and the broker's tokens verify with its JWKS;
* in this test process (where the officer's Authority does exist), nothing reachable from the
  broker or the patient app is an Authority or a CA-token session;
* the patient role imports no PKCS#11, and its running process maps no PKCS#11 library.
"""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cps_login.tokens import TokenValidator
from pki.ca.authority import Authority
from pki.clock import SYSTEM_CLOCK
from pki.hsm import Hsm
from tests.login.conftest import Env, free_port
from tests.login.roleproc import ROOT, start_role

BROKER_SCRIPT = r"""
import gc, json, sys
from pathlib import Path
from cps_login.config import LoginConfig
from cps_login.web import create_broker_app, services_of
from pki.config import Config

home = Path(sys.argv[1])
app = create_broker_app(LoginConfig.from_home(home))
services = services_of(app)
token = services.tokens.issue(subject="810001234567", audience=services.config.audience,
                              profession_code=10, organisation_id=None).token
import pki.hsm
hsm = Config.load(home).hsm
found = {"authorities": 0, "ca_sessions": [], "sessions": []}
for obj in gc.get_objects():
    kind = type(obj)
    module = kind.__dict__.get("__module__")
    if kind.__name__ == "Authority" or (isinstance(module, str) and module.startswith("pki.ca")):
        found["authorities"] += 1
    if isinstance(obj, pki.hsm.Hsm):
        found["sessions"].append(obj.token_label)
        if obj.token_label in (hsm.token_label, hsm.root_token_label):
            found["ca_sessions"].append(obj.token_label)
found["ca_modules"] = sorted(m for m in sys.modules if m.startswith("pki.ca"))
found["open_tokens"] = pki.hsm.open_tokens()
found["token"] = token
found["jwks"] = services.tokens.jwks()
found["issuer"] = services.config.issuer
found["audience"] = services.config.audience
print(json.dumps(found))
"""

PATIENT_SCRIPT = r"""
import json, sys
from pathlib import Path
from cps_login.config import LoginConfig
from cps_login.web import create_patient_app

app = create_patient_app(LoginConfig.from_home(Path(sys.argv[1])))
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] == "pkcs11" or m.startswith(("pki.hsm", "pki.ca")))))
"""


def _run(script: str, home: Path) -> Any:
    done = subprocess.run([sys.executable, "-c", script, str(home)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_broker_process_holds_no_authority_and_no_ca_session(env: Env) -> None:
    found = _run(BROKER_SCRIPT, env.home)
    assert found["sessions"] == ["CPS-BROKER"]      # the walk does see HSM sessions
    assert found["open_tokens"] == ["CPS-BROKER"]
    assert found["authorities"] == 0 and found["ca_sessions"] == []
    assert found["ca_modules"] == []
    # ... and what it signs with that token verifies with its JWKS.
    claims = TokenValidator(found["jwks"], issuer=found["issuer"], audience=found["audience"],
                            clock=SYSTEM_CLOCK).validate(found["token"])
    assert claims["sub"] == "810001234567"


def _reachable(root: object, limit: int = 2_000_000) -> list[object]:
    """Every object reachable from ``root`` through references (the attacker's view), except
    through modules and classes: those are the code both processes share, and in this test
    process they also lead to the officer's objects, which a broker process does not have
    (the subprocess test above checks the whole heap of a real one)."""
    modules = {id(m) for m in sys.modules.values()} | \
        {id(vars(m)) for m in sys.modules.values() if hasattr(m, "__dict__")}
    seen: dict[int, object] = {}
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in modules or isinstance(obj, type):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def test_nothing_reachable_from_the_apps_is_a_ca_key(env: Env) -> None:
    assert isinstance(env.auth.hsm, Hsm)      # the officer's CA session exists in this process
    for app in (env.broker_app, env.patient_app):
        objects = _reachable(app)
        assert not any(isinstance(o, Authority) for o in objects)
        labels = {o.token_label for o in objects if isinstance(o, Hsm)}
        assert labels <= {"CPS-BROKER"}
        assert (labels == {"CPS-BROKER"}) == (app is env.broker_app)


def test_patient_app_imports_no_pkcs11(env: Env) -> None:
    assert _run(PATIENT_SCRIPT, env.home) == []


def test_patient_role_maps_no_pkcs11_library(env: Env) -> None:
    process = start_role("patient", env.home, free_port())
    try:
        assert process.first_line == f"patient pid {process.proc.pid}: no key"
        pids = [process.proc.pid, *process.descendants()]
        assert len(pids) >= 2                      # the arbiter and its worker
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "softhsm" not in maps and "pkcs11" not in maps.lower(), pid
    finally:
        assert process.stop(signal.SIGINT) == 0            # Ctrl-C: a clean stop too


def test_roles_refuse_to_run_beside_a_ca_session(env: Env) -> None:
    """This test process has the officer's CA session open: neither role starts here."""
    from cps_login.roles import run_broker, run_patient
    from pki.errors import PkiError

    assert isinstance(env.auth.hsm, Hsm)
    for run in (run_broker, run_patient):
        with pytest.raises(PkiError, match="CPS-CA"):
            run(env.home, None, host="127.0.0.1", port=free_port(), redis_url=None)
