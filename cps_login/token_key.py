"""The broker's access-token signing key, in the broker's OWN token (never a CA token).

The key ``token:broker`` lives in the token ``CPS-BROKER`` (``pki.config.HsmConfig``:
``broker_token_label``, PIN in ``secrets/broker.pin``), opened through the generic
``pki.hsm.Hsm``. It is generated inside that token on first start (P-256 by default: the
broker signs one token per login, and ECDSA in the HSM is an order of magnitude cheaper than
RSA-2048). Generation is serialised across processes by a lock file in the home, so replicas
starting together end with one key, not two under one label.

Relying services learn the key from the JWKS, identified by a self-describing ``kid``: the
RFC 7638 JWK thumbprint of the public key, so any holder of the key can recompute it and a
rotated key can never collide with the old ``kid``.

``TbsSigner`` wants a certificate; the token key has no place in the PKI hierarchy, so it gets a
self-signed descriptor certificate (signed by itself, in the HSM) that is never published.

PKCS#11 (``pki.hsm``) is imported only by the functions that open the token, so that modules
needing only ``b64url`` or the ``TokenKey`` type (the patient role) load no PKCS#11 module.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pki.clock import Clock
from pki.config import Config
from pki.errors import ConfigError, HsmError
from pki.keytypes import KeyType

if TYPE_CHECKING:
    from pki.hsm import Hsm, HsmEcKey, HsmRsaKey
    from pki.signer import TbsSigner

DEFAULT_LABEL = "token:broker"
KEY_LOCK_FILE = "run/broker-key.lock"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def public_jwk(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK members that define the key (RFC 7517/7518), without kid/alg/use."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url(_int_bytes(numbers.n)),
                "e": b64url(_int_bytes(numbers.e))}
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError(f"token key curve {public_key.curve.name} is not P-256")
    point = public_key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(_int_bytes(point.x, 32)),
            "y": b64url(_int_bytes(point.y, 32))}


def jwk_thumbprint(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class TokenKey:
    label: str
    kid: str
    signer: TbsSigner

    @property
    def alg(self) -> str:
        return self.signer.jws_alg

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.signer.public_key), "kid": self.kid, "alg": self.alg,
                "use": "sig"}


def open_broker_token(config: Config) -> Hsm:
    """A session on the broker's own token, logged in with ``secrets/broker.pin``.

    Refuses a configuration where the broker token is the CA or root token: the broker must
    never be able to reach a CA key through its session."""
    from pki.hsm import Hsm

    h = config.hsm
    if h.broker_token_label in (h.token_label, h.root_token_label):
        raise ConfigError(f"broker token label {h.broker_token_label!r} is a CA token; "
                          f"the broker needs its own token")
    return Hsm(h.module, h.broker_token_label, config.read_secret(h.broker_pin_file),
               config.softhsm_conf_path())


@contextmanager
def _key_lock(home: Path) -> Iterator[None]:
    """Serialise "is the key there? no: generate it" across the processes of one home."""
    path = home / KEY_LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from pki.hsm import file_lock  # here: importing this module must not load PKCS#11

    with file_lock(path):
        yield


def token_key(hsm: Hsm, clock: Clock, label: str = DEFAULT_LABEL,
              key_type: KeyType = KeyType.P256, *, lock_dir: Path | None = None) -> TokenKey:
    """Open the token-signing key, generating it in ``hsm`` the first time it is asked for.

    ``lock_dir``: the home, whose lock file makes the first generation race-free between
    replicas; without it a lost race is still recovered (the other process's key is used)."""
    from pki.signer import TbsSigner

    if not hsm.has_key(label):
        if lock_dir is None:
            _generate(hsm, label, key_type)
        else:
            with _key_lock(lock_dir):
                if not hsm.has_key(label):
                    _generate(hsm, label, key_type)
    # every token the broker issues is signed with this key: a copy in the token's session
    # memory spares SoftHSM's per-signature re-read of the key's file
    key = hsm.key(label, session_copy=True)
    descriptor = _descriptor_certificate(key, label, clock.now())
    signer = TbsSigner(key, descriptor)
    return TokenKey(label=label, kid=jwk_thumbprint(signer.public_key), signer=signer)


def _generate(hsm: Hsm, label: str, key_type: KeyType) -> None:
    try:
        hsm.generate_key(label, key_type)
    except HsmError:
        # Another process generated it between our check and our call: use theirs.
        if not hsm.has_key(label):
            raise


def _descriptor_certificate(key: HsmRsaKey | HsmEcKey, label: str,
                            now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"CPS login broker {label}")])
    start = now.replace(microsecond=0) - dt.timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
