"""OCSP responder benchmark: this project's responder against `openssl ocsp`, same machine, same
load client (ab), same population (synthetic, 1% revoked).

    .venv/bin/python bench/ocsp.py [--count 100000] [--requests 50000]
                                   [--responder-key p256|rsa2048] [--openssl-key rsa2048|p256]

The project's responder key defaults to the product default (``ocsp.responder_key_type``,
P-256); `openssl ocsp` signs every answer live, with an RSA-2048 key unless ``--openssl-key``
says otherwise (its rate depends heavily on that choice: RSA-2048 signing dominates its cost).
Which key each side used is read back from the responses and printed. ab sends the same request
over and over, so the project's figure is its hot path (the response cache of complete answers).

Loopback only; prints rates, p50/p99 latency, the ratio, the responder's RSS and an estimate of
its memory for 2 million certificates (extrapolated from the measured per-certificate growth).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- child: the project's responder ----------------------------------------------------------
def serve_child(home: str, port: int, key_type: str) -> None:
    import asyncio

    from pki.ca.authority import Authority
    from pki.hsm import KeyType
    from pki.http.server import HttpServer, run
    from pki.ocsp.endpoint import OcspEndpoint
    from pki.ocsp.service import OcspService

    auth = Authority.open(Path(home))
    auth.issuing_cas()
    before = rss_kib(os.getpid())
    service = OcspService(auth, responder_key_type=KeyType.parse(key_type))
    started = time.monotonic()
    service.start(wait=True, timeout=600)
    took = time.monotonic() - started
    after = rss_kib(os.getpid())
    records = sum(sys.getsizeof(s.records) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                                 for k, v in s.records.items())
                  for s in service.states.values())
    print(f"READY signed={service.signed_total} seconds={took:.1f} rss_before={before} "
          f"rss_after={after} presigned={service.presigned_count()} records_bytes={records}",
          flush=True)
    endpoint = OcspEndpoint(service)
    server = HttpServer([endpoint], readiness=[service.ready.is_set],
                        metrics=[endpoint.metrics_text])

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await run(server, "127.0.0.1", port, stop=stop)

    asyncio.run(main())


# --- parent ------------------------------------------------------------------------------------
def populate(auth: object, count: int, revoked_fraction: float) -> list[tuple[str, bool]]:
    from sqlalchemy import insert

    from pki.store.models import Certificate
    ca = next(c for c in auth.issuing_cas() if c.role == "PERSONNES")  # type: ignore[attr-defined]
    now = dt.datetime.now(dt.UTC)
    out = []
    rows = []
    for i in range(count):
        serial = f"{secrets.randbits(127) | (1 << 120):X}"
        serial = "0" + serial if len(serial) % 2 else serial
        revoked = i < int(count * revoked_fraction)
        out.append((serial, revoked))
        rows.append({"serial": serial, "ca_id": ca.id, "profile": "auth",
                     "subject": f"CN=bench {i}", "not_before": now,
                     "not_after": now + dt.timedelta(days=1095),
                     "status": "revoked" if revoked else "active",
                     "reason": "keyCompromise" if revoked else None,
                     "revoked_at": now if revoked else None, "shard": 0, "der": b"",
                     "created_at": now, "status_changed_at": now if revoked else None})
    with auth.store.session() as session:  # type: ignore[attr-defined]
        for i in range(0, len(rows), 10_000):
            session.execute(insert(Certificate), rows[i:i + 10_000])
    return out


def openssl_responder(auth: object, tmp: Path, key_type: str) -> tuple[Path, Path, Path]:
    """An OCSP signing certificate from the same CA, with its key in a file (for openssl)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from pki.ca import responder
    from pki.signer import throwaway_key
    ca = next(c for c in auth.issuing_cas() if c.role == "PERSONNES")  # type: ignore[attr-defined]
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048) if key_type == "rsa2048"
        else ec.generate_private_key(ec.SECP256R1()))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = responder._builder(ca.certificate, key.public_key(), secrets.randbits(120), now,
                                 now + dt.timedelta(days=7))
    signer = auth.signer(ca.slug)  # type: ignore[attr-defined]
    draft = builder.sign(throwaway_key(signer.public_key), hashes.SHA256())
    der = responder._certificate_der(draft.tbs_certificate_bytes, signer.algorithm_identifier,
                                     signer.sign(draft.tbs_certificate_bytes))
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    rcert, rkey, cafile = tmp / "rsigner.pem", tmp / "rkey.pem", tmp / "ca.pem"
    rcert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    rkey.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cafile.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return rcert, rkey, cafile


def write_index(path: Path, serials: list[tuple[str, bool]]) -> None:
    exp = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1095)).strftime("%y%m%d%H%M%SZ")
    rev = dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M%SZ")
    with path.open("w") as fh:
        for i, (serial, revoked) in enumerate(serials):
            if revoked:
                fh.write(f"R\t{exp}\t{rev},keyCompromise\t{serial}\tunknown\t/CN=bench {i}\n")
            else:
                fh.write(f"V\t{exp}\t\t{serial}\tunknown\t/CN=bench {i}\n")
    path.with_suffix(".txt.attr").write_text("unique_subject = no\n")


def request_der(auth: object, serial: str) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    from pki.ocsp.response import issuer_hashes
    ca = next(c for c in auth.issuing_cas() if c.role == "PERSONNES")  # type: ignore[attr-defined]
    name_hash, key_hash = issuer_hashes(ca.certificate, "sha1")
    return ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, int(serial, 16), hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)


def key_description(der: bytes) -> str:
    """The responder key and signature algorithm of an OCSP response, as served."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509 import ocsp as cocsp
    answer = cocsp.load_der_ocsp_response(der)
    algorithm = answer.signature_algorithm_oid._name
    signer = answer.certificates[0].public_key() if answer.certificates else None
    if isinstance(signer, rsa.RSAPublicKey):
        return f"RSA-{signer.key_size} ({algorithm})"
    if isinstance(signer, ec.EllipticCurvePublicKey):
        return f"EC {signer.curve.name} ({algorithm})"
    return algorithm


def probe(url: str, body: bytes, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/ocsp-request"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ab(args: list[str], attempts: int = 3) -> dict[str, float]:
    """One ab run; retried when ab gives up (`openssl ocsp` sometimes stalls on a connection,
    and ab then aborts on its 10 s timeout instead of counting a failure)."""
    for attempt in range(attempts):
        proc = subprocess.run(["ab", "-q", "-r", "-s", "10", *args], capture_output=True,
                              text=True, timeout=240)
        out = proc.stdout
        rate = re.search(r"Requests per second:\s+([\d.]+)", out)
        if rate is not None:
            break
        print(f"  ab attempt {attempt + 1} failed: {proc.stderr.strip()[-200:]}", flush=True)
    else:
        raise RuntimeError("ab failed:\n" + out + proc.stderr)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = {int(p): float(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M)}
    return {"rate": float(rate.group(1)), "p50": pct.get(50, 0.0), "p99": pct.get(99, 0.0),
            "failed": float(failed.group(1)) if failed else 0.0,
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median rate (its own latency figures, failures summed over all)."""
    chosen = dict(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2])
    chosen["failed"] = sum(r["failed"] for r in runs)
    chosen["non2xx"] = sum(r["non2xx"] for r in runs)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--revoked-fraction", type=float, default=0.01)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--openssl-requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved ab rounds per side; the median is reported")
    from pki.config import OcspConfig
    parser.add_argument("--responder-key", default=OcspConfig.responder_key_type,
                        choices=["rsa2048", "p256"],
                        help="the project's responder key (default: the product default, "
                             "%(default)s)")
    parser.add_argument("--openssl-key", default="rsa2048", choices=["rsa2048", "p256"],
                        help="the key `openssl ocsp` signs with (default %(default)s)")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve[0], int(args.serve[1]), args.serve[2])
        return

    from pki.ca.authority import Authority
    from pki.ca.hierarchy import init_home
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ocsp-bench-"))
    home = tmp / "home"
    init_home(home, key_type="rsa2048")
    auth = Authority.open(home)
    serials = populate(auth, args.count, args.revoked_fraction)
    print(f"population: {args.count} certificates, {int(args.count * args.revoked_fraction)} "
          f"revoked ({time.monotonic() - t0:.1f} s)")
    good_serial = serials[-1][0]
    body = request_der(auth, good_serial)
    (tmp / "req.der").write_bytes(body)
    get_path = "/ocsp/" + quote(base64.b64encode(body).decode(), safe="")

    ours_port, ossl_port = free_port(), free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(home), str(ours_port),
                              args.responder_key], stdout=subprocess.PIPE, text=True,
                             cwd=str(ROOT))
    rcert, rkey, cafile = openssl_responder(auth, tmp, args.openssl_key)
    write_index(tmp / "index.txt", serials)
    ossl = subprocess.Popen(["openssl", "ocsp", "-index", str(tmp / "index.txt"), "-rsigner",
                             str(rcert), "-rkey", str(rkey), "-CA", str(cafile), "-port",
                             str(ossl_port), "-nmin", "60", "-rmd", "sha256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        ready = child.stdout.readline().strip()
        print(f"project responder ({args.responder_key} responder key): {ready}")
        fields = dict(kv.split("=") for kv in ready.split()[1:])
        ours_url = f"http://127.0.0.1:{ours_port}/ocsp"
        ossl_url = f"http://127.0.0.1:{ossl_port}/"
        from cryptography.x509 import ocsp as cocsp
        keys = {}
        for url in (ours_url, ossl_url):
            served = probe(url, body)
            answer = cocsp.load_der_ocsp_response(served)
            assert answer.certificate_status == cocsp.OCSPCertStatus.GOOD, url
            keys[url] = key_description(served)
        print(f"responder keys: project {keys[ours_url]}; openssl ocsp {keys[ossl_url]}"
              + ("" if args.responder_key == args.openssl_key else
                 "  <- NOT the same key type: the ratio is not like for like"))
        warm = ab(["-k", "-c", "4", "-n", "2000", "-p", str(tmp / "req.der"), "-T",
                   "application/ocsp-request", ours_url])
        del warm
        # Interleaved rounds, median of each: the machine is shared, so load from elsewhere
        # lands on both sides rather than on whichever ran during it.
        runs: dict[str, list[dict[str, float]]] = {"post": [], "get": [], "openssl": []}
        for _ in range(args.rounds):
            runs["post"].append(ab(["-k", "-c", "4", "-n", str(args.requests), "-p",
                                    str(tmp / "req.der"), "-T", "application/ocsp-request",
                                    ours_url]))
            runs["get"].append(ab(["-k", "-c", "4", "-n", str(args.requests),
                                   f"http://127.0.0.1:{ours_port}{get_path}"]))
            runs["openssl"].append(ab(["-c", "4", "-n", str(args.openssl_requests), "-p",
                                       str(tmp / "req.der"), "-T", "application/ocsp-request",
                                       ossl_url]))
        ours, ours_get, theirs = (median_run(runs[k]) for k in ("post", "get", "openssl"))
        rss = rss_kib(child.pid)
        per_cert = (int(fields["rss_after"]) - int(fields["rss_before"])) * 1024 / args.count
        record_size = int(fields["records_bytes"]) / int(fields["presigned"])
        estimate = (rss * 1024 + record_size * (2_000_000 - args.count)) / 2**20
        print(f"pre-signing: {fields['signed']} responses in {fields['seconds']} s "
              f"({int(fields['signed']) / max(float(fields['seconds']), 1e-9):.0f}/s through "
              f"SoftHSM, {args.responder_key})")
        for name, r in (("project POST (ab -k -c 4)", ours), ("project GET  (ab -k -c 4)",
                                                              ours_get),
                        ("openssl ocsp POST (ab -c 4)", theirs)):
            print(f"{name:30s} {r['rate']:10.0f} req/s   p50 {r['p50']:.0f} ms   "
                  f"p99 {r['p99']:.0f} ms   failed {r['failed']:.0f}  non-2xx {r['non2xx']:.0f}")
        for key, label in (("post", "project POST"), ("get", "project GET"),
                           ("openssl", "openssl POST")):
            rates = ", ".join(f"{r['rate']:.0f}" for r in runs[key])
            print(f"  {label} rounds (req/s): {rates}  [median shown above]")
        print(f"ratio project/openssl (POST): {ours['rate'] / theirs['rate']:.1f}x "
              f"(project {args.responder_key} key, openssl {args.openssl_key} key)")
        print(f"project responder RSS: {rss / 1024:.0f} MiB with {args.count} certificates "
              f"(RSS growth during load+pre-sign {per_cert:.0f} B/certificate, one-off costs "
              f"included; records alone {record_size:.0f} B/certificate by sys.getsizeof)")
        print(f"estimated RSS for 2,000,000 certificates (measured RSS + records x the other "
              f"{2_000_000 - args.count}): {estimate:.0f} MiB")
        print(f"total bench time {time.monotonic() - t0:.0f} s")
    finally:
        child.send_signal(signal.SIGTERM)
        ossl.terminate()
        for proc in (child, ossl):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        auth.close()


if __name__ == "__main__":
    main()
