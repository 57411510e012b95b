"""The tsa role as it runs: the ceremony's certificate, ``cps-admin serve --role tsa`` over HTTP
judged by ``openssl ts -verify`` with the home's root, replicas, bad HTTP input, and the
isolation rules of a public role that holds a key of its own (docs/roles.md)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from cps_sign.tsa import MAX_QUERY, TimeStampResp
from cps_sign.tsa_client import TsaError, build_query, timestamp, token_info
from pki.ca.hierarchy import init_home
from pki.ca.lint import lint_certificate
from pki.config import TSA_CHAIN_FILE, Config
from tests.tsa.helpers import BIN, TsaProcess, provision_tsa, root_certificate, running_tsa

ROOT = Path(__file__).resolve().parents[2]
as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="a mount namespace needs root (CI and make demo are)")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tsa") / "home"
    init_home(home, key_type="p256")
    provision_tsa(home)
    return home


@pytest.fixture(scope="module")
def tsa(home: Path) -> TsaProcess:
    with running_tsa(home) as running:
        yield running   # type: ignore[misc]


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def _post(url: str, body: bytes, content_type: str = "application/timestamp-query",
          method: str = "POST") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_the_ceremony_certifies_a_timestamping_key(home: Path) -> None:
    chain = x509.load_pem_x509_certificates((home / TSA_CHAIN_FILE).read_bytes())
    cert = chain[0]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert "ORGANISATIONS" in chain[1].subject.rfc4514_string()
    assert chain[-1].subject == chain[-1].issuer           # ends in the home's root
    assert lint_certificate(cert.public_bytes(serialization.Encoding.DER)) == []
    # OpenSSL's own purpose check for a time-stamping certificate.
    pem = home.parent / "chain-parts"
    pem.mkdir(exist_ok=True)
    for i, c in enumerate(chain):
        (pem / f"{i}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(["openssl", "verify", "-purpose", "timestampsign", "-CAfile",
                           pem / f"{len(chain) - 1}.pem", "-untrusted", pem / "1.pem",
                           pem / "0.pem"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_openssl_verifies_a_stamp_served_by_the_role(tsa: TsaProcess, home: Path,
                                                     tmp_path: Path) -> None:
    data = tmp_path / "report.pdf"
    data.write_bytes(b"%PDF-1.7 compte rendu\n")
    query = tmp_path / "q.tsq"
    made = subprocess.run(["openssl", "ts", "-query", "-data", data, "-sha256", "-cert",
                           "-out", query], capture_output=True, check=False)
    assert made.returncode == 0
    code, kind, body = _post(tsa.url, query.read_bytes())
    assert (code, kind) == (200, "application/timestamp-reply")
    reply = tmp_path / "r.tsr"
    reply.write_bytes(body)
    done = subprocess.run(["openssl", "ts", "-verify", "-in", reply, "-queryfile", query,
                           "-CAfile", root_certificate(home)], capture_output=True, text=True,
                          check=False)
    assert "Verification: OK" in done.stdout, done.stdout + done.stderr
    policy = Config.load(home).profiles.tsa_policy_oid
    assert token_info(TimeStampResp.load(body)["time_stamp_token"])["policy"].native == policy


def test_the_client_gets_a_token_and_a_refusal_says_why(tsa: TsaProcess) -> None:
    digest = hashlib.sha512(b"ordonnance").digest()
    token = timestamp(tsa.url, digest, "sha512")
    assert token_info(token)["message_imprint"]["hashed_message"].native == digest
    query = build_query(hashlib.sha1(b"x").digest(), "sha1").dump()
    code, _, body = _post(tsa.url, query)
    resp = TimeStampResp.load(body)
    assert code == 200
    assert resp["status"]["status"].native == "rejection"
    assert set(resp["status"]["fail_info"].native) == {"bad_alg"}
    with pytest.raises(TsaError, match="HTTP 404"):
        timestamp(tsa.base + "/nowhere", digest, "sha512")


def test_http_misuse_is_refused_and_the_role_keeps_serving(tsa: TsaProcess) -> None:
    assert _post(tsa.url, b"", method="GET")[0] == 405
    assert _post(tsa.url, b"\x30\x00", content_type="application/json")[0] == 415
    assert _post(tsa.url, b"\x30" * (MAX_QUERY + 1))[0] == 413
    for garbage in (b"", b"\x30", os.urandom(200)):
        code, _, body = _post(tsa.url, garbage)
        assert code == 200
        assert TimeStampResp.load(body)["status"]["status"].native == "rejection"
    assert timestamp(tsa.url, hashlib.sha256(b"still here").digest())


def test_concurrent_clients_all_get_their_own_token(tsa: TsaProcess) -> None:
    # SoftHSM aborts on concurrent calls on one session: the role's HSM lock must hold them.
    def stamp(i: int) -> tuple[bytes, bytes]:
        digest = hashlib.sha256(f"claim {i}".encode()).digest()
        token = timestamp(tsa.url, digest)          # checks the imprint and the nonce echo
        return digest, token_info(token)["message_imprint"]["hashed_message"].native

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(stamp, range(80)))
    assert all(asked == got for asked, got in pairs)
    assert len({asked for asked, _ in pairs}) == 80
    assert tsa.proc.poll() is None


def test_replicas_on_one_home_stamp_with_distinct_serials(tsa: TsaProcess, home: Path) -> None:
    digest = hashlib.sha256(b"claim").digest()
    with running_tsa(home) as second:
        serials = [token_info(timestamp(url, digest))["serial_number"].native
                   for url in (tsa.url, second.url) * 10]
    assert len(set(serials)) == len(serials)


def test_renewal_keeps_the_key_and_changes_the_serial(home: Path) -> None:
    before = x509.load_pem_x509_certificates((home / TSA_CHAIN_FILE).read_bytes())[0]
    done = subprocess.run([str(BIN / "cps-admin"), "--home", str(home), "tsa", "cert"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "existing key tsa:signing" in done.stdout
    after = x509.load_pem_x509_certificates((home / TSA_CHAIN_FILE).read_bytes())[0]
    assert after.serial_number != before.serial_number
    assert after.public_key() == before.public_key()
    listed = subprocess.run([str(BIN / "cps-admin"), "--home", str(home), "--json", "cert",
                             "list"], capture_output=True, text=True, timeout=60, check=False)
    assert after.serial_number in {int(row["serial"], 16) for row in json.loads(listed.stdout)}


# --- isolation -----------------------------------------------------------------------------

CONFINED = """
import sys
from pathlib import Path
from pki.config import Config
from pki.roles.confine import confine
home = Path(sys.argv[1]); role = sys.argv[2]
assert confine(role, Config.load(home)).applied
for name in ("root.pin", "ca.pin", "broker.pin", "tsa.pin", "tsa-so.pin"):
    try:
        print(name, "READABLE" if (home / "secrets" / name).read_bytes() else "empty")
    except FileNotFoundError:     # the whole folder covered (status)
        print(name, "absent")
"""


@as_root
def test_the_tsa_role_reads_its_own_pin_only(home: Path) -> None:
    done = _python(CONFINED, str(home), "tsa")
    assert done.returncode == 0, done.stderr
    seen = dict(line.split() for line in done.stdout.splitlines())
    assert seen == {"root.pin": "empty", "ca.pin": "empty", "broker.pin": "empty",
                    "tsa.pin": "READABLE", "tsa-so.pin": "empty"}


@as_root
@pytest.mark.parametrize("role", ["signer", "status", "broker", "patient"])
def test_the_other_roles_cannot_read_the_tsa_pin(home: Path, role: str) -> None:
    done = _python(CONFINED, str(home), role)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split() for line in done.stdout.splitlines())
    assert seen["tsa.pin"] in ("empty", "absent")
    assert seen["tsa-so.pin"] in ("empty", "absent")
    assert "READABLE" in seen.values() or role in ("status", "patient")   # its own PIN, if any


def test_the_tsa_pin_opens_no_ca_token(home: Path) -> None:
    script = """
import sys
from pathlib import Path
from pki.config import Config
from pki.errors import HsmPinIncorrect
from pki.hsm import Hsm
c = Config.load(Path(sys.argv[1]))
pin = c.read_secret(c.hsm.tsa_pin_file)
Hsm(c.hsm.module, c.hsm.tsa_token_label, pin, c.softhsm_conf_path()).close()
for label in (c.hsm.token_label, c.hsm.root_token_label, c.hsm.broker_token_label):
    try:
        Hsm(c.hsm.module, label, pin, c.softhsm_conf_path())
    except HsmPinIncorrect:
        print("refused", label)
    else:
        print("OPENED", label)
"""
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "CPS-CA", "refused", "CPS-ROOT", "refused",
                                   "CPS-BROKER"]


def test_the_role_refuses_to_start_beside_an_open_ca_token(home: Path) -> None:
    script = """
import sys
from pathlib import Path
from pki.config import Config
from pki.hsm import Hsm
from pki.roles.guard import RoleRefused
from pki.roles.tsa import run_tsa
home = Path(sys.argv[1]); c = Config.load(home)
ca = Hsm(c.hsm.module, c.hsm.token_label, c.read_secret(c.hsm.user_pin_file),
         c.softhsm_conf_path())
try:
    run_tsa(home, None, host="127.0.0.1", port=0)
except RoleRefused as exc:
    print("refused:", exc)
else:
    print("STARTED")
"""
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "CPS-CA" in done.stdout


def test_what_the_role_builds_holds_the_tsa_token_only(home: Path) -> None:
    script = """
import gc, sys
from pathlib import Path
from pki.config import Config
from pki.hsm import Hsm, HsmEcKey, HsmRsaKey, open_tokens
from pki.roles.tsa import load_authority, open_tsa_token
c = Config.load(Path(sys.argv[1]))
hsm = open_tsa_token(c)
authority = load_authority(c, hsm)
print("tokens", ",".join(open_tokens()))
print("keys", ",".join(sorted(hsm.labels())))
print("held", ",".join(sorted({o.label for o in gc.get_objects()
                                if isinstance(o, (HsmEcKey, HsmRsaKey))})))
"""
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tokens", "CPS-TSA", "keys", "tsa:signing", "held",
                                   "tsa:signing"]


def test_a_running_tsa_process_cannot_read_the_ca_pin(tsa: TsaProcess, home: Path) -> None:
    # Its start-up lines say what the confinement hid (root: hidden; else: said not hidden).
    log = tsa.log.read_text()
    assert "tsa pid" in log and "no CA key" in log
    if os.geteuid() == 0:
        hidden = next(line for line in log.splitlines() if "hidden from this role" in line)
        assert "secrets/ca.pin" in hidden and "secrets/tsa.pin" not in hidden
        # Its namespace's view, from outside (we hold CAP_SYS_PTRACE): the CA PIN is the
        # /dev/null cover, its own PIN is there.
        view = Path(f"/proc/{tsa.proc.pid}/root{home / 'secrets'}")
        assert (view / "ca.pin").read_bytes() == b""
        assert (view / "tsa.pin").read_bytes() == (home / "secrets" / "tsa.pin").read_bytes()


def test_a_home_made_before_the_tsa_gets_its_token_at_the_ceremony(tmp_path: Path) -> None:
    home = tmp_path / "old"
    made = _python("import sys; from pathlib import Path; from pki.config import HsmConfig\n"
                   "three = HsmConfig.tokens\n"
                   "HsmConfig.tokens = lambda self: three(self)[:3]   # root, CA, broker only\n"
                   "from pki.ca.hierarchy import init_home\n"
                   "init_home(Path(sys.argv[1]), key_type='p256')", str(home))
    assert made.returncode == 0, made.stderr
    assert not (home / "secrets" / "tsa.pin").exists()
    done = subprocess.run([str(BIN / "cps-admin"), "--home", str(home), "tsa", "cert"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created token CPS-TSA")
    assert (home / "secrets" / "tsa.pin").stat().st_mode & 0o777 == 0o600
    assert (home / TSA_CHAIN_FILE).stat().st_mode & 0o777 == 0o644
    assert len(x509.load_pem_x509_certificates((home / TSA_CHAIN_FILE).read_bytes())) == 3


def test_the_role_will_not_start_on_an_expired_certificate(home: Path) -> None:
    script = """
import datetime as dt, sys
from pathlib import Path
from pki.clock import FixedClock
from pki.config import Config
from pki.errors import ConfigError
from pki.roles.tsa import load_authority, open_tsa_token
c = Config.load(Path(sys.argv[1]))
hsm = open_tsa_token(c)
load_authority(c, hsm)                                   # valid today
try:
    load_authority(c, hsm, FixedClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=4000)))
except ConfigError as exc:
    print("refused:", exc)
"""
    done = _python(script, str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "cps-admin tsa cert" in done.stdout


def test_pyhanko_stamps_through_the_role_and_validates_the_token(tsa: TsaProcess,
                                                                 home: Path) -> None:
    """pyHanko's own RFC 3161 client and its TST validator (trust: the home's root only)."""
    import asyncio

    pytest.importorskip("pyhanko")
    from asn1crypto import x509 as asn1_x509
    from pyhanko.sign.timestamps import HTTPTimeStamper
    from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
    from pyhanko_certvalidator import ValidationContext

    root = asn1_x509.Certificate.load(x509.load_pem_x509_certificate(
        root_certificate(home).read_bytes()).public_bytes(serialization.Encoding.DER))
    digest = hashlib.sha256(b"feuille de soins").digest()

    async def stamp_and_check() -> dict[str, object]:
        token = await HTTPTimeStamper(tsa.url).async_timestamp(digest, "sha256")
        context = ValidationContext(trust_roots=[root], allow_fetching=False,
                                    revocation_mode="soft-fail")
        return await validate_tst_signed_data(token["content"], context, lambda _alg: digest)

    status = asyncio.run(stamp_and_check())
    assert status["intact"] is True and status["valid"] is True
    assert status["md_algorithm"] == "sha256"
    other = hashlib.sha256(b"autre").digest()

    async def wrong_imprint() -> dict[str, object]:
        token = await HTTPTimeStamper(tsa.url).async_timestamp(digest, "sha256")
        context = ValidationContext(trust_roots=[root], allow_fetching=False,
                                    revocation_mode="soft-fail")
        return await validate_tst_signed_data(token["content"], context, lambda _alg: other)

    assert asyncio.run(wrong_imprint())["intact"] is False


def test_a_cades_b_t_signature_carries_a_token_openssl_accepts(tsa: TsaProcess, home: Path,
                                                               tmp_path: Path) -> None:
    """pyHanko signs CAdES with a software key and asks the role for the signature time stamp
    (B-T); OpenSSL then verifies the embedded token over the signature value."""
    import asyncio

    pytest.importorskip("pyhanko")
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509
    from pyhanko.sign import signers
    from pyhanko.sign.timestamps import HTTPTimeStamper
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    from tests.tsa.helpers import software_tsa

    # Any signer will do here (the signer's own chain is the signature tests' business).
    material = software_tsa()
    key = material.authority.key
    signer = signers.SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(
            material.certificate.public_bytes(serialization.Encoding.DER)),
        signing_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        cert_registry=SimpleCertificateStore())
    content = b"<feuille-de-soins numero='42'/>"
    signed = asyncio.run(signer.async_sign_general_data(
        content, "sha256", detached=True, use_cades=True,
        timestamper=HTTPTimeStamper(tsa.url)))
    signer_info = signed["content"]["signer_infos"][0]
    tokens = [a["values"][0] for a in signer_info["unsigned_attrs"]
              if a["type"].native == "signature_time_stamp_token"]
    assert len(tokens) == 1
    imprint = hashlib.sha256(signer_info["signature"].native).hexdigest()
    token_file = tmp_path / "token.der"
    token_file.write_bytes(tokens[0].dump())
    done = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in", token_file,
                           "-digest", imprint, "-CAfile", root_certificate(home)],
                          capture_output=True, text=True, check=False)
    assert "Verification: OK" in done.stdout, done.stdout + done.stderr
    wrong = hashlib.sha256(content).hexdigest()       # over the content is not B-T's imprint
    done = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in", token_file,
                           "-digest", wrong, "-CAfile", root_certificate(home)],
                          capture_output=True, text=True, check=False)
    assert "Verification: OK" not in done.stdout
