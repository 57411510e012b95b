"""`make demo`: the whole story on the embedded default (SQLite + SoftHSM + a virtual card).

Every step runs the real commands (cps-admin, cps-card-sim, cps-login) or the real HTTP API,
and prints what it did. A fresh demo home is made under var/demo each run. Exits 0 only if
every step behaved as it must — including the last login being refused after revocation.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509

from pki import ids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READER = "Virtual PCD 00 00"
VPCD_PORT = 35963


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*args: str, expect_ok: bool = True, env: dict[str, str] | None = None,
        show: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / args[0]), *args[1:]]
    printable = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ {printable}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    if show:
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            print(f"  {line}")
    if expect_ok and proc.returncode != 0:
        raise DemoFailed(f"{printable} exited {proc.returncode}")
    if not expect_ok and proc.returncode == 0:
        raise DemoFailed(f"{printable} should have failed")
    return proc


def http(method: str, url: str, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback http
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(base: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoFailed(f"cps-admin serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise DemoFailed("server did not become ready")


def take_root_offline(home: Path) -> Path:
    """Move the root token's PIN files out of the home, as an operator keeps the root offline:
    `cps-admin serve` and every step of the demo run without them."""
    offline = home.parent / f"{home.name}-root-offline"
    shutil.rmtree(offline, ignore_errors=True)
    offline.mkdir(mode=0o700)
    for name in ("root.pin", "root-so.pin"):
        source = home / "secrets" / name
        if source.exists():
            shutil.move(str(source), offline / name)
    return offline


def supervisor_lines(log: Path) -> list[str]:
    """The supervisor's own lines: which process runs which role and which may sign."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if not line.startswith("[")]


def main() -> int:
    from cps_login.totp import totp
    from pki.cards.pcsc import wait_for_card
    from pki.cards.pcscd import Pcscd
    from pki.cards.sim.runner import SimProcess

    home = ROOT / "var" / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CPS_HOME": str(home)}
    rpps = ids.luhn_complete("1000345678")
    procs: list[Any] = []
    pcscd: Pcscd | None = None
    try:
        step("1. A CA hierarchy in SoftHSM, store in SQLite")
        run("cps-admin", "init", "--base-url", base, env=env)
        run("cps-admin", "ca", "list", env=env)
        offline = take_root_offline(home)
        print(f"  root PIN files moved to {offline}: nothing below needs the root")
        run("cps-admin", "tsa", "cert", env=env)     # the time-stamping unit's key + certificate

        step("2. The directory: a physician")
        run("cps-admin", "pro", "add", "--rpps", rpps, "--profession", "10",
            "--given-name", "Jeanne", "--surname", "Martin", env=env)

        step("3. Services: signer, status, broker, patient, tsa - each its own process, one "
             "address")
        log = (home / "serve.log").open("ab")
        server = subprocess.Popen([str(BIN / "cps-admin"), "serve", "--port", str(port)],
                                  env=env, stdout=log, stderr=log)
        procs.append(server)
        wait_health(base, server)
        for line in supervisor_lines(home / "serve.log"):
            print(f"  {line}")
        print(f"  {base}/health says ok")

        step("4. A blank CPS card in the virtual reader (real pcscd + vsmartcard-vpcd)")
        pcscd = Pcscd.ensure()
        print(f"  pcscd {'started' if pcscd.started_here else 'already running, reused'}")
        card_file = home / "demo-card.json"
        sim = SimProcess.start(card_file, VPCD_PORT, log=home / "card-sim.log")
        procs.append(sim)
        wait_for_card(READER, True, timeout=15)
        print(f"  card present in {READER!r}")

        step("5. Personalisation: keys generated on the card, certificates from the CA")
        pin_file = home / "demo.pin"
        pin_file.write_text("1234\n")
        pin_file.chmod(0o600)
        run("cps-admin", "card", "issue", "--rpps", rpps, "--reader", READER,
            "--pin-file", str(pin_file), env=env)
        run("cps-login", "info", "--reader", READER, env=env)

        step("6. Login: challenge, card + PIN signs it, live revocation check, token")
        proc = run("cps-login", "login", "--broker", base, "--reader", READER,
                   "--pin-file", str(pin_file), "--json", env=env, show=False)
        token = json.loads(proc.stdout)["access_token"]
        print(f"  access token: {token[:40]}... (expires in "
              f"{json.loads(proc.stdout)['expires_in']} s)")
        status, who = http("GET", base + "/api/whoami", token=token)
        print(f"  GET /api/whoami -> {status} {who}")

        step("7. The physician opens a record and reads a document")
        nir = "2850575123456"
        ins = nir + ids.ins_key(nir)
        status, enrol = http("POST", base + "/api/patients", {
            "ins": ins, "given_name": "Louise", "surname": "Bernard",
            "birth_date": "1985-05-12"}, token)
        if status != 201:
            raise DemoFailed(f"enrol patient: {status} {enrol}")
        print(f"  patient {ins} enrolled (activation code sent to the patient)")
        status, doc = http("POST", base + f"/api/patients/{ins}/documents", {
            "category": "report", "title": "Compte rendu de consultation du 23/11",
            "content": "Tension 12/8, RAS."}, token)
        if status != 201:
            raise DemoFailed(f"write document: {status} {doc}")
        status, read = http("GET", base + f"/api/patients/{ins}/documents/{doc['id']}",
                            token=token)
        if status != 200:
            raise DemoFailed(f"read document: {status} {read}")
        print(f"  GET document {doc['id']} -> {status}: {read.get('title')!r}")

        step("8. The patient signs in (password + TOTP) and sees who accessed the record")
        status, act = http("POST", base + "/patient/activate", {
            "ins": ins, "activation_code": enrol["activation_code"],
            "password": "correct horse battery staple"})
        if status != 200:
            raise DemoFailed(f"activate: {status} {act}")
        status, sess = http("POST", base + "/patient/signin", {
            "ins": ins, "password": "correct horse battery staple",
            "totp": totp(act["totp_secret"], time.time())})
        if status != 200:
            raise DemoFailed(f"sign in: {status} {sess}")
        status, hist = http("GET", base + f"/patient/records/{ins}/history",
                            token=sess["session"])
        if status != 200 or not hist["events"]:
            raise DemoFailed(f"history: {status} {hist}")
        for event in hist["events"]:
            print("  " + " | ".join(str(event.get(k, "")) for k in
                                    ("at", "who", "profession", "action",
                                     "document", "mode", "granted", "rule")))

        step("9. The card is reported stolen: both certificates revoked")
        cards = json.loads(run("cps-admin", "card", "list", "--json", env=env,
                               show=False).stdout)
        run("cps-admin", "card", "revoke", cards[0]["card"], "--reason", "keyCompromise",
            env=env)

        step("10. Relying parties see it: the delta CRL served over HTTP lists the card")
        revoked = run("cps-admin", "card", "list", "--json", env=env, show=False).stdout
        serials = {c["serial"] for c in json.loads(revoked)[0]["certificates"]}
        delta_url = base + "/crl/ac-igc-sante-fort-personnes-delta.crl"
        listed: set[str] = set()
        deadline = time.monotonic() + 60
        while not serials <= listed and time.monotonic() < deadline:
            time.sleep(1)
            with urllib.request.urlopen(delta_url, timeout=10) as resp:  # noqa: S310
                crl = x509.load_der_x509_crl(resp.read())
            listed = {f"{r.serial_number:X}".zfill(len(next(iter(serials)))) for r in crl}
        if not serials <= listed:
            raise DemoFailed("the delta CRL does not list the revoked card")
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        print(f"  GET {delta_url}: delta CRL #{number} lists both card certificates "
              f"({', '.join(sorted(serials))})")

        step("11. The next login with that card is refused")
        refused = run("cps-login", "login", "--broker", base, "--reader", READER,
                      "--pin-file", str(pin_file), env=env, expect_ok=False)
        if "revoked" not in (refused.stdout + refused.stderr).lower():
            raise DemoFailed("the refusal does not say the certificate is revoked")
        run("cps-admin", "audit", "verify", env=env)
        print("\n\033[1mdemo complete\033[0m: every step behaved as expected "
              f"(home: {home})")
        return 0
    except DemoFailed as exc:
        print(f"error: demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            if isinstance(p, subprocess.Popen):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            else:
                p.stop()
        if pcscd is not None:
            pcscd.stop()


if __name__ == "__main__":
    sys.exit(main())
