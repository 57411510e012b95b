"""Red-team finding F13: what an anonymous POST /verify sends is not kept."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import secrets

import requests
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.oidc.conftest import OidcServer


def _fat_self_signed(size: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(8))])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                      secrets.token_bytes(size)), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _cades(content: bytes, size: int) -> bytes:
    from pyhanko.keys import load_private_key_from_pemder_data
    from pyhanko.sign import signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    cert, key = _fat_self_signed(size)
    der_key = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    signer = signers.SimpleSigner(
        signing_cert=asn1_cert, signing_key=load_private_key_from_pemder_data(der_key, None),
        cert_registry=SimpleCertificateStore.from_certs([asn1_cert]))
    info = asyncio.run(signer.async_sign_general_data(content, "sha256", detached=True))
    return bytes(info.dump())


def test_untrusted_certificates_sent_to_verify_are_not_kept(oidc: OidcServer) -> None:
    """F13 (MEDIUM, fixed): the verifier's caches (cps_sign/verify.py Verifier._certs, _paths:
    100,000 entries, no byte bound; _tsas: no bound at all) kept every certificate an anonymous
    POST /verify carries, keyed by its DER, whether or not it chains to an IGC-Santé root — the
    class of hole docs/hardening.md #1 closed for POST /login. With ~80 KB certificates (and
    their parsed copies) 100,000 requests hold ~16 GB in the broker."""
    from cps_login.web import services_of
    from cps_sign.web import EXTRA

    for _ in range(12):
        signature = _cades(b"hello", 80_000)
        answer = requests.post(oidc.issuer + "/verify", timeout=60, json={
            "signature": base64.b64encode(signature).decode(),
            "content": base64.b64encode(b"hello").decode()})
        assert answer.status_code == 200, answer.text[:200]
        assert answer.json()["indication"] != "TOTAL_PASSED"
    verifier = services_of(oidc.app).extras[EXTRA]
    kept = verifier.cached_bytes()
    assert kept < 512 * 1024, f"{kept} bytes of untrusted certificates kept"
