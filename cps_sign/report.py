"""The validation report in the vocabulary of ETSI EN 319 102-1 (§5.1.3, table 5)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

TOTAL_PASSED = "TOTAL_PASSED"
TOTAL_FAILED = "TOTAL_FAILED"
INDETERMINATE = "INDETERMINATE"

# Sub-indications used here (EN 319 102-1 table 5).
FORMAT_FAILURE = "FORMAT_FAILURE"                       # TOTAL_FAILED: not a CAdES/PAdES
HASH_FAILURE = "HASH_FAILURE"                           # TOTAL_FAILED: content changed
SIG_CRYPTO_FAILURE = "SIG_CRYPTO_FAILURE"               # TOTAL_FAILED: signature value wrong
REVOKED = "REVOKED"                                     # TOTAL_FAILED: revoked before signing
EXPIRED = "EXPIRED"                                     # TOTAL_FAILED: signed after notAfter
NOT_YET_VALID = "NOT_YET_VALID"                         # TOTAL_FAILED: signed before notBefore
NO_SIGNING_CERTIFICATE_FOUND = "NO_SIGNING_CERTIFICATE_FOUND"
NO_CERTIFICATE_CHAIN_FOUND = "NO_CERTIFICATE_CHAIN_FOUND"
CHAIN_CONSTRAINTS_FAILURE = "CHAIN_CONSTRAINTS_FAILURE"  # policy / key usage of the signer
OUT_OF_BOUNDS_NO_POE = "OUT_OF_BOUNDS_NO_POE"           # expired, no proof of earlier time
REVOKED_NO_POE = "REVOKED_NO_POE"                       # revoked, no proof of earlier time
REVOKED_CA_NO_POE = "REVOKED_CA_NO_POE"                 # a CA of the chain revoked (root CRL)
TRY_LATER = "TRY_LATER"                                 # on hold, or no revocation data now
NO_POE = "NO_POE"                                       # time stamp present but unusable
SIGNED_DATA_NOT_FOUND = "SIGNED_DATA_NOT_FOUND"         # no content given / found


@dataclass(frozen=True)
class Report:
    indication: str
    sub_indication: str | None
    detail: str
    format: str = "cades"
    level: str | None = None                 # B-B | B-T | B-LT as found
    signer: str | None = None                # national identifier: 8 + RPPS (certificate CN)
    signing_time: dt.datetime | None = None
    signing_time_source: str | None = None   # timestamp | claimed
    certificate_serial: str | None = None
    revocation: str | None = None            # e.g. "good (embedded OCSP)"
    file: str | None = None

    @property
    def passed(self) -> bool:
        return self.indication == TOTAL_PASSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "indication": self.indication,
            "sub_indication": self.sub_indication,
            "signer": self.signer,
            "signing_time": self.signing_time.isoformat() if self.signing_time else None,
            "signing_time_source": self.signing_time_source,
            "format": self.format,
            "level": self.level,
            "certificate_serial": self.certificate_serial,
            "revocation": self.revocation,
            "detail": self.detail,
            **({"file": self.file} if self.file is not None else {}),
        }

    def line(self) -> str:
        head = self.indication + (f"/{self.sub_indication}" if self.sub_indication else "")
        parts = [head]
        if self.signer:
            parts.append(f"signer {self.signer}")
        if self.signing_time:
            parts.append(f"signed {self.signing_time.isoformat()} ({self.signing_time_source})")
        if self.level:
            parts.append(f"{self.format.upper()} {self.level}")
        parts.append(self.detail)
        return ", ".join(parts)


class Verdict(Exception):
    """Raised inside the verifier to end with a non-passing report."""

    def __init__(self, indication: str, sub_indication: str, detail: str) -> None:
        super().__init__(detail)
        self.indication = indication
        self.sub_indication = sub_indication
        self.detail = detail
