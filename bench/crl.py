"""CRL generation at national scale: the project (store -> DER -> SoftHSM) against `openssl ca`.

For each size (default 100k and 1M revoked entries) this

1. generates the revoked certificates inside the store of a fresh SoftHSM RSA-2048 home
   (one INSERT ... SELECT over a recursive CTE: a population for the bench, not the lifecycle
   path) and reads them back for the in-memory and openssl sides;
2. times ``publisher.publish_full`` end to end: number reservation, streaming the rows from the
   store, DER encoding, pkilint on the bounded sample, HSM signature, storing the CRL and its
   audit record, all in one transaction;
3. times the encoder + lint + HSM signature alone from an in-memory row list (no store);
4. measures the peak memory of ``publish_full`` in a child process (VmHWM - VmRSS before)
   against 3x the DER size;
5. times ``openssl ca -gencrl`` on the same entries (index.txt with R lines, RSA-2048 key,
   same reasons and keyCompromise times), and prints the ratio;
6. applies 100 status changes through the lifecycle (revoke/hold, which writes status events)
   and times ``publish_delta`` on top of the big base.

Usage: .venv/bin/python bench/crl.py [--sizes 100000,1000000] [--changes 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import insert

# The reasons `openssl ca` knows (it refuses privilegeWithdrawn and aACompromise).
REASONS = [None, "unspecified", "keyCompromise", "superseded", "cessationOfOperation",
           "affiliationChanged"]
OPENSSL_REASON = {None: "", "unspecified": ",unspecified"}


def insert_population(auth, slug: str, n: int) -> float:
    """n revoked certificates over the last year, generated inside SQLite (recursive CTE): a
    Python executemany of 10^6 rows takes minutes on a loaded machine, and this is only the
    bench's population, not CRL work. keyCompromise entries carry a compromise date."""
    ca = auth.ca(slug)
    reasons = ", ".join("NULL" if r is None else f"'{r}'" for r in REASONS)
    t0 = time.perf_counter()
    with auth.store.session() as s:
        conn = s.connection()
        # Random serials into a unique index thrash SQLite's default 2 MB page cache: give the
        # population a big cache (and restore the default before any CRL work is timed).
        conn.exec_driver_sql("PRAGMA cache_size = -1000000")
        # MATERIALIZED: each random() is drawn once per row, not once per reference. The
        # serials are canonical (no leading zero byte), as the store writes them.
        conn.exec_driver_sql(f"""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?),
            pop AS MATERIALIZED (SELECT printf('%02X', 1 + abs(random()) % 255)
                                  || hex(randomblob(15)) AS serial,
                           strftime('%Y-%m-%d %H:%M:%S.000000', 'now',
                                    '-' || (abs(random()) % 31536000) || ' seconds') AS at,
                           json_extract(json_array({reasons}),
                                        '$[' || (abs(random()) % {len(REASONS)}) || ']') AS reason
                    FROM seq)
            INSERT INTO certificate (serial, ca_id, profile, subject, not_before, not_after,
                status, reason, revoked_at, invalidity_date, shard, der, created_at,
                status_changed_at)
            SELECT serial, ?, 'bench', 'CN=bench', at,
                   strftime('%Y-%m-%d %H:%M:%S.000000', 'now', '+1000 days'), 'revoked', reason,
                   at, CASE WHEN reason = 'keyCompromise'
                            THEN strftime('%Y-%m-%d %H:%M:%S.000000', at, '-1 day') END,
                   0, x'', at, at
            FROM pop""", (n, ca.id))
        conn.exec_driver_sql("PRAGMA cache_size = -2000")
    raw = auth.store.engine.raw_connection()  # fold the WAL back, as a running system would
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return time.perf_counter() - t0


def read_population(auth, slug: str) -> list[tuple[str, str, str | None, str | None]]:
    """The bench rows back as the store holds them (serial, revoked_at text, reason, inv)."""
    ca = auth.ca(slug)
    with auth.store.read() as s:
        return [tuple(r) for r in s.connection().exec_driver_sql(
            "SELECT serial, revoked_at, reason, invalidity_date FROM certificate "
            "WHERE ca_id = ? AND profile = 'bench'", (ca.id,))]


def _openssl_time(text: str, *, generalized: bool = False) -> str:
    """`YYYY-MM-DD HH:MM:SS...` -> `YYMMDDHHMMSSZ` (or the 4-digit-year form)."""
    digits = text[:19].replace("-", "").replace(" ", "").replace(":", "")
    return (digits if generalized else digits[2:]) + "Z"


def openssl_side(rows, work: Path) -> tuple[float, int]:
    """`openssl ca -gencrl` over the same entries; returns (seconds, DER size)."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC BENCH OPENSSL")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (work / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (work / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    exp = (now + dt.timedelta(days=1000)).strftime("%y%m%d%H%M%SZ")
    with open(work / "index.txt", "w") as fh:
        for serial, revoked, reason, inv in rows:
            extra = OPENSSL_REASON.get(reason, f",{reason}")
            if inv is not None:     # openssl ca spells "keyCompromise with a date" keyTime
                extra = ",keyTime," + _openssl_time(inv, generalized=True)
            fh.write(f"R\t{exp}\t{_openssl_time(revoked)}{extra}\t{serial}\t"
                     f"unknown\t/CN=bench{serial}\n")
    (work / "index.txt.attr").write_text("unique_subject = no\n")
    (work / "crlnumber").write_text("01\n")
    (work / "openssl.cnf").write_text(f"""
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {work}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 7
crl_extensions = crl_ext
unique_subject = no
[ crl_ext ]
authorityKeyIdentifier = keyid:always
""")
    t0 = time.perf_counter()
    proc = subprocess.run(["openssl", "ca", "-gencrl", "-config", str(work / "openssl.cnf"),
                           "-out", str(work / "crl.pem")], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"openssl ca -gencrl failed: {proc.stderr.strip()}")
    der = subprocess.run(["openssl", "crl", "-in", str(work / "crl.pem"), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return elapsed, len(der)


def child_memory(home: str, slug: str) -> None:
    """Runs in a child: peak RSS growth of one publish_full, as JSON on stdout."""
    from pki.ca.authority import Authority
    from pki.crl import publisher

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    auth = Authority.open(Path(home))
    # Warm up (imports, pkilint, HSM session) on another online CA: the root's key is in the
    # offline token, which publish_full may not open.
    other = next(c.slug for c in auth.cas() if c.role != "ROOT" and c.slug != slug)
    publisher.publish_full(auth, other)
    before = status("VmRSS")
    out = publisher.publish_full(auth, slug)
    print(json.dumps({"before": before, "hwm": status("VmHWM"), "der": len(out[0].der)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        child_memory(*args.child_memory)
        return

    from pki.ca import lifecycle
    from pki.ca.authority import Authority, serial_hex
    from pki.ca.hierarchy import init_home
    from pki.ca.profiles import random_serial
    from pki.crl import builder, publisher
    from pki.crl.builder import CrlFields, EntryBuffer

    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="crl-bench-") as tmp:
        work = Path(tmp)
        for n in sizes:
            print(f"\n== {n:,} revoked entries ==")
            # A fresh home per size: deleting a previous population would pay SQLite's
            # foreign-key check (certificate.renewed_from_id) once per deleted row.
            home = work / f"home-{n}"
            t0 = time.perf_counter()
            init_home(home, key_type="rsa2048")
            print(f"home: SoftHSM RSA-2048, SQLite ({time.perf_counter() - t0:.1f} s to init)")
            auth = Authority.open(home)
            slug = auth.issuing_ca("PERSONNES").slug
            signer = auth.signer(slug)
            print(f"store population (generated in SQLite, not CRL work): "
                  f"{insert_population(auth, slug, n):.2f} s")
            rows = read_population(auth, slug)

            # Encoder + lint + HSM signature from memory (rows shaped as the store gives them).
            mem_rows = [(*r, "revoked") for r in rows]
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            t0 = time.perf_counter()
            buf = EntryBuffer()
            buf.extend(mem_rows)
            t_enc = time.perf_counter() - t0
            der = builder.build(CrlFields(auth.ca(slug).certificate, now,
                                          now + dt.timedelta(days=7), 10**9), buf, signer)
            t_mem = time.perf_counter() - t0
            del mem_rows, buf
            print(f"project, in-memory rows -> encode ({t_enc:.2f} s) + lint sample + "
                  f"HSM sign: {t_mem:.2f} s, {len(der):,} bytes")

            t0 = time.perf_counter()
            published = publisher.publish_full(auth, slug)
            t_proj = time.perf_counter() - t0
            size = len(published[0].der)
            assert published[0].entries == n
            x509.load_der_x509_crl(published[0].der)
            print(f"project, publish_full (stream from store, encode, lint, HSM sign, store, "
                  f"audit): {t_proj:.2f} s, {size:,} bytes")

            ossl_dir = work / f"openssl-{n}"
            ossl_dir.mkdir()
            t_ossl, ossl_size = openssl_side(rows, ossl_dir)
            print(f"openssl ca -gencrl (same entries, RSA-2048 file key, PEM out): "
                  f"{t_ossl:.2f} s, {ossl_size:,} bytes DER")
            print(f"ratio openssl / project: publish_full {t_ossl / t_proj:.2f}x, "
                  f"in-memory path {t_ossl / t_mem:.2f}x")

            mem = json.loads(subprocess.run(
                [sys.executable, __file__, "--child-memory", str(home), slug],
                check=True, capture_output=True, text=True).stdout)
            peak = mem["hwm"] - mem["before"]
            print(f"peak memory of publish_full (child VmHWM - VmRSS before): "
                  f"{peak / 2**20:.1f} MiB vs 3 x DER = {3 * mem['der'] / 2**20:.1f} MiB "
                  f"-> {'OK' if peak < 3 * mem['der'] else 'OVER'}")

            # Delta: status changes through the lifecycle (status_event rows) after the base.
            # Serials as the CA draws them (16 random bytes): a delta looks each one up in the
            # base by byte search, whose speed depends on the needle's length.
            changed = [serial_hex(random_serial()) for _ in range(args.changes)]
            _active(auth, slug, changed)
            base = publisher.publish_full(auth, slug)[0]
            for i, serial in enumerate(changed):
                if i % 2:
                    lifecycle.hold(auth, serial)
                else:
                    lifecycle.revoke(auth, serial, "keyCompromise")
            t0 = time.perf_counter()
            delta = publisher.publish_delta(auth, slug)[0]
            t_delta = time.perf_counter() - t0
            assert delta.base_number == base.number and delta.entries == args.changes
            print(f"delta CRL with {args.changes} changes on the {n:,}-entry base: "
                  f"{t_delta * 1000:.0f} ms, {len(delta.der):,} bytes")
            auth.close()


def _active(auth, slug: str, serials: list[str]) -> None:
    from pki.store.models import Certificate

    ca = auth.ca(slug)
    now = dt.datetime.now(dt.UTC)
    with auth.store.session() as s:
        s.execute(insert(Certificate), [
            {"serial": serial, "ca_id": ca.id, "profile": "bench", "subject": "CN=bench",
             "not_before": now, "not_after": now + dt.timedelta(days=1000), "status": "active",
             "shard": 0, "der": b"", "created_at": now} for serial in serials])


if __name__ == "__main__":
    main()
