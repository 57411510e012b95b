"""On-card key generation and the private-key operations the card's applications expose."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

# Algorithm identifiers shared by GENERATE ASYMMETRIC KEY PAIR and PIV (SP 800-78 table 6-2).
ALG_RSA2048 = 0x07
ALG_P256 = 0x11

CardPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_DIGEST_INFO_PREFIXES: dict[bytes, hashes.HashAlgorithm] = {
    bytes.fromhex("3031300d060960864801650304020105000420"): hashes.SHA256(),
    bytes.fromhex("3041300d060960864801650304020205000430"): hashes.SHA384(),
    bytes.fromhex("3051300d060960864801650304020305000440"): hashes.SHA512(),
}
_HASH_BY_LENGTH: dict[int, hashes.HashAlgorithm] = {
    28: hashes.SHA224(),
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}


class KeyOperationError(ValueError):
    """Input a key cannot process; the card answers ``6A 80``."""


def generate(alg: int) -> CardPrivateKey:
    if alg == ALG_RSA2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == ALG_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise KeyOperationError(f"unsupported key algorithm {alg:#04x}")


def algorithm_of(key: CardPrivateKey) -> int:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048:
        return ALG_RSA2048
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return ALG_P256
    raise KeyOperationError("key type not supported by the card")


def to_der(key: CardPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def from_der(der: bytes) -> CardPrivateKey:
    # The card generated this key itself; re-validating it on every load would cost ~10 ms.
    key = serialization.load_der_private_key(
        der, password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("card key file holds an unsupported key type")
    return key


def public_spki(key: CardPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _rsa_raw(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """m^d mod n by CRT: raw RSA, for inputs that are not a known DigestInfo."""
    k = (key.key_size + 7) // 8
    numbers = key.private_numbers()
    m = int.from_bytes(block, "big")
    if len(block) != k or m >= numbers.public_numbers.n:
        raise KeyOperationError("raw RSA input must be one modulus-sized block smaller than n")
    s1 = pow(m, numbers.dmp1, numbers.p)
    s2 = pow(m, numbers.dmq1, numbers.q)
    h = (numbers.iqmp * (s1 - s2)) % numbers.p
    return (s2 + h * numbers.q).to_bytes(k, "big")


def _emsa_pkcs1_v15(digest_info: bytes, k: int) -> bytes:
    if len(digest_info) > k - 11:
        raise KeyOperationError("DigestInfo too long for the modulus")
    return b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info


def sign_digest_info(key: CardPrivateKey, data: bytes) -> bytes:
    """PSO COMPUTE DIGITAL SIGNATURE / INTERNAL AUTHENTICATE input.

    RSA: ``data`` is a DigestInfo, PKCS#1 v1.5 padded by the card. EC: ``data`` is the hash;
    the signature is returned DER-encoded (what X.509 and the host verify directly).
    """
    if isinstance(key, rsa.RSAPrivateKey):
        for prefix, algorithm in _DIGEST_INFO_PREFIXES.items():
            if data.startswith(prefix) and len(data) == len(prefix) + algorithm.digest_size:
                return key.sign(data[len(prefix) :], padding.PKCS1v15(), Prehashed(algorithm))
        return _rsa_raw(key, _emsa_pkcs1_v15(data, (key.key_size + 7) // 8))
    ec_hash = _HASH_BY_LENGTH.get(len(data))
    if ec_hash is None:
        raise KeyOperationError(f"ECDSA input of {len(data)} bytes is not a hash")
    return key.sign(data, ec.ECDSA(Prehashed(ec_hash)))


def sign_piv(key: CardPrivateKey, data: bytes) -> bytes:
    """PIV GENERAL AUTHENTICATE: RSA gets an already padded block (raw RSA); EC gets a hash."""
    if isinstance(key, rsa.RSAPrivateKey):
        k = (key.key_size + 7) // 8
        for prefix, algorithm in _DIGEST_INFO_PREFIXES.items():
            digest_info_len = len(prefix) + algorithm.digest_size
            if data == _emsa_pkcs1_v15(data[k - digest_info_len :], k) and data[
                k - digest_info_len :
            ].startswith(prefix):
                return key.sign(
                    data[k - algorithm.digest_size :], padding.PKCS1v15(), Prehashed(algorithm)
                )
        return _rsa_raw(key, data)
    if len(data) > 32:  # SP 800-73: the host truncates; be lenient like most cards
        data = data[:32]
    if len(data) != 32:
        data = data.rjust(32, b"\x00")
    return key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))


def is_rsa(key: CardPrivateKey) -> bool:
    return isinstance(key, rsa.RSAPrivateKey)


def key_bits(key: CardPrivateKey) -> int:
    return key.key_size if isinstance(key, rsa.RSAPrivateKey) else key.curve.key_size


def rsa_public_numbers(key: CardPrivateKey) -> tuple[bytes, bytes]:
    """Modulus and public exponent, big-endian, of an RSA key."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyOperationError("not an RSA key")
    numbers = key.public_key().public_numbers()
    return (
        numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
        numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
    )
