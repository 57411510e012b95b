"""Time-stamp bench: stamps per second of our TSA beside ``openssl ts -reply`` in the same run.

    .venv/bin/python bench/tsa.py [--budget 2]

Measured, each for ``--budget`` seconds on one SHA-256 ``openssl ts -query`` (nonce, certReq):

* ``cps_sign.tsa`` in process, signing in the TSA token (SoftHSM, P-256), and with a software
  P-256 key (what the protocol code costs without the token);
* the tsa role over HTTP (``cps-admin serve --role tsa``, 4 keep-alive client threads);
* ``openssl ts -reply`` signing the same query with a software P-256 key and certificate, one
  process per stamp as the command is used (and its in-process cost is shown by the software
  line above, which does the same work).

Throw-away home under a temp dir; nothing outside it is touched.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cps_sign.tsa import TimeStampAuthority, TimeStampResp, TsaSettings
from pki.ca.authority import Authority
from pki.ca.hierarchy import init_home
from pki.cli.tsa import issue_tsa_certificate
from pki.config import Config
from pki.roles.tsa import load_authority, open_tsa_token

BIN = Path(sys.executable).parent
CLIENTS = 4


def rate(fn: Callable[[], object], budget: float) -> tuple[float, int]:
    count = 0
    start = time.perf_counter()
    end = start + budget
    while time.perf_counter() < end:
        fn()
        count += 1
    return count / (time.perf_counter() - start), count


def show(name: str, per_s: float, n: int, reference: float | None = None) -> None:
    ratio = f"   x{per_s / reference:6.1f} vs openssl ts -reply" if reference else ""
    print(f"{name:<58} {per_s:>9.1f}/s  (n={n}){ratio}", flush=True)


def granted(der: bytes) -> None:
    status = TimeStampResp.load(der)["status"]["status"].native
    if status != "granted":
        raise SystemExit(f"bench query not granted: {status}")


def openssl_setup(tmp: Path, home: Path
                  ) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A software P-256 TSA for OpenSSL (it needs the private key in a file): a self-signed
    certificate with the TSA profile's key usages; the same key and certificate serve the
    software line of our code."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp / "openssl-tsa.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path = tmp / "openssl-tsa.pem"
    done = subprocess.run(
        ["openssl", "req", "-new", "-x509", "-key", key_path, "-subj", "/CN=openssl TSA",
         "-days", "2", "-addext", "extendedKeyUsage=critical,timeStamping",
         "-addext", "keyUsage=critical,digitalSignature", "-out", cert_path],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    policy = Config.load(home).profiles.tsa_policy_oid
    config = tmp / "openssl-tsa.cnf"
    config.write_text(
        "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\n"
        f"serial = {tmp / 'openssl-tsa.serial'}\ncrypto_device = builtin\n"
        f"signer_cert = {cert_path}\nsigner_key = {key_path}\nsigner_digest = sha256\n"
        f"default_policy = {policy}\ndigests = sha256, sha384, sha512\n"
        "accuracy = secs:1\nordering = no\ntsa_name = yes\nness_cert_id_chain = no\n"
        "ess_cert_id_alg = sha256\n")
    return config, key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        init_home(home, key_type="p256")
        auth = Authority.open(home)
        try:
            issue_tsa_certificate(auth)
        finally:
            auth.close()
        data = tmp / "claim.xml"
        data.write_bytes(b"<claim>FSE 42</claim>\n")
        query_path = tmp / "q.tsq"
        subprocess.run(["openssl", "ts", "-query", "-data", data, "-sha256", "-cert", "-out",
                        query_path], check=True, capture_output=True)
        query = query_path.read_bytes()

        # The reference: openssl ts -reply, one process per stamp.
        config, soft_key, soft_cert = openssl_setup(tmp, home)
        reply = tmp / "r.tsr"

        def openssl_stamp() -> None:
            subprocess.run(["openssl", "ts", "-reply", "-config", config, "-queryfile",
                            query_path, "-out", reply], check=True, capture_output=True)

        openssl_stamp()
        granted(reply.read_bytes())
        reference, n = rate(openssl_stamp, args.budget)
        show("openssl ts -reply (software P-256, a process per stamp)", reference, n)

        # Ours, in process: the token, then a software key.
        cfg = Config.load(home)
        hsm = open_tsa_token(cfg)
        try:
            ours = load_authority(cfg, hsm)
            granted(ours.respond(query))
            per_s, n = rate(lambda: ours.respond(query), args.budget)
            show("cps_sign.tsa in process, key in SoftHSM (P-256)", per_s, n, reference)
        finally:
            hsm.close()
        # OpenSSL's key and certificate: only what the protocol code costs, beside the token.
        soft = TimeStampAuthority(soft_key, soft_cert, [], TsaSettings(cfg.profiles.tsa_policy_oid))
        granted(soft.respond(query))
        per_s, n = rate(lambda: soft.respond(query), args.budget)
        show("cps_sign.tsa in process, software P-256 key", per_s, n, reference)

        # The role over HTTP.
        port = _free_port()
        log = (tmp / "tsa.log").open("wb")
        proc = subprocess.Popen([str(BIN / "cps-admin"), "--home", str(home), "serve", "--role",
                                 "tsa", "--port", str(port)], stdout=log, stderr=log)
        try:
            _wait(port, proc)
            per_s, n = _http_rate(port, query, args.budget)
            show(f"tsa role over HTTP ({CLIENTS} keep-alive clients)", per_s, n, reference)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the tsa role exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the tsa role never became ready")


def _http_rate(port: int, query: bytes, budget: float) -> tuple[float, int]:
    counts = [0] * CLIENTS
    end = time.perf_counter() + budget
    headers = {"Content-Type": "application/timestamp-query"}

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.perf_counter() < end:
            conn.request("POST", "/tsa", body=query, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise SystemExit(f"HTTP {answer.status}")
            if counts[i] == 0:
                granted(body)
            counts[i] += 1
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts)
    return total / (time.perf_counter() - start), total


if __name__ == "__main__":
    sys.exit(main())
