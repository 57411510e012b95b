"""Fuzz targets: every parser that takes outside input, one function ``bytes -> None`` each.

A target returns normally or raises one of the product's typed refusals (``ALLOWED``); anything
else escaping it is a crash. The same targets serve three drivers:

- coverage-guided: ``python -m tests.reliability.fuzz_main NAME [libFuzzer flags] [CORPUS]``
  (atheris, pki and cps_login instrumented; ``test_fuzz.py`` runs it with a time budget);
- property-based: ``test_fuzz.py`` feeds them hypothesis-generated structured inputs;
- regression: every file of ``tests/vectors/<NAME>/`` is replayed through ``NAME``.

``http_request`` drives the status role's HTTP server (head parser, chunked body decoder,
pipelining, limits) through its protocol object with an in-memory transport.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cps_login.broker import LoginRequest, LoginService
from cps_login.errors import CredentialRefused
from cps_login.pathcheck import check_usage, holder_of
from cps_login.proof import login_message
from cps_login.tokens import TokenValidator
from pki.ca.authority import load_csr
from pki.cards.errors import CardError
from pki.cards.sim.softcard import SoftCard
from pki.cards.sim.store import CardFile
from pki.directory import decode_csv, parse_csv
from pki.errors import PkiError
from pki.http import Request, Response
from pki.http.server import HttpProtocol, HttpServer, Limits
from pki.ocsp.request import MalformedRequest, fast_single_sha1, parse_request

# MalformedRequest is a ValueError by contract (pki.ocsp.request); the rest are PkiError/CardError.
ALLOWED: tuple[type[BaseException], ...] = (PkiError, CardError, MalformedRequest)
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
BROKER = "http://127.0.0.1:8080"
ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "cps-api"
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


class FixedNow:
    def now(self) -> dt.datetime:
        return NOW


# --- OCSP requests --------------------------------------------------------------------------------

def ocsp_request(data: bytes) -> None:
    fast = fast_single_sha1(data)
    try:
        request = parse_request(data)
    except MalformedRequest:
        assert fast is None, "fast path accepted what the full parser refuses"
        return
    if fast is not None:   # the fast path must agree with the full parser
        cid = request.cert_ids[0]
        assert len(request.cert_ids) == 1 and request.nonce is None
        assert (cid.hash_name, cid.issuer_name_hash, cid.issuer_key_hash, cid.serial) == (
            "sha1", *fast), "fast path and full parser disagree"


# --- CSRs -----------------------------------------------------------------------------------------

def csr(data: bytes) -> None:
    with contextlib.suppress(PkiError):
        load_csr(data)


# --- CSV directory extracts -----------------------------------------------------------------------

def directory_csv(data: bytes) -> None:
    with contextlib.suppress(PkiError):
        parse_csv(decode_csv(data))


# --- APDUs at the software card -------------------------------------------------------------------

@cache
def _card_template() -> bytes:
    """A personalised card file (keys on the card, PIN 1234, PUK 12345678)."""
    from pki.cards.card import HolderData
    from pki.cards.pcsc import PcscCard
    from pki.cards.personalise import personalise
    from pki.cards.testing import ThrowawayIssuer

    class Loopback(PcscCard):
        def __init__(self, card: SoftCard) -> None:
            super().__init__(None, None, 0, "loopback")
            self.soft = card

        def transmit_raw(self, raw: bytes) -> bytes:
            return self.soft.process(raw)

        @contextlib.contextmanager
        def transaction(self) -> Iterator[None]:
            yield

    path = Path(tempfile.mkdtemp(prefix="cps-fuzz-card-")) / "card.json"
    card = Loopback(SoftCard(CardFile(path)))
    holder = HolderData("10003456789", "Jeanne", "Martin", 10, "Médecin")
    personalise(card, holder, ThrowawayIssuer().callback(holder), "1234", key_type="p256")
    return path.read_bytes()


@cache
def _card() -> SoftCard:
    path = Path(tempfile.mkdtemp(prefix="cps-fuzz-card-")) / "card.json"
    path.write_bytes(_card_template())
    return SoftCard(CardFile(path))


def apdu_sequence(apdus: list[bytes]) -> None:
    """Send APDUs to a personalised card (state kept between them, reset before)."""
    card = _card()
    card.card_file.path.write_bytes(_card_template())
    card.reset()
    for raw in apdus:
        reply = card.process(raw)
        assert isinstance(reply, bytes) and len(reply) >= 2, reply


def frame_apdus(apdus: list[bytes]) -> bytes:
    return b"".join(len(a).to_bytes(3, "big") + a for a in apdus)


def apdu(data: bytes) -> None:
    """Input = APDUs, each after a 3-byte big-endian length (``frame_apdus``)."""
    apdus, i = [], 0
    while i + 3 <= len(data) and len(apdus) < 16:
        n = int.from_bytes(data[i:i + 3], "big")
        apdus.append(data[i + 3:i + 3 + n])
        i += 3 + n
    apdu_sequence(apdus or [data])


# --- login requests -------------------------------------------------------------------------------

@cache
def _login_key() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "81000345678")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert


class _Audit:
    """Audit sink stub: the service must record every refusal (counted here)."""

    def __init__(self) -> None:
        self.records = 0

    def record(self, *_args: Any, **_kwargs: Any) -> None:
        self.records += 1


class _Challenges:
    def consume(self, _value: bytes) -> None:   # every challenge accepted: reach the proof
        return None


class _Paths:
    def validate(self, leaf: x509.Certificate, *_args: Any) -> Any:
        # Beyond the proof of possession: the usage checks the broker makes, then stop.
        check_usage(leaf, "1.2.250.1.213.1.7.1.1.1.5.1")
        holder_of(leaf)
        raise CredentialRefused("other_ca")


def login_json(body: Any) -> None:
    """The real LoginService.login, as POST /login calls it, up to the path validation."""
    if isinstance(body, dict):
        try:
            request = LoginRequest.from_json(body)
        except CredentialRefused:
            request = LoginRequest(b"", (), b"", b"")
    else:
        request = LoginRequest(b"", (), b"", b"")
    audit = _Audit()
    service = LoginService(store=None, clock=FixedNow(), challenges=_Challenges(),  # type: ignore[arg-type]
                           paths=_Paths(), revocation=None, tokens=None,  # type: ignore[arg-type]
                           audit=audit, issuer=BROKER, audience=AUDIENCE,  # type: ignore[arg-type]
                           auth_policy_oid="1.2.250.1.213.1.7.1.1.1.5.1")
    try:
        service.login(request)
    except PkiError:
        assert audit.records == 1, "a refused login left no audit record"
        return
    raise AssertionError("a login passed with stub path validation")


def login(data: bytes) -> None:
    try:
        body = json.loads(data)
    except ValueError:
        return     # Flask's get_json(silent=True) gives None: audited as malformed
    login_json(body)


# --- access tokens --------------------------------------------------------------------------------

@cache
def _token_key() -> tuple[ec.EllipticCurvePrivateKey, TokenValidator]:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y),
                      "kid": "k1", "alg": "ES256", "use": "sig"}]}
    return key, TokenValidator(jwks, issuer=ISSUER, audience=AUDIENCE, clock=FixedNow())


def sign_token(header: bytes, claims: bytes) -> str:
    """A token with a *valid* signature over arbitrary header/claims bytes."""
    key, _ = _token_key()

    def enc(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{enc(header)}.{enc(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{enc(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def token_text(text: str) -> None:
    _, validator = _token_key()
    try:
        claims = validator.validate(text)
    except PkiError:
        return
    # Accepted: then it must really be current and for us.
    exp, nbf = claims["exp"], claims.get("nbf", claims["iat"])
    now = NOW.timestamp()
    assert isinstance(exp, int | float) and exp + 5 >= now, f"expired token accepted: {exp!r}"
    assert isinstance(nbf, int | float) and nbf - 5 <= now, f"future token accepted: {nbf!r}"


def token(data: bytes) -> None:
    """First byte even: the input is the token text; odd: header and claims (split at the
    first NUL) signed with the validator's own key, so the claim checks are reached."""
    if data[:1] and data[0] % 2:
        header, _, claims = data[1:].partition(b"\x00")
        token_text(sign_token(header, claims))
    else:
        token_text(data[1:].decode("utf-8", "surrogateescape"))


# --- HTTP requests at the status role's server (pki.http.server) --------------------------------

class _Transport(asyncio.Transport):
    """Collects what the server writes; reading pauses are no-ops (the bytes are all given)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _echo(req: Request) -> Response | None:
    return Response(200, b"%d" % len(req.body)) if req.path.startswith("/e") else None


@cache
def _http_server() -> HttpServer:
    return HttpServer([_echo], limits=Limits(max_body=4096, body_limits=(("/ocsp", 512),),
                                             max_connections=1 << 20,
                                             max_buffered_bodies=8192))


def _http_run(pieces: list[bytes]) -> bytes:
    server = _http_server()
    proto = HttpProtocol(server)
    transport = _Transport()
    proto.connection_made(transport)
    for piece in pieces:
        proto.data_received(piece)
    proto.connection_lost(None)
    assert server.connections == 0 and server.buffered_bodies == 0 and not server.idle, \
        "capacity accounting leak"
    out = bytes(transport.out)
    assert not out or out.startswith(b"HTTP/1.1 "), out[:80]
    return b"\r\n".join(line for line in out.split(b"\r\n") if not line.startswith(b"Date: "))


def http_request(data: bytes) -> None:
    """The first byte says where the rest is cut in two: the server must answer the same
    whether a stream (pipelined requests, chunked bodies, garbage) arrives whole or in pieces,
    leave no connection or body budget counted, and write only HTTP/1.1 answers."""
    if not data:
        return
    stream = data[1:]
    cut = data[0] * len(stream) // 256
    whole = _http_run([stream])
    split = _http_run([stream[:cut], stream[cut:]])
    assert whole == split, "answers depend on how the bytes arrive"
    bytewise = _http_run([stream[i:i + 1] for i in range(min(len(stream), 512))]
                         + [stream[512:]])
    assert bytewise == whole, "answers depend on how the bytes arrive (byte by byte)"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "ocsp_request": ocsp_request, "csr": csr, "directory_csv": directory_csv, "apdu": apdu,
    "login": login, "token": token, "http_request": http_request,
}


def guard(target: Callable[[bytes], None], data: bytes) -> None:
    """Run a target; the typed refusals are fine, anything else propagates (a crash)."""
    with contextlib.suppress(*ALLOWED):
        target(data)


# --- seeds ----------------------------------------------------------------------------------------

def seeds(name: str) -> list[bytes]:
    """Valid inputs to start from (plus the regression vectors of that parser)."""
    out: list[bytes] = []
    if name == "ocsp_request":
        from cryptography.x509 import ocsp
        key, cert = _login_key()
        for algo in (hashes.SHA1(), hashes.SHA256()):
            builder = ocsp.OCSPRequestBuilder().add_certificate(cert, cert, algo)
            out.append(builder.build().public_bytes(serialization.Encoding.DER))
            out.append(builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False)
                       .build().public_bytes(serialization.Encoding.DER))
    elif name == "csr":
        key, _ = _login_key()
        req = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
               .sign(key, hashes.SHA256()))
        out += [req.public_bytes(serialization.Encoding.DER),
                req.public_bytes(serialization.Encoding.PEM)]
    elif name == "directory_csv":
        out.append(b"rpps,profession,given_name,surname\n10003456789,10,Jeanne,Martin\n"
                   b"10001234567,60,\"Lou, Anne\",Petit\n")
    elif name == "apdu":
        select = bytes.fromhex("00A404000DE828BD080F80250000 01FF0010".replace(" ", ""))
        verify = bytes.fromhex("0020000104") + b"1234"
        mse = bytes.fromhex("002241A4")
        internal = bytes.fromhex("0088000020") + b"\x11" * 32 + b"\x00"
        out.append(frame_apdus([select, verify, mse, internal]))
    elif name == "login":
        key, cert = _login_key()
        challenge = b"\x07" * 32
        sig = key.sign(login_message(challenge, BROKER), ec.ECDSA(hashes.SHA256()))
        out.append(json.dumps({
            "certificate": base64.b64encode(cert.public_bytes(serialization.Encoding.DER))
            .decode(), "challenge": base64.b64encode(challenge).decode(),
            "signature": base64.b64encode(sig).decode(), "chain": []}).encode())
    elif name == "token":
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "81000345678", "jti": "j",
                  "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 120}
        header = {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}
        out.append(b"\x01" + json.dumps(header).encode() + b"\x00" + json.dumps(claims).encode())
        out.append(b"\x00" + sign_token(json.dumps(header).encode(),
                                         json.dumps(claims).encode()).encode())
    elif name == "http_request":
        out += [b"\x80GET /e HTTP/1.1\r\nHost: a\r\n\r\n",
                b"\x40\r\nPOST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"GET http://h:1/e?q HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
                b"\x20POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Expect: 100-continue\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: v\r\n\r\n"
                b"HEAD /ocsp HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]
    vectors = VECTORS / name
    if vectors.is_dir():
        out += [p.read_bytes() for p in sorted(vectors.iterdir()) if p.is_file()]
    return out


def main(argv: list[str]) -> int:
    import atheris

    name, rest = argv[1], argv[2:]
    target = TARGETS[name]
    corpus = [a for a in rest if not a.startswith("-")]
    if corpus:
        seed_dir = Path(corpus[0])
        seed_dir.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds(name)):
            (seed_dir / f"seed-{i}").write_bytes(seed)

    def one(data: bytes) -> None:
        guard(target, data)

    for seed in seeds(name):      # build the caches (card, keys) first
        one(seed)
    atheris.Setup([argv[0], *rest], one)
    atheris.Fuzz()
    return 0

