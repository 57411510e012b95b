"""OCSP benchmark of the status role against `openssl ocsp`, same machine, same run.

    .venv/bin/python bench/ocsp.py [--count 100000] [--duration 10] [--connections 8]
                                   [--rounds 3] [--openssl-key rsa2048|p256]

The project side is the production shape: `cps-admin serve --role signer` pre-signs every
record into the store, and a separate `cps-admin serve --role status` process (no PKCS#11, no
PIN) answers from them. wrk drives it with bench/wrk/ocsp_mix.lua, cycling 1,000 distinct POST
requests: good, revoked and unknown serials (the unknown ones are sent once beforehand, so the
status replica has the signer's live answer cached, as it would after the first client asked).

The reference is `openssl ocsp -port` on the same certificates (an index.txt of the same
population), which signs every answer live. wrk cannot drive it (it answers one request per
connection and wedges on a connection closed without a request), so it gets `ab -k` with one
good request; rounds are interleaved, medians shown.

Prints responses/s, p50/p99, the ratio, and the RSS of the status process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # bench/ is sys.path[0] when run as a script

MIX = {"good": 0.8, "revoked": 0.1, "unknown": 0.1}
DISTINCT = 1000


def request_der(issuer: Any, serial: str) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    from pki.ocsp.response import issuer_hashes
    name_hash, key_hash = issuer_hashes(issuer, "sha1")
    return ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, int(serial, 16), hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)


def check_population(count: int, revoked_fraction: float) -> None:
    """Exit with a clear message when the population cannot feed ``mix``."""
    if count * revoked_fraction < DISTINCT * MIX["revoked"] \
            or count * (1 - revoked_fraction) < DISTINCT * MIX["good"]:
        raise SystemExit(f"error: {count:,} certificates with {revoked_fraction:.0%} revoked "
                         f"cannot give the request mix: it needs at least "
                         f"{DISTINCT * MIX['revoked']:.0f} revoked and "
                         f"{DISTINCT * MIX['good']:.0f} good certificates")


def mix(serials: list[tuple[str, bool]], issuer: Any) -> list[tuple[str, bytes]]:
    """DISTINCT requests (kind, DER) in the MIX proportions, shuffled."""
    rng = random.Random(12)
    good = [s for s, revoked in serials if not revoked]
    revoked = [s for s, r in serials if r]
    picked = ([("good", s) for s in rng.sample(good, int(DISTINCT * MIX["good"]))]
              + [("revoked", s) for s in rng.sample(revoked, int(DISTINCT * MIX["revoked"]))])
    while len(picked) < DISTINCT:
        picked.append(("unknown", f"{secrets.randbits(127) | (1 << 121):X}".zfill(32)))
    rng.shuffle(picked)
    return [(kind, request_der(issuer, serial)) for kind, serial in picked]


def post(url: str, body: bytes, timeout: float = 30) -> bytes:
    req = urllib.request.Request(url, data=body,
                                 headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def check_answers(url: str, requests: list[tuple[str, bytes]]) -> dict[str, str]:
    """Every request answered as its kind says (this also warms the unknown ones)."""
    from cryptography.x509 import ocsp
    seen: dict[str, str] = {}
    for kind, der in requests:
        answer = ocsp.load_der_ocsp_response(post(url, der))
        for _ in range(50):     # an unknown serial is signed live: the signer may be busy
            if answer.response_status != ocsp.OCSPResponseStatus.TRY_LATER:
                break
            time.sleep(0.1)
            answer = ocsp.load_der_ocsp_response(post(url, der))
        if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise SystemExit(f"error: {kind} request answered {answer.response_status.name}")
        got = answer.certificate_status.name.lower()
        if got != kind:
            raise SystemExit(f"error: a {kind} request was answered {got}")
        seen.setdefault(kind, key_description(answer))
    return seen


def key_description(answer: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    algorithm = answer.signature_algorithm_oid._name
    signer = answer.certificates[0].public_key() if answer.certificates else None
    if isinstance(signer, rsa.RSAPublicKey):
        return f"RSA-{signer.key_size} ({algorithm})"
    if isinstance(signer, ec.EllipticCurvePublicKey):
        return f"EC {signer.curve.name} ({algorithm})"
    return str(algorithm)


# --- the reference: openssl ocsp ---------------------------------------------------------------
def openssl_responder(auth: Any, tmp: Path, key_type: str) -> tuple[Path, Path, Path]:
    """An OCSP signing certificate from the same CA, its key in a file (for openssl)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from pki.ca import responder
    from pki.signer import throwaway_key
    ca = auth.issuing_ca("PERSONNES")
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048) if key_type == "rsa2048"
        else ec.generate_private_key(ec.SECP256R1()))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = responder._builder(ca.certificate, key.public_key(), secrets.randbits(120), now,
                                 now + dt.timedelta(days=7))
    signer = auth.signer(ca.slug)
    draft = builder.sign(throwaway_key(signer.public_key), hashes.SHA256())
    der = responder._certificate_der(draft.tbs_certificate_bytes, signer.algorithm_identifier,
                                     signer.sign(draft.tbs_certificate_bytes))
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


def probe(url: str, body: bytes, timeout: float = 60) -> bytes:
    """A real request until one is answered (a bare connect-and-close wedges openssl ocsp)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return post(url, body, timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ab(args: list[str], attempts: int = 3) -> dict[str, float]:
    """One ab run, retried when ab gives up on a stalled `openssl ocsp` connection."""
    for attempt in range(attempts):
        proc = subprocess.run(["ab", "-q", "-r", "-s", "10", *args], capture_output=True,
                              text=True, timeout=240, check=False)
        out = proc.stdout
        rate = re.search(r"Requests per second:\s+([\d.]+)", out)
        if rate is not None:
            break
        print(f"  ab attempt {attempt + 1} failed: {proc.stderr.strip()[-200:]}", flush=True)
    else:
        raise SystemExit("error: ab failed:\n" + out + proc.stderr)
    # ab counts an answer whose length differs from the first as "failed" (Length): ECDSA
    # signatures vary in length, so only connection, receive and exception errors count.
    failed = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)",
                       out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = {int(p): float(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M)}
    return {"rate": float(rate.group(1)), "p50": pct.get(50, 0.0), "p99": pct.get(99, 0.0),
            "failed": float(sum(int(g) for g in failed.groups())) if failed else 0.0,
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0}


# --- the run --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="certificates in the store")
    parser.add_argument("--revoked-fraction", type=float, default=0.01)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1: on a 2-CPU machine one core drives, "
                             "the other serves)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--openssl-requests", type=int, default=3000)
    parser.add_argument("--openssl-key", default="rsa2048", choices=["rsa2048", "p256"],
                        help="the key `openssl ocsp` signs with (default %(default)s, the "
                             "reference of issue #12's ~20x; p256 is the project's responder "
                             "key type, like for like)")
    args = parser.parse_args()
    check_population(args.count, args.revoked_fraction)

    from pki.ca.authority import Authority
    from pki.ca.hierarchy import init_home
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ocsp-bench-"))
    home = tmp / "home"
    init_home(home, key_type="p256")
    auth = Authority.open(home)
    serials = harness.populate_store(auth, args.count, args.revoked_fraction)
    issuer = auth.issuing_ca("PERSONNES").certificate
    print(f"population: {args.count} certificates, {int(args.count * args.revoked_fraction)} "
          f"revoked ({time.monotonic() - t0:.1f} s)", flush=True)
    requests = mix(serials, issuer)
    hexfile = tmp / "requests.hex"
    hexfile.write_text("".join(der.hex() + "\n" for _, der in requests))
    good_der = next(der for kind, der in requests if kind == "good")
    (tmp / "good.der").write_bytes(good_der)

    port, ossl_port = harness.free_port(), harness.free_port()
    signer = harness.start_role(home, "signer", tmp / "signer.log")
    status = harness.start_role(home, "status", tmp / "status.log", port=port)
    rcert, rkey, cafile = openssl_responder(auth, tmp, args.openssl_key)
    auth.close()
    write_index(tmp / "index.txt", serials)
    ossl = subprocess.Popen(["openssl", "ocsp", "-index", str(tmp / "index.txt"), "-rsigner",
                             str(rcert), "-rkey", str(rkey), "-CA", str(cafile), "-port",
                             str(ossl_port), "-nmin", "60", "-rmd", "sha256", "-timeout", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [status, signer]
    try:
        url = f"http://127.0.0.1:{port}"
        ready = harness.wait_until(lambda: harness.healthy(url), status, tmp / "status.log",
                                   "status role", timeout=1800)
        harness.wait_until(lambda: harness.unix_healthy(home / "run" / "signer.sock"), signer,
                           tmp / "signer.log", "signer", timeout=1800)
        print(f"status role ready {ready:.1f} s after start (signer pre-signing included)")
        keys = check_answers(url + "/ocsp", requests)
        from cryptography.x509 import ocsp
        theirs_key = key_description(ocsp.load_der_ocsp_response(
            probe(f"http://127.0.0.1:{ossl_port}/", good_der)))
        print(f"responder keys: status role {keys['good']}; openssl ocsp {theirs_key}"
              + ("" if args.openssl_key == "p256" else
                 "  <- not the same key type: openssl signs every answer live with it"))
        print(f"mix: {DISTINCT} distinct requests "
              + ", ".join(f"{k} {sum(1 for kind, _ in requests if kind == k)}" for k in MIX)
              + " (every answer checked before the runs)", flush=True)
        script = harness.WRK_DIR / "ocsp_mix.lua"
        harness.wrk(url, script=script, script_args=(str(hexfile),), threads=args.threads,
                    connections=args.connections, duration=2)            # warm-up
        runs: dict[str, list[dict[str, float]]] = {"status": [], "openssl": []}
        for _ in range(args.rounds):
            runs["status"].append(harness.wrk(
                url, script=script, script_args=(str(hexfile),), threads=args.threads,
                connections=args.connections, duration=args.duration))
            runs["openssl"].append(ab(["-k", "-c", "1", "-n",
                                       str(args.openssl_requests), "-p", str(tmp / "good.der"),
                                       "-T", "application/ocsp-request",
                                       f"http://127.0.0.1:{ossl_port}/"]))
        ours, ref = harness.median(runs["status"]), harness.median(runs["openssl"])
        rss = harness.tree_kib(status.pid) / 1024
        peak = harness.tree_kib(status.pid, "VmHWM") / 1024
        print()
        print(f"{'':34s} {'responses/s':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'failed':>7s}")
        print(f"{'status role (wrk, 1,000-req mix)':34s} {ours['rate']:12.0f} "
              f"{ours['p50']:8.2f} {ours['p99']:8.2f} {ours['non2xx'] + ours['errors']:7.0f}")
        print(f"{'openssl ocsp (ab -k -c1, one req.)':34s} {ref['rate']:12.0f} "
              f"{ref['p50']:8.2f} {ref['p99']:8.2f} {ref['failed'] + ref['non2xx']:7.0f}")
        print(f"ratio status/openssl: {ours['rate'] / ref['rate']:.1f}x   "
              f"(goal >= 70k/s, ~20x)")
        for key, label in (("status", "status"), ("openssl", "openssl")):
            print(f"  {label} rounds (responses/s): "
                  + ", ".join(f"{r['rate']:.0f}" for r in runs[key]))
        print(f"status process RSS {rss:.0f} MiB (peak {peak:.0f} MiB) with {args.count} "
              f"certificates; wrk -t{args.threads} -c{args.connections} "
              f"-d{args.duration}s x {args.rounds}")
        print(f"total bench time {time.monotonic() - t0:.0f} s")
    finally:
        for proc in procs:
            harness.stop(proc)
        ossl.terminate()
        ossl.wait(10)


if __name__ == "__main__":
    main()
