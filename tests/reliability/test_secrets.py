"""No private key, PIN or PUK leaves where it belongs, in a demo-like run: init, a professional,
`serve`, the software card in pcscd's virtual reader, `card issue --pin-file`, `cps-login login
--pin-file`, a revocation.

Scanned: every text/blob column of every table of the store (audit records included), the
server's log and every captured output, /proc/<pid>/cmdline of every process started (serve,
card sim, pcscd if we started it, cps-admin, cps-login), and every file of the home outside
the HSM token directory. Looked for: PEM/PKCS#8 private keys, the HSM user and SO PINs, the
card PIN and PUK.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import BIN, children, env_for, free_port, record, store_url, wait_health

pytestmark = [pytest.mark.timeout(900), pytest.mark.pcscd]
READER = "Virtual PCD 00 00"
VPCD_PORT = 35963
CARD_PIN = "7395"
NUL = b"\x00"


def _watch(proc: subprocess.Popen[Any], cmdlines: list[bytes]) -> None:
    """Collect the child's command line (and its children's) while it runs."""
    while proc.poll() is None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().split()[4]) == proc.pid or \
                            int(entry.name) == proc.pid:
                        cmdlines.append((entry / "cmdline").read_bytes())
                except (OSError, ValueError, IndexError):
                    pass
        time.sleep(0.05)


def _run(cmd: list[str], home: Path, cmdlines: list[bytes], outputs: list[str],
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_for(home))
    try:
        import threading

        watcher = threading.Thread(target=_watch, args=(proc, cmdlines), daemon=True)
        watcher.start()
        out, err = proc.communicate(timeout=timeout)
        watcher.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    outputs.append(out + err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_no_secret_leaks(cli_home: Callable[..., Path], tmp_path: Path) -> None:
    from pki.cards.pcsc import wait_for_card
    from pki.cards.pcscd import Pcscd, pcscd_binary
    from pki.cards.sim.runner import SimProcess

    if pcscd_binary() is None or not Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists():
        pytest.skip("pcscd / vsmartcard-vpcd not installed")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = cli_home(None, base_url=base)
    admin = str(BIN / "cps-admin")
    cmdlines: list[bytes] = []
    outputs: list[str] = []
    from pki import ids

    rpps = ids.luhn_complete("1000345678")
    _run([admin, "--home", str(home), "pro", "add", "--rpps", rpps, "--profession", "10",
          "--given-name", "Jeanne", "--surname", "Martin"], home, cmdlines, outputs)
    pin_file = tmp_path / "card.pin"
    pin_file.write_text(CARD_PIN + "\n")
    pin_file.chmod(0o600)
    pcscd = Pcscd.ensure(log=tmp_path / "pcscd.log")
    sim = None
    try:
        with children() as kids, (home / "serve.log").open("ab") as log:
            server = kids.admin(home, "serve", "--port", str(port), stdout=log, stderr=log)
            wait_health(base, server)
            sim = SimProcess.start(tmp_path / "card.json", VPCD_PORT, log=tmp_path / "sim.log")
            wait_for_card(READER, True, timeout=30)
            issued = _run([admin, "--home", str(home), "card", "issue", "--rpps", rpps,
                           "--reader", READER, "--pin-file", str(pin_file)], home, cmdlines,
                          outputs)
            assert issued.returncode == 0, issued.stderr
            puk = re.search(r"PUK[^:]*:\s*(\d{8})", issued.stdout)
            assert puk, issued.stdout
            login = _run([str(BIN / "cps-login"), "login", "--broker", base, "--reader", READER,
                          "--pin-file", str(pin_file), "--json"], home, cmdlines, outputs)
            assert login.returncode == 0, login.stderr
            assert json.loads(login.stdout)["access_token"]
            cards = json.loads(_run([admin, "--home", str(home), "card", "list", "--json"],
                                    home, cmdlines, outputs).stdout)
            _run([admin, "--home", str(home), "card", "revoke", cards[0]["card"], "--reason",
                  "keyCompromise"], home, cmdlines, outputs)
            for pid in [server.pid, sim.pid if hasattr(sim, "pid") else None,
                        getattr(pcscd, "pid", None)]:
                if pid:
                    with contextlib.suppress(OSError):
                        cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
    finally:
        if sim is not None:
            sim.stop()
        pcscd.stop()

    hsm_pins = [p.read_text().strip() for p in (home / "secrets").iterdir()]
    # The PUK is shown once to the officer (that output is expected to carry it).
    puk_value = puk.group(1)
    findings: list[str] = []
    key_markers = (b"PRIVATE KEY-----", b"-----BEGIN EC PRIVATE", b"-----BEGIN RSA PRIVATE")
    pin_context = re.compile(rf"(pin|puk|code)\W{{0,12}}({CARD_PIN}|{puk_value})\b".encode(),
                             re.IGNORECASE)

    def scan(where: str, data: bytes, *, allow_puk: bool = False) -> None:
        if any(m in data for m in key_markers):
            findings.append(f"{where}: private key")
        for secret in hsm_pins:
            if secret.encode() in data:
                findings.append(f"{where}: HSM PIN")
        if not allow_puk and puk_value.encode() in data:
            findings.append(f"{where}: PUK")
        if pin_context.search(data):
            findings.append(f"{where}: card PIN/PUK")

    # 1. the store: every text/blob column of every table
    from sqlalchemy import LargeBinary, String, Text, create_engine, inspect, select, table

    engine = create_engine(store_url(home))
    rows = 0
    with engine.connect() as conn:
        for name in inspect(engine).get_table_names():
            columns = [c for c in inspect(engine).get_columns(name)
                       if isinstance(c["type"], String | Text | LargeBinary)]
            if not columns:
                continue
            from sqlalchemy import column

            query = select(*(column(c["name"]) for c in columns)).select_from(table(name))
            for row in conn.execute(query):
                rows += 1
                for value in row:
                    if value is not None:
                        scan(f"table {name}", value if isinstance(value, bytes)
                             else str(value).encode())
    engine.dispose()
    # 2. logs and outputs (the card issue output shows the PUK once, on purpose)
    scan("serve.log", (home / "serve.log").read_bytes())
    for i, text in enumerate(outputs):
        scan(f"output #{i}", text.encode(), allow_puk="PUK (shown once" in text)
    # 3. command lines
    for line in cmdlines:
        shown = line.replace(NUL, b" ")[:80]
        scan(f"cmdline {shown!r}", line)
        if CARD_PIN.encode() in line.split(b"\x00"):
            findings.append(f"cmdline: card PIN as an argument: {line[:80]!r}")
    # 4. files of the home outside the token directory (and the PIN files themselves)
    tokens = home / "tokens"
    files = 0
    for path in home.rglob("*"):
        if path.is_file() and tokens not in path.parents and path.parent != home / "secrets":
            files += 1
            scan(f"file {path.relative_to(home)}", path.read_bytes())
    record("secrets", "private keys / HSM PINs / card PIN / PUK in store, logs, cmdlines, "
           "files", "sqlite", rows + len(outputs) + len(cmdlines) + files, len(findings),
           f"{rows} rows, {len(outputs)} outputs, {len(cmdlines)} command lines, "
           f"{files} files")
    assert not findings, findings
