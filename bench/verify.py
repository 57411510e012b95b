"""CAdES B-LT verification throughput: ``cps-verify --batch`` beside ``openssl cms -verify``
and pyHanko's validator over the same batch, in the same run.

    .venv/bin/python bench/verify.py [--signatures 2000] [--cards 20] [--sample 200]

A fresh SoftHSM home (SQLite) with its status server (OCSP, CRLs) in this process; ``--cards``
professionals with software keys certified by the home's CA; ``--signatures`` care claims
(~1 KiB each, all distinct) signed CAdES B-LT through ``cps_sign.signing.sign_cades``: the
time stamp from a local TSA whose certificate our ORGANISATIONS CA issued, the chain and the
OCSP responses of the card and of the TSA certificate embedded. The batch is written as
FILE + FILE.p7s pairs.

Measured (verifications per CPU-second: user + system time of the verifying process(es)):

* ``cps-verify --batch DIR --offline``: the whole command, process start and imports included;
  revocation from what each signature embeds.
* ``cps-verify --batch DIR``: the same with the status tier asked (once per card: a warm cache
  from the second signature of a card on).
* the verifier in this process, warm (every card seen once): the steady state of a relying
  service (``POST /verify``, a long-running batch).
* ``openssl cms -verify`` on ``--sample`` pairs of the same batch, one process per pair (its
  command line verifies one signature): signature, chain to the same CA file; no revocation.
* pyHanko's validator (``async_validate_detached_cms``) on ``--sample`` pairs, with a
  ValidationContext holding our root and the embedded OCSP responses (no fetching); its
  revocation rule for the signer is "check if declared, soft": with OCSP_REQUIRED it finds none
  of our pre-signed responses applicable (InsufficientRevinfoError; not investigated further).

The hand-written part of the verifier, ``cps_sign.fastcms`` (the parts of a CMS read with
asn1crypto's TLV parser instead of its CMS classes), is timed against the same verifier reading
with asn1crypto's classes only: that difference is why it exists.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # bench/ is sys.path[0] when run as a script
from asn1crypto import cms
from asn1crypto import ocsp as asn1_ocsp
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from cps_sign.card_signer import CardSigner
from cps_sign.fetch import fetch_ocsp
from cps_sign.revocation import LiveRevocation
from cps_sign.signing import asn1_cert, sign_cades
from cps_sign.testing import LocalTsa, SoftwareCard
from cps_sign.verify import Verifier
from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.cards.card import HolderData, Usage
from pki.cli.tsa import TSA_COMMON_NAME, _operator_structure
from pki.crl.service import CrlService
from pki.http.server import HttpServer
from pki.ocsp.endpoint import OcspEndpoint
from pki.ocsp.service import OcspService
from pki.store.models import Professional

VERIFY = str(Path(sys.executable).with_name("cps-verify"))
PIN = "1234"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall s, CPU s of the child, result)."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    return time.perf_counter() - t0, children_cpu() - cpu0, proc


def make_cards(auth: Authority, count: int) -> list[SoftwareCard]:
    cards = []
    for n in range(count):
        rpps = ids.luhn_complete(f"10{500 + n:08d}")
        with auth.store.session() as session:
            session.add(Professional(rpps=rpps, profession_code=10, given_name=f"P{n}",
                                     surname="Bench", created_at=dt.datetime.now(dt.UTC)))
        keys: dict[Usage, rsa.RSAPrivateKey] = {u: rsa.generate_private_key(65537, 2048)
                                                for u in ("auth", "sign")}
        certs = {u: auth.issue(IssueRequest(profile=u, public_key=keys[u].public_key(),
                                            rpps=rpps, key_storage="card")).certificate
                 for u in ("auth", "sign")}
        cards.append(SoftwareCard(HolderData(rpps, f"P{n}", "Bench", 10), keys, certs, PIN))
    return cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=20)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    port = harness.free_port()
    home = tmp / "home"
    init_home(home, key_type="rsa2048", base_url=f"http://127.0.0.1:{port}")
    auth = Authority.open(home)
    crl = CrlService(auth)
    crl.load()
    ocsp_service = OcspService(auth, poll_interval=0.1)
    lifecycle.add_listener(auth, ocsp_service.on_status_change)
    org = auth.issuing_ca("ORGANISATIONS")
    tsa_key = rsa.generate_private_key(65537, 2048)
    # the TSA certificate from the store (the `tsa` profile), so that our responder answers
    # for it: B-LT embeds its OCSP response as well as the card's
    tsa_cert = auth.issue(IssueRequest(profile="tsa", public_key=tsa_key.public_key(),
                                       structure_id=_operator_structure(auth),
                                       common_name=TSA_COMMON_NAME, key_storage="hsm"),
                          actor="bench").certificate
    tsa = LocalTsa(tsa_cert, tsa_key, [org.certificate])
    handlers = [OcspEndpoint(ocsp_service), crl.handler, tsa.handler]
    harness.serve_in_thread(HttpServer(handlers), port)
    issuing = auth.issuing_ca("PERSONNES").certificate
    root = next(c.certificate for c in auth.cas() if c.role == "ROOT")
    policy = auth.config.profiles.sign_policy_oid
    cards = make_cards(auth, args.cards)
    ocsp_service.start(wait=True, timeout=300)
    for ca in auth.issuing_cas():
        crl.publish_full(ca)
    ocsp_der = {id(c): fetch_ocsp(c.certs["sign"], issuing) for c in cards}
    tsa_ocsp = fetch_ocsp(tsa_cert, org.certificate)

    batch = tmp / "batch"
    batch.mkdir()
    t0 = time.perf_counter()
    for i in range(args.signatures):
        card = cards[i % len(cards)]
        claim = (f"FSE {i:07d} {dt.date.today()} patient {os.urandom(8).hex()}\n".encode()
                 + os.urandom(512).hex().encode())
        der = ocsp_der[id(card)]
        signature = sign_cades(claim, CardSigner(card, PIN), level="B-LT",
                               timestamper=tsa.stamper, chain=[issuing, root],
                               ocsp_for=lambda der=der: der,  # type: ignore[misc]
                               tsa_ocsp_for=lambda cert, others: tsa_ocsp)
        (batch / f"claim{i:07d}.txt").write_bytes(claim)
        (batch / f"claim{i:07d}.txt.p7s").write_bytes(signature)
    signing = time.perf_counter() - t0
    n = args.signatures
    print(f"batch: {n} CAdES B-LT signatures by {len(cards)} cards, signed in {signing:.1f} s "
          f"({n / signing:.0f}/s, software keys + local TSA)")
    (tmp / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM)
                                             for c in (issuing, root)))
    rows: list[tuple[str, float, float, str]] = []

    # 1-2. cps-verify --batch: a relying party's trust file, and the home's store
    one = tmp / "one"
    one.mkdir()
    for name in ("claim0000000.txt", "claim0000000.txt.p7s"):
        (one / name).write_bytes((batch / name).read_bytes())
    pem = ["--trust", str(tmp / "chain.pem"), "--policy", policy]
    for label, extra in (("cps-verify --batch --trust PEM --offline (embedded OCSP)",
                          [*pem, "--offline"]),
                         ("cps-verify --batch --home (store, status tier, warm)",
                          ["--home", str(home)])):
        _, cpu_one, _ = run_child([VERIFY, "--batch", str(one), *extra])
        wall, cpu, proc = run_child([VERIFY, "--batch", str(batch), *extra])
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
        if proc.returncode != 0 or not tail.startswith(f"{n} of {n} TOTAL_PASSED"):
            raise SystemExit(f"error: {label}: exit {proc.returncode}: {tail[-300:]}")
        rows.append((label, n / cpu, n / wall, f"whole command (start-up {cpu_one:.2f} s CPU)"))
        rows.append(("  the same, start-up excluded", (n - 1) / (cpu - cpu_one),
                     n / wall, "(CPU of the batch - CPU of a 1-pair batch)"))

    # 3. the verifier in this process, warm; and with asn1crypto's CMS classes only
    pairs = sorted(p for p in batch.iterdir() if not p.name.endswith(".p7s"))
    loaded = [(p.read_bytes(), p.with_name(p.name + ".p7s").read_bytes()) for p in pairs]
    for label, live, fast in (
            ("verifier in process, embedded OCSP", None, True),
            ("verifier in process, status tier (warm cache)", LiveRevocation(), True),
            ("verifier in process, asn1crypto CMS classes only", None, False)):
        verifier = Verifier([root], [issuing], [policy], live=live, fast=fast)
        for content, sig in loaded[: len(cards)]:
            verifier.verify_cades(content, sig)           # warm: each card seen once
        cpu0, w0 = time.process_time(), time.perf_counter()
        passed = sum(verifier.verify_cades(content, sig).passed for content, sig in loaded)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - w0
        if passed != n:
            raise SystemExit(f"error: {label}: {passed} of {n} passed")
        rows.append((label, n / cpu, n / wall, "steady state"))

    # 4. openssl cms -verify, one process per pair
    sample = pairs[: args.sample]
    cpu0, w0 = children_cpu(), time.perf_counter()
    for path in sample:
        proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                               str(path) + ".p7s", "-content", str(path), "-CAfile",
                               str(tmp / "chain.pem"), "-purpose", "any", "-out", os.devnull],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"error: openssl refused {path.name}: {proc.stderr[-300:]!r}")
    cpu, wall = children_cpu() - cpu0, time.perf_counter() - w0
    rows.append((f"openssl cms -verify ({len(sample)} pairs)", len(sample) / cpu,
                 len(sample) / wall, "one process per signature; no revocation"))

    # 5. pyHanko's validator, embedded OCSP in its ValidationContext
    from pyhanko.sign.validation.generic_cms import async_validate_detached_cms
    from pyhanko_certvalidator import ValidationContext
    from pyhanko_certvalidator.policy_decl import (
        CertRevTrustPolicy,
        RevocationCheckingPolicy,
        RevocationCheckingRule,
    )

    context = ValidationContext(trust_roots=[asn1_cert(root)],
                                other_certs=[asn1_cert(issuing)],
                                ocsps=[asn1_ocsp.OCSPResponse.load(d)
                                       for d in [*ocsp_der.values(), tsa_ocsp]],
                                allow_fetching=False,
                                revinfo_policy=CertRevTrustPolicy(RevocationCheckingPolicy(
                                    ee_certificate_rule=RevocationCheckingRule.
                                    CHECK_IF_DECLARED_SOFT,
                                    intermediate_ca_cert_rule=RevocationCheckingRule.NO_CHECK)))

    async def pyhanko_all() -> int:
        ok = 0
        for content, sig in loaded[: len(sample)]:
            signed = cms.ContentInfo.load(sig)["content"]
            status = await async_validate_detached_cms(
                content, signed, signer_validation_context=context,
                ts_validation_context=context)
            ok += bool(status.bottom_line)
        return ok

    cpu0, w0 = time.process_time(), time.perf_counter()
    ok = asyncio.run(pyhanko_all())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - w0
    rows.append((f"pyHanko async_validate_detached_cms ({len(sample)})", len(sample) / cpu,
                 len(sample) / wall, f"{ok} of {len(sample)} passed its bottom line"))

    print(f"\n{'verifier':<58} {'per CPU-s':>10} {'per wall-s':>11}  note")
    for label, per_cpu, per_wall, note in rows:
        print(f"{label:<58} {per_cpu:>10,.0f} {per_wall:>11,.0f}  {note}")
    whole, marginal = rows[0][1], rows[1][1]
    fast, classes = rows[4][1], rows[6][1]
    openssl, pyhanko = rows[7][1], rows[8][1]
    print(f"\ncps-verify --batch (trust PEM, embedded OCSP), per CPU-second: {whole:,.0f} whole "
          f"command, {marginal:,.0f} start-up excluded = {whole / openssl:.1f}x / "
          f"{marginal / openssl:.1f}x openssl cms -verify, {whole / pyhanko:.0f}x / "
          f"{marginal / pyhanko:.0f}x pyHanko's validator; goal >= 2,000/s per core: "
          f"{'met' if whole >= 2000 else 'start-up excluded' if marginal >= 2000 else 'NOT met'}")
    print(f"why cps_sign.fastcms: the verifier reading CMS with asn1crypto's classes only does "
          f"{classes:,.0f}/s, with the fast reader {fast:,.0f}/s ({fast / classes:.1f}x)")
    auth.close()
    ocsp_service.stop()
    if os.environ.get("BENCH_KEEP"):
        print(f"kept: {tmp}")


if __name__ == "__main__":
    main()
