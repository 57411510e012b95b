"""The in-memory form of pre-signed responses: a few fields and a signature per certificate.

A full RSA-2048 response is ~1.5 KB, two thirds of it the responder certificate that every
response of a CA repeats. So a record keeps only what varies — producedAt, thisUpdate,
nextUpdate, status, reason, revocation time (18 bytes) and the signature — and the response is
re-assembled around it on each request: the to-be-signed ResponseData is rebuilt byte for byte
from those fields (see pki/ocsp/README.md for the memory figures).
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from pki.ocsp import response as resp

HEADER = struct.Struct(">IIIBBI")   # produced_at, this_update, next_update, status, reason, rev_at
HEADER_SIZE = HEADER.size


def pack(produced_at: int, this_update: int, next_update: int, status: int, reason: int,
         revoked_at: int, signature: bytes = b"") -> bytes:
    return HEADER.pack(produced_at, this_update, next_update, status, reason,
                       revoked_at) + signature


def unpack(record: bytes) -> tuple[int, int, int, int, int, int]:
    return HEADER.unpack_from(record)


def status_of(record: bytes) -> tuple[int, int, int]:
    """(status, reason, revoked_at) of a record."""
    _, _, _, status, reason, revoked_at = HEADER.unpack_from(record)
    return status, reason, revoked_at


def same_status(record: bytes, status: int, reason: int, revoked_at: int) -> bool:
    return status_of(record) == (status, reason, revoked_at)


class TbsSigning(Protocol):
    """The responder key (signer role only): signs a ResponseData."""

    def sign(self, tbs: bytes) -> bytes: ...


@dataclass
class CaState:
    """One issuing CA as the responder sees it: identifiers, responder, records.

    Needs only the responder certificate and its signature algorithm to assemble responses;
    ``signer`` (the responder key in the HSM) is there in the signer role only, so the status
    role builds the same state without any PKCS#11 code."""

    ca_id: int
    slug: str
    issuer: x509.Certificate
    responder_der: bytes
    algorithm: bytes                  # signatureAlgorithm DER of the responder's signatures
    responder_not_after: dt.datetime
    signer: TbsSigning | None = None
    records: dict[bytes, bytes] = field(default_factory=dict)   # serial content -> record
    name_hashes: dict[str, bytes] = field(default_factory=dict)
    key_hashes: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for hash_name in resp.HASH_ALGORITHMS:
            name_hash, key_hash = resp.issuer_hashes(self.issuer, hash_name)
            self.name_hashes[hash_name] = name_hash
            self.key_hashes[hash_name] = key_hash
        certificate = x509.load_der_x509_certificate(self.responder_der)
        self.responder_id = resp.responder_id_by_key(certificate)
        self.certs = resp.certs_field(self.responder_der)
        self.responder_serial = f"{certificate.serial_number:X}"

    def cert_id(self, hash_name: str, serial: bytes) -> bytes:
        return resp.cert_id(hash_name, self.name_hashes[hash_name], self.key_hashes[hash_name],
                            serial)

    def tbs(self, serial: bytes, record: bytes, hash_name: str = "sha1",
            nonce: bytes | None = None) -> bytes:
        """The ResponseData a record's signature covers (or will cover)."""
        produced_at, this_update, next_update, status, reason, revoked_at = unpack(record)
        single = resp.single_response(self.cert_id(hash_name, serial),
                                      resp.cert_status(status, revoked_at, reason),
                                      this_update, next_update)
        return resp.response_data(self.responder_id, produced_at, [single], nonce)

    def assemble(self, serial: bytes, record: bytes) -> bytes:
        """The complete OCSPResponse DER of a signed record."""
        return resp.successful(self.tbs(serial, record), self.algorithm,
                               record[HEADER_SIZE:], self.certs)

    def sign_tbs(self, tbs: bytes) -> bytes:
        if self.signer is None:
            raise RuntimeError(f"no responder key for {self.slug} in this process")
        return self.signer.sign(tbs)

    def sign(self, serial: bytes, header: bytes) -> bytes:
        """Sign a header-only record in the HSM; returns the complete record."""
        return header[:HEADER_SIZE] + self.sign_tbs(self.tbs(serial, header))


def serial_content(serial_hex: str) -> bytes:
    """INTEGER content octets of a serial stored as hex (`certificate.serial`)."""
    value = int(serial_hex, 16)
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def serial_hex(content: bytes) -> str:
    value = int.from_bytes(content, "big", signed=True)
    text = f"{value:X}"
    return "0" + text if len(text) % 2 else text
