"""The broker's token key: generated once in CPS-BROKER, even by replicas starting together.

Everything that opens SoftHSM runs in child processes: SoftHSM is configured once per process,
and this test process may already have the login tests' home open.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cps_login.token_key import open_broker_token
from pki.config import Config, HsmConfig
from pki.errors import ConfigError
from tests.login.roleproc import ROOT

INIT = r"""
import sys
from pathlib import Path
from pki.ca.hierarchy import init_home
init_home(Path(sys.argv[1]), key_type="p256")
"""

OPEN_KEY = r"""
import sys
from pathlib import Path
from cps_login.token_key import open_broker_token, token_key
from pki.clock import SYSTEM_CLOCK
from pki.config import Config

home = Path(sys.argv[1])
hsm = open_broker_token(Config.load(home))
print(token_key(hsm, SYSTEM_CLOCK, lock_dir=home).kid, ",".join(hsm.labels()))
"""


def _python(script: str, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, str(home)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_replicas_starting_together_make_one_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _python(INIT, home)
    assert init.wait(120) == 0, init.communicate()[1]
    procs = [_python(OPEN_KEY, home) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert len({out.split()[0] for out, _ in outputs}) == 1         # one kid for all
    after = _python(OPEN_KEY, home).communicate(timeout=120)[0].split()
    assert after[1] == "token:broker"          # one key in the broker token, no duplicate


def test_broker_token_must_not_be_a_ca_token(tmp_path: Path) -> None:
    for label in ("CPS-CA", "CPS-ROOT"):
        config = Config(home=tmp_path, hsm=HsmConfig(module="/nonexistent.so",
                                                     broker_token_label=label))
        with pytest.raises(ConfigError, match="is a CA token"):
            open_broker_token(config)
