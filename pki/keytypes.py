"""Key types a home uses (CA, responder, token keys). Kept apart from ``pki.hsm`` so that code
which only names a key type (configuration, the status role) never loads a PKCS#11 library."""

from __future__ import annotations

from enum import StrEnum


class KeyType(StrEnum):
    RSA2048 = "rsa2048"
    RSA4096 = "rsa4096"
    P256 = "p256"

    @property
    def is_rsa(self) -> bool:
        return self in (KeyType.RSA2048, KeyType.RSA4096)

    @property
    def rsa_bits(self) -> int:
        return {KeyType.RSA2048: 2048, KeyType.RSA4096: 4096}[self]

    @classmethod
    def parse(cls, value: str) -> KeyType:
        try:
            return cls(value.lower())
        except ValueError:
            raise ValueError(f"unknown key type {value!r}; expected one of "
                             f"{', '.join(k.value for k in cls)}") from None
