"""Isolation as tests (issue #12): no public process can reach a CA key.

Each test fails on the old single process: there ``serve`` mapped libsofthsm2, held the CA and
root keys in the same process as the public handlers, and the broker app carried an Authority
(``app.extensions["cps_login"].authority.hsm.key("ca:...")`` signed a CA:TRUE certificate).
Role processes are real (``cps-admin serve``, and fresh interpreters for the in-process
checks), so nothing here depends on what this pytest process has imported.
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

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
KEY_LIBRARIES = ("softhsm", "pkcs11")


def _key_libraries(pid: int) -> set[str]:
    """Mapped files of ``pid`` whose name says PKCS#11 or SoftHSM."""
    with open(f"/proc/{pid}/maps") as fh:
        paths = {line.split()[-1] for line in fh if "/" in line}
    return {p for p in paths if any(k in p.lower() for k in KEY_LIBRARIES)}


def _python(script: str, *args: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("iso") / "home"
    init_home(home, key_type="p256")
    return home


@pytest.fixture(scope="module")
def served(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """``cps-admin serve`` running; the pid of each role from its start-up lines."""
    with serve(home, tmp_path_factory.mktemp("iso-log") / "serve.log") as pids:
        yield pids


def test_status_and_patient_processes_map_no_pkcs11_library(served: dict[str, int]) -> None:
    for role in ("status", "patient"):
        for pid in descendants(served[role]):
            assert _key_libraries(pid) == set(), (role, pid)
    # The check sees a token library where there is one: the signer maps libsofthsm2.
    assert any("libsofthsm2" in p for p in _key_libraries(served["signer"]))
    # The supervisor in front of them all loads none either.
    assert _key_libraries(served["supervisor"]) == set()


def test_the_broker_maps_softhsm_for_its_own_token_and_cannot_open_a_ca_token(
        served: dict[str, int], home: Path) -> None:
    workers = descendants(served["broker"])[1:]
    assert workers and all(any("libsofthsm2" in p for p in _key_libraries(w)) for w in workers)
    # What the broker role holds (its PIN, the shared SoftHSM configuration) opens no CA token.
    script = """
import sys
from pathlib import Path
from pki.config import Config
from pki.errors import HsmPinIncorrect
from pki.hsm import Hsm
c = Config.load(Path(sys.argv[1]))
pin = c.read_secret(c.hsm.broker_pin_file)
Hsm(c.hsm.module, c.hsm.broker_token_label, pin, c.softhsm_conf_path()).close()
for label in (c.hsm.token_label, c.hsm.root_token_label):
    try:
        Hsm(c.hsm.module, label, pin, c.softhsm_conf_path())
    except HsmPinIncorrect:
        print("refused", label)
    else:
        print("OPENED", label)
"""
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused CPS-CA", "refused CPS-ROOT"]


ATTACK = """
import gc, sys
from pathlib import Path
from cps_login.config import LoginConfig
from cps_login.web import create_broker_app
home = Path(sys.argv[1])
config = LoginConfig.from_home(home)
app = create_broker_app(config)                  # what each broker worker builds
client = app.test_client()
assert client.get("/.well-known/jwks.json").status_code == 200   # its own token is in use
services = app.extensions["cps_login"]
from sqlalchemy import create_engine, text
engine = create_engine(config.pki.effective_db_url())
with engine.connect() as conn:
    ca_labels = [row[0] for row in conn.execute(text("SELECT key_label FROM ca"))]
engine.dispose()
assert len(ca_labels) >= 3 and all(label.startswith("ca:") for label in ca_labels), ca_labels
print("authority attribute:", getattr(services, "authority", None))
from pki.errors import HsmKeyNotFound
from pki.hsm import Hsm, HsmEcKey, HsmRsaKey, open_tokens
print("open tokens:", ",".join(open_tokens()))
reached = []
for obj in gc.get_objects():
    kind = type(obj)
    if kind.__module__ == "pki.ca.authority":
        reached.append(kind.__name__)
    if isinstance(obj, (HsmRsaKey, HsmEcKey)) and obj.label.startswith("ca:"):
        reached.append("key " + obj.label)
    if isinstance(obj, Hsm):
        if obj.token_label != config.pki.hsm.broker_token_label:
            reached.append("token " + obj.token_label)
        reached += ["holds " + label for label in obj.labels() if label != "token:broker"]
        for label in ca_labels:
            try:
                obj.key(label)
                reached.append("signs-with " + label)
            except HsmKeyNotFound:
                pass
print("reached:", ",".join(reached) or "nothing")
"""


def test_the_issue_attack_finds_no_ca_key_in_the_broker_app(home: Path) -> None:
    done = _python(ATTACK, str(home))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "authority attribute: None" in lines
    assert "open tokens: CPS-BROKER" in lines
    assert "reached: nothing" in lines, done.stdout


REFUSE = """
import sys
from pathlib import Path
from pki.cli.serve import RoleOptions, run_role
from pki.roles.guard import RoleRefused
home = Path(sys.argv[1])
if sys.argv[2] == "ca":
    from pki.ca.authority import Authority
    auth = Authority.open(home)
    auth.hsm                                  # the CA token is now open in this process
else:
    import pkcs11                             # the module only, no token
for role in ("status", "broker", "patient"):
    try:
        run_role(role, home, None, RoleOptions(port=0))
    except RoleRefused as exc:
        print(role, "refused:", exc)
    else:
        print(role, "STARTED")
"""


def test_public_roles_refuse_to_start_beside_a_ca_key(home: Path) -> None:
    done = _python(REFUSE, str(home), "ca")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(" refused: " in line and "CPS-CA" in line for line in lines)


def test_status_refuses_a_process_that_merely_loaded_pkcs11(home: Path) -> None:
    # Only status is checked here: broker and patient would start (and block) without a token.
    script = REFUSE.replace('("status", "broker", "patient")', '("status",)')
    done = _python(script, str(home), "module")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("status refused:") and "PKCS#11 module" in done.stdout
    # And through the command line, as a user (or HAProxy's unit file) would start it.
    cli = ("import pkcs11, runpy, sys; sys.argv = ['cps-admin', '--home', sys.argv[1], 'serve', "
           "'--role', 'status', '--port', '0']; runpy.run_module('pki.cli.admin', "
           "run_name='__main__')")
    done = _python(cli, str(home))
    assert done.returncode == 1
    assert done.stderr.startswith("error: refusing to start the status role") \
        and done.stderr.count("\n") == 1, done.stderr


def test_serve_role_status_starts_clean_from_the_command_line(home: Path) -> None:
    """The negative control of the test above: the real CLI path imports no PKCS#11."""
    script = ("import runpy, sys; import pki.roles.guard as g\n"
              "sys.argv = ['cps-admin', '--home', sys.argv[1], 'serve', '--role', 'status']\n"
              "import pki.cli.serve as s\n"
              "def probe(role, home, db, options):\n"
              "    g.refuse_key_holders(role)\n"
              "    print('pkcs11 loaded:', 'pkcs11' in sys.modules)\n"
              "s.run_role = probe\n"
              "runpy.run_module('pki.cli.admin', run_name='__main__')\n")
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pkcs11 loaded: False"


def _cpus(pid: int) -> str:
    with open(f"/proc/{pid}/status") as fh:
        return next(line.split(":", 1)[1].strip() for line in fh
                    if line.startswith("Cpus_allowed_list"))


def test_each_broker_worker_runs_on_a_cpu_of_its_own(served: dict[str, int]) -> None:
    """pki.http.gunicorn_worker: worker n on the n-th CPU (round robin), every thread of it;
    the arbiter and the patient role's gthread workers are left where they were."""
    allowed = os.sched_getaffinity(0)
    workers = [w for w in descendants(served["broker"])[1:] if _key_libraries(w)]
    assert workers
    pinned = [_cpus(w) for w in workers]
    if len(allowed) < 2:
        assert all(_cpus(w) == _cpus(served["broker"]) for w in workers)
        return
    assert all(p.isdigit() and int(p) in allowed for p in pinned), pinned
    assert len(set(pinned)) == min(len(workers), len(allowed)), pinned
    for w in workers:                       # the worker's threads (its WSGI pool) too
        for task in os.listdir(f"/proc/{w}/task"):
            with open(f"/proc/{w}/task/{task}/status") as fh:
                line = next(x for x in fh if x.startswith("Cpus_allowed_list"))
            assert line.split(":", 1)[1].strip() == _cpus(w)
    assert _cpus(served["broker"]) != pinned[0]       # the arbiter is not pinned


def test_worker_cpu_round_robin() -> None:
    from pki.http.gunicorn_worker import worker_cpu

    assert [worker_cpu(age, {2, 5, 7}) for age in (1, 2, 3, 4)] == [2, 5, 7, 2]
    assert worker_cpu(1, {3}) is None
    # a replacement takes the CPU its predecessor left, whatever its age
    assert worker_cpu(3, {0, 1}, {0: 1}) == 1
    assert worker_cpu(4, {0, 1, 2}, {0: 1, 1: 1, 2: 1}) == 0
