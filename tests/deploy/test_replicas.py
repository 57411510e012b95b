"""Replicas, for real (issue #12 §4): HAProxy in front of two status and two broker replicas and
one signer, on PostgreSQL + Redis, each role its own ``cps-admin serve --role X`` process.

- a challenge fetched from one broker replica is accepted by the other (and refused as a
  replay by the first: the challenge lives in Redis, not in a process);
- a revocation made with ``cps-admin cert revoke`` is answered revoked by every status replica,
  queried directly, within 1 s of the command's return;
- under a bounded client load through HAProxy, ``kill -9`` of one status and one broker
  replica (their whole process group) costs the client no request;
- a replica started again joins in and answers the current status.

The tests share one deployment and run in file order (the kill comes after the revocation).
Select them with ``-m deploy``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from cps_login.proof import login_message
from pki import ids
from tests.deploy.conftest import HOST, Deployment, health
from tests.deploy.load import Call, LoadResult, run_load
from tests.reliability.helpers import free_port

pytestmark = [pytest.mark.deploy, pytest.mark.postgres, pytest.mark.timeout(300)]

# The broker answers every challenge problem with one error code; the audit record names it.
CHALLENGE_ERROR = "invalid_challenge"
CHALLENGE_PROBLEMS = {CHALLENGE_ERROR, "challenge_unknown", "challenge_replayed",
                      "challenge_expired", "challenge_store_full"}


@dataclass(frozen=True)
class Holder:
    """A professional whose "card" is a software P-256 key with a certificate from the CA."""

    rpps: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    issuer: x509.Certificate

    @property
    def serial(self) -> str:
        return f"{self.cert.serial_number:X}"

    def ocsp_request(self) -> bytes:
        return ocsp.OCSPRequestBuilder().add_certificate(
            self.cert, self.issuer, hashes.SHA1()).build().public_bytes(
            serialization.Encoding.DER)


def http(url: str, data: bytes | None = None, content_type: str = "application/json",
         timeout: float = 10, source: str | None = None) -> tuple[int, bytes]:
    """One request, from the address ``source`` when given (a client of this run)."""
    parts = urllib.parse.urlsplit(url)
    conn = HTTPConnection(parts.hostname or HOST, parts.port, timeout=timeout,
                          source_address=(source, 0) if source else None)
    try:
        headers = {"Content-Type": content_type} if data is not None else {}
        conn.request("POST" if data is not None else "GET", parts.path, body=data,
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ocsp_status(url: str, request: bytes) -> str:
    code, body = http(url + "/ocsp", request, "application/ocsp-request")
    assert code == 200, (url, code, body[:200])
    answer = ocsp.load_der_ocsp_response(body)
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status.name.lower()
    return answer.certificate_status.name.lower()


def issuer_slug(cert: x509.Certificate) -> str:
    cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(cn).lower().replace(" ", "-")


def new_holder(dep: Deployment, body: str, name: str) -> Holder:
    rpps = ids.luhn_complete(body)
    dep.admin("pro", "add", "--rpps", rpps, "--profession", "10", "--given-name", name,
              "--surname", "Replica")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256())
    csr_path, out = dep.tmp / f"{name}.csr", dep.tmp / f"{name}.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    dep.admin("cert", "issue", "--csr", str(csr_path), "--rpps", rpps, "--usage", "auth",
              "--out", str(out))
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    code, der = http(f"{dep.front}/ca/{issuer_slug(cert)}.crt")
    assert code == 200, f"issuer certificate not served through the front: HTTP {code}"
    return Holder(rpps, key, cert, x509.load_der_x509_certificate(der))


@pytest.fixture(scope="module")
def holders(deployment: Deployment) -> dict[str, Holder]:
    return {"login": new_holder(deployment, "1000777001", "Ada"),
            "revoked": new_holder(deployment, "1000777002", "Grace")}


def login_body(holder: Holder, challenge_b64: str, audience: str) -> bytes:
    """What ``cps_login.client.card_login`` posts, the card being a software key."""
    challenge = base64.b64decode(challenge_b64)
    signature = holder.key.sign(login_message(challenge, audience), ec.ECDSA(hashes.SHA256()))
    return json.dumps({
        "certificate": base64.b64encode(
            holder.cert.public_bytes(serialization.Encoding.DER)).decode(),
        "challenge": challenge_b64, "signature": base64.b64encode(signature).decode()}).encode()


def reason_of(body: bytes) -> str:
    try:
        answer: dict[str, Any] = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    return str(answer.get("reason") or answer.get("error") or answer)


def test_challenge_from_one_broker_is_accepted_by_the_other(
        deployment: Deployment, holders: dict[str, Holder]) -> None:
    broker1, broker2 = deployment.replicas["broker"]
    holder = holders["login"]
    me = deployment.client(1)
    code, body = http(broker1.url + "/login/challenge", b"{}", source=me)
    assert code == 200, body
    challenge = json.loads(body)["challenge"]
    # The audience is the broker's issuer URL: the public (HAProxy) address, same on both.
    proof = login_body(holder, challenge, deployment.front)
    code, body = http(broker2.url + "/login", proof, source=me)
    assert reason_of(body) not in CHALLENGE_PROBLEMS, body
    assert code == 200, f"login at broker 2 refused: HTTP {code} {body[:300]!r}"
    assert json.loads(body)["access_token"]
    # Used once, used everywhere: broker 1 (which issued it) now refuses it as a replay.
    code, body = http(broker1.url + "/login", proof, source=me)
    assert code == 401 and reason_of(body) == CHALLENGE_ERROR, body
    assert last_refusal(deployment)["reason"] == "challenge_replayed"


def last_refusal(deployment: Deployment) -> dict[str, Any]:
    """The details of the latest ``login.refused`` audit record (the broker's own words)."""
    out = deployment.admin("--json", "audit", "list", "--action", "login.refused", "--limit",
                           "1")
    rows = json.loads(out.stdout)
    assert rows, "no login.refused audit record"
    details = rows[-1]["details"]
    return details if isinstance(details, dict) else json.loads(details)


def test_revocation_reaches_every_status_replica_within_a_second(
        deployment: Deployment, holders: dict[str, Holder]) -> None:
    holder = holders["revoked"]
    request = holder.ocsp_request()
    replicas = deployment.replicas["status"]
    for replica in replicas:
        assert ocsp_status(replica.url, request) == "good", replica.url
    # Watchers poll each replica directly from before the command starts, so the time the
    # revocation first shows is known even when it lands while the command is still exiting.
    seen: dict[int, float] = {}
    last: dict[int, str] = {}
    stop = threading.Event()

    def watch(port: int, url: str) -> None:
        while not stop.is_set():
            last[port] = ocsp_status(url, request)
            if last[port] == "revoked":
                seen[port] = time.monotonic()
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=watch, args=(r.port, r.url)) for r in replicas]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        deployment.admin("cert", "revoke", holder.serial, "--reason", "keyCompromise")
        returned = time.monotonic()
        deadline = returned + 5.0
        while len(seen) < len(replicas) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after_return = {port: max(0.0, at - returned) for port, at in seen.items()}
    print(f"revoked on each status replica: "
          f"{ {port: round(at - started, 3) for port, at in seen.items()} } s after the command "
          f"started, { {port: round(s, 3) for port, s in after_return.items()} } s after it "
          f"returned (it ran {returned - started:.2f} s)")
    for replica in replicas:
        assert replica.port in seen, f"{replica.url} still says {last.get(replica.port)} 5 s " \
                                     f"after the revocation"
        assert after_return[replica.port] < 1.0, \
            f"{replica.url}: {after_return[replica.port]:.2f} s after the command returned"
    # The brokers check through the front: the revoked card no longer logs in.
    broker = deployment.replicas["broker"][0]
    me = deployment.client(2)
    code, body = http(broker.url + "/login/challenge", b"{}", source=me)
    challenge = json.loads(body)["challenge"]
    code, body = http(broker.url + "/login", login_body(holder, challenge, deployment.front),
                      source=me)
    assert code != 200 and "revoked" in body.decode(errors="replace"), body


def load_calls(holders: dict[str, Holder]) -> list[Call]:
    def expect(status: ocsp.OCSPCertStatus) -> Any:
        def check(body: bytes) -> str | None:
            answer = ocsp.load_der_ocsp_response(body)
            if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                return f"OCSP {answer.response_status.name}"
            got = answer.certificate_status
            return None if got == status else f"OCSP {got.name}, expected {status.name}"
        return check

    def challenge(body: bytes) -> str | None:
        value = json.loads(body).get("challenge", "")
        return None if len(base64.b64decode(value)) == 32 else f"bad challenge {body[:80]!r}"

    good, revoked = holders["login"].ocsp_request(), holders["revoked"].ocsp_request()
    ctype = "application/ocsp-request"
    return [Call("POST", "/ocsp", good, ctype, expect(ocsp.OCSPCertStatus.GOOD)),
            Call("POST", "/login/challenge", b"{}", "application/json", challenge),
            Call("POST", "/ocsp", revoked, ctype, expect(ocsp.OCSPCertStatus.REVOKED))]


def test_kill_9_of_a_status_and_a_broker_replica_loses_no_request(
        deployment: Deployment, holders: dict[str, Holder]) -> None:
    calls = load_calls(holders)
    result = LoadResult()
    threads, per_thread = 6, 200
    total = threads * per_thread
    # Six clients with their own addresses (one third of their requests are challenges: ~67
    # live each, under the broker's per-client limit of 100).
    sources = [deployment.client(11 + n) for n in range(threads)]
    load = threading.Thread(target=run_load, args=(HOST, deployment.front_port, calls),
                            kwargs={"threads": threads, "per_thread": per_thread,
                                    "pause": 0.03, "result": result, "sources": sources})
    load.start()
    while result.sent < total // 3 and load.is_alive():
        time.sleep(0.01)
    victims = [deployment.replicas["status"][0], deployment.replicas["broker"][0]]
    for victim in victims:
        deployment.kids.kill9(victim.proc)
    sent_at_kill = result.sent
    load.join(timeout=120)
    assert not load.is_alive(), "load did not finish"
    log = (deployment.tmp / "haproxy.log").read_text(errors="replace").splitlines()
    retried = [line for line in log if "/+" in line and '"POST' in line]
    print(f"load: {result.sent} requests in {result.seconds:.1f} s, kill -9 after "
          f"{sent_at_kill}, failures {len(result.failures)}, retried by HAProxy {len(retried)}")
    for victim in victims:
        assert victim.proc.poll() is not None, f"{victim.role} on {victim.port} still runs"
        assert not health(victim.url)
    assert result.sent == total
    assert total - sent_at_kill > total // 2, "the kill came too late to be under load"
    not_ok = [line for line in log if '"POST' in line and " 200 " not in line]
    assert result.failures == [], (f"{len(result.failures)} failed: {result.failures[:5]}; "
                                   f"HAProxy log, answers other than 200: {not_ok[:5]}")


def test_a_replica_started_again_serves_the_current_status(
        deployment: Deployment, holders: dict[str, Holder]) -> None:
    dead = deployment.replicas["status"][0]
    assert dead.proc.poll() is not None, "run after the kill test"
    again = deployment.start_role("status", dead.port, "status1-again")
    deployment.wait_healthy(again)
    assert ocsp_status(again.url, holders["revoked"].ocsp_request()) == "revoked"
    assert ocsp_status(again.url, holders["login"].ocsp_request()) == "good"




def test_public_roles_cannot_write_the_status_tables(deployment: Deployment) -> None:
    """The pen test's attack (issue 13), as each public role's database user: refused by
    PostgreSQL itself. Every role above already ran as its own user, so these grants are
    enough for the whole deployment."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    from pki.store.grants import PROTECTED

    attack = [
        "UPDATE certificate SET status = 'active', reason = NULL, revoked_at = NULL",
        "INSERT INTO status_event (certificate_id, ca_id, event, at) "
        "VALUES (1, 1, 'release', now())",
        "UPDATE ocsp_record SET seq = seq + 1", "DELETE FROM crl", "UPDATE ca SET crl_number = 0",
    ]
    for role in ("broker", "patient", "status"):
        engine = create_engine(deployment.role_db_url(role))
        try:
            for statement in attack:
                with engine.begin() as conn, pytest.raises(ProgrammingError,
                                                           match="permission denied"):
                    conn.execute(text(statement))
            with engine.connect() as conn:
                writable = set(conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND "
                    "has_table_privilege(current_user, format('%I.%I', schemaname, tablename), "
                    "'INSERT, UPDATE, DELETE, TRUNCATE')")).scalars())
        finally:
            engine.dispose()
        assert not writable & set(PROTECTED), f"{role} may write {writable & set(PROTECTED)}"
        if role == "status":
            assert writable == set(), f"the status role may write {writable}"


def test_patient_role_runs_as_its_own_user(deployment: Deployment) -> None:
    """The patient space under ``cps_patient``: ready, and a refused sign-in reads the patient
    tables and appends to the audit chain (its only writes outside its own tables)."""
    from sqlalchemy import create_engine, text

    patient = deployment.start_role("patient", free_port(), "patient1")
    deployment.wait_healthy(patient)
    code, body = http(patient.url + "/patient/signin", json.dumps(
        {"ins": "299999999999999", "password": "x" * 12, "totp": "000000"}).encode())
    assert code in (401, 403), (code, body)
    engine = create_engine(deployment.db_url)
    try:
        with engine.connect() as conn:
            refused = conn.execute(text("SELECT count(*) FROM audit_log WHERE action = "
                                        "'patient.signin_refused'")).scalar_one()
    finally:
        engine.dispose()
    assert refused == 1
