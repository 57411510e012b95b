"""DER for OCSP: the strict reader and writers of ``pki.der`` under the names the OCSP code
uses, the tag numbers, and GeneralizedTime from epoch seconds (cached: responses repeat them).
"""

from __future__ import annotations

import functools
import time

from pki.der import (  # re-exported for the OCSP request/response code
    DerError,
    children,
    expect,
    integer_value,
    read_tlv,
    tlv,
)
from pki.der import length as length_bytes
from pki.der import oid as encode_oid
from pki.der import sequence as seq

__all__ = ["DerError", "children", "encode_oid", "expect", "generalized_time", "integer_value",
           "length_bytes", "read_tlv", "seq", "tlv"]

SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
BOOLEAN = 0x01
GENERALIZED_TIME = 0x18


@functools.lru_cache(maxsize=8192)
def generalized_time(epoch: int) -> bytes:
    """GeneralizedTime DER for whole seconds since the epoch (RFC 5280 form: YYYYMMDDHHMMSSZ)."""
    return b"\x18\x0f" + time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch)).encode("ascii")
