"""Shared machinery of the reliability suite: child processes, kill -9, a private PostgreSQL,
store invariants, OCSP/CRL views, and the result records that docs/reliability.md is made of.

Everything that touches the HSM runs in a child process: SoftHSM is configured once per
process (SOFTHSM2_CONF), and the rest of the test session opens other homes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CPS_ADMIN = str(BIN / "cps-admin")
LONG = os.environ.get("CPS_RELIABILITY_LONG") == "1"
REPORT_DIR = os.environ.get("CPS_RELIABILITY_REPORT")
PERSONNES = "ac-igc-sante-fort-personnes"


def scale(short: int, long: int) -> int:
    return long if LONG else short


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- results ----------------------------------------------------------------------------

def record(area: str, fault: str, backend: str, trials: int, lost: int,
           checked: str = "", notes: str = "") -> None:
    """One row of docs/reliability.md (written only when CPS_RELIABILITY_REPORT is set)."""
    if not REPORT_DIR:
        return
    out = Path(REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    row = {"area": area, "fault": fault, "backend": backend, "trials": trials, "lost": lost,
           "checked": checked, "notes": notes, "long": LONG, "at": time.time()}
    name = "".join(c if c.isalnum() else "-" for c in f"{area}-{fault}-{backend}")[:120]
    (out / f"{name}.json").write_text(json.dumps(row, indent=2))


# --- child processes ----------------------------------------------------------------------

def env_for(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPS_RELIABILITY")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SOFTHSM2_CONF", None)
    if home is not None:
        env["CPS_HOME"] = str(home)
    return env


def admin(home: Path, *args: str, timeout: float = 600, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CPS_ADMIN, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=timeout, env=env_for(home), check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"cps-admin {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


class Children:
    """Every process a test starts, killed (whole process group) when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], *, home: Path | None = None, **kwargs: Any
              ) -> subprocess.Popen[Any]:
        kwargs.setdefault("env", env_for(home))
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def admin(self, home: Path, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return self.start([CPS_ADMIN, "--home", str(home), *args], home=home, **kwargs)

    @staticmethod
    def kill9(proc: subprocess.Popen[Any]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)

    @staticmethod
    def stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                Children.kill9(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                self.kill9(proc)
            else:   # its own children (spawned workers) may still be in the group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


def run_and_kill(kids: Children, cmd: list[str], home: Path, delay: float,
                 log: Path) -> tuple[bool, int | None]:
    """Start ``cmd``, kill -9 it (its whole group) after ``delay`` s; (killed, exit code)."""
    with log.open("ab") as out:
        proc = kids.start(cmd, home=home, stdout=out, stderr=out)
        try:
            proc.wait(delay)
            return False, proc.returncode
        except subprocess.TimeoutExpired:
            kids.kill9(proc)
            return True, None


# --- serving ------------------------------------------------------------------------------

def wait_health(base: str, proc: subprocess.Popen[Any], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(base + "/health", timeout=5) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{base} not healthy after {timeout} s")


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, content_type: str, timeout: float = 30
              ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ocsp_request(cert_der: bytes, issuer_der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    cert = x509.load_der_x509_certificate(cert_der)
    issuer = x509.load_der_x509_certificate(issuer_der)
    return (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
            .public_bytes(serialization.Encoding.DER))


def ocsp_status(base: str, cert_der: bytes, issuer_der: bytes) -> str:
    """good | revoked | unknown (or the HTTP/OCSP failure) from the server's responder."""
    from cryptography.x509 import ocsp

    status, body = http_post(base + "/ocsp", ocsp_request(cert_der, issuer_der),
                             "application/ocsp-request")
    if status != 200:
        return f"http-{status}"
    answer = ocsp.load_der_ocsp_response(body)
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status.name.lower()
    return answer.certificate_status.name.lower()


# --- store invariants ---------------------------------------------------------------------

@dataclass
class StoreView:
    certificates: int = 0
    serials: dict[str, str] = field(default_factory=dict)          # serial -> status
    revoked: set[str] = field(default_factory=set)                 # revoked or hold
    issue_audits: int = 0
    crls: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)  # slug -> rows
    ca_counter: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def store_url(home: Path) -> str:
    from pki.config import Config

    return Config.load(home).effective_db_url()


def inspect_store(url: str) -> StoreView:
    """Read the store (no HSM) and check what must always hold, whatever was killed when."""
    from cryptography import x509
    from sqlalchemy import func, select

    from pki.ca.authority import serial_hex
    from pki.store.db import Store
    from pki.store.models import AuditRecord, Certificate, CertificateAuthority, Crl

    store = Store(url)
    view = StoreView()
    try:
        with store.read() as session:
            cas = {c.id: c for c in session.execute(select(CertificateAuthority)).scalars()}
            der_serials: dict[int, int] = {}
            for row in session.execute(select(Certificate.serial, Certificate.status,
                                              Certificate.der, Certificate.ca_id,
                                              Certificate.profile)):
                view.certificates += 1
                if row.serial in view.serials:
                    view.problems.append(f"serial {row.serial} stored twice")
                view.serials[row.serial] = row.status
                if row.status in ("revoked", "hold"):
                    view.revoked.add(row.serial)
                cert = x509.load_der_x509_certificate(row.der)
                if serial_hex(cert.serial_number) != row.serial:
                    view.problems.append(f"row {row.serial}: DER serial "
                                         f"{serial_hex(cert.serial_number)} differs")
                key = cert.serial_number
                if key in der_serials:
                    view.problems.append(f"DER serial {serial_hex(key)} issued twice")
                der_serials[key] = row.ca_id
            view.issue_audits = session.execute(
                select(func.count()).select_from(AuditRecord)
                .where(AuditRecord.action == "cert.issue")).scalar_one()
            for crl in session.execute(select(Crl).order_by(Crl.id)).scalars():
                slug = cas[crl.ca_id].slug
                view.crls.setdefault(slug, []).append((crl.number, crl.kind, crl.id))
                parsed = x509.load_der_x509_crl(crl.der)
                number = parsed.extensions.get_extension_for_class(x509.CRLNumber).value
                if number.crl_number != crl.number:
                    view.problems.append(f"CRL row {crl.id} says #{crl.number}, DER says "
                                         f"#{number.crl_number}")
            for ca in cas.values():
                view.ca_counter[ca.slug] = ca.crl_number
        for slug, rows in view.crls.items():
            numbers = [n for n, _, _ in rows]
            if any(b <= a for a, b in itertools.pairwise(numbers)):
                view.problems.append(f"CRL numbers of {slug} not strictly increasing: "
                                     f"{numbers}")
            if numbers and view.ca_counter[slug] < numbers[-1]:
                view.problems.append(f"CRL counter of {slug} behind its CRLs")
        from pki.audit import verify

        report = verify(store)
        view.problems += [f"audit: {p}" for p in report.problems]
    finally:
        store.dispose()
    return view


def end_entity_count(url: str) -> int:
    """Certificates issued through issue_many with an audit link (not responder certs)."""
    from sqlalchemy import func, select

    from pki.store.db import Store
    from pki.store.models import Certificate

    store = Store(url)
    try:
        with store.read() as session:
            return int(session.execute(select(func.count()).select_from(Certificate).where(
                Certificate.profile.in_(("auth", "sign", "org")))).scalar_one())
    finally:
        store.dispose()


def crl_serials(der: bytes) -> dict[str, int | None]:
    """serial (store form) -> reason code (None when absent) of a DER CRL."""
    from cryptography import x509

    from pki.ca.authority import serial_hex

    crl = x509.load_der_x509_crl(der)
    out: dict[str, int | None] = {}
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            out[serial_hex(entry.serial_number)] = list(x509.ReasonFlags).index(reason)
        except x509.ExtensionNotFound:
            out[serial_hex(entry.serial_number)] = None
    return out


def crl_number(der: bytes) -> int:
    from cryptography import x509

    crl = x509.load_der_x509_crl(der)
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def cert_ders(url: str, serials: list[str] | None = None) -> dict[str, tuple[bytes, bytes]]:
    """serial -> (certificate DER, issuer DER)."""
    from sqlalchemy import select

    from pki.store.db import Store
    from pki.store.models import Certificate, CertificateAuthority

    store = Store(url)
    try:
        with store.read() as session:
            query = (select(Certificate.serial, Certificate.der, CertificateAuthority.cert_der)
                     .join(CertificateAuthority, Certificate.ca_id == CertificateAuthority.id)
                     .where(Certificate.profile.in_(("auth", "sign"))))
            rows = session.execute(query).all()
    finally:
        store.dispose()
    wanted = set(serials) if serials is not None else None
    return {r.serial: (r.der, r.cert_der) for r in rows if wanted is None or r.serial in wanted}


# --- a private PostgreSQL --------------------------------------------------------------------

def pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """An instance of our own (initdb + postgres in a temp dir, free port): killable at will.

    Never the machine's shared server. Runs as the ``postgres`` user when we are root.
    """

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not installed")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="cps-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[Any] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        else:
            self.prefix = []
        self.dir.chmod(0o700)
        subprocess.run([*self.prefix, str(bindir / "initdb"), "-D", str(self.data), "-A",
                        "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=180)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60) -> None:
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data), "-p",
             str(self.port), "-c", "listen_addresses=127.0.0.1", "-c",
             f"unix_socket_directories={self.dir}", "-c", "fsync=on", "-c",
             "max_connections=60"],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private postgres exited: "
                                   f"{(self.dir / 'postgres.log').read_text()[-2000:]}")
            try:
                import psycopg

                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres "
                                     f"dbname=postgres connect_timeout=2"):
                    return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("private postgres did not start")

    def kill(self) -> None:
        """kill -9 the postmaster and every backend (the whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        # Orphaned backends die when they notice the postmaster is gone; make sure.
        for pid in _pids_of(self.data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pids_of(data: Path) -> list[int]:
    """Processes whose command line names our data directory (only ours)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(data).encode() in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
    return out


def rng() -> random.Random:
    seed = int(os.environ.get("CPS_RELIABILITY_SEED", "0")) or random.SystemRandom().randrange(
        1, 2**31)
    print(f"reliability seed {seed} (set CPS_RELIABILITY_SEED to replay)")
    return random.Random(seed)
