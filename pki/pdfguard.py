"""Refuse a PDF whose structure declares more objects than its bytes could hold.

A PDF's cross-reference data declares how many entries it has (``/Size``, the ``/Index`` pairs of
an xref stream, the subsection headers of a classic table, ``/N`` of an object stream). A tolerant
reader (pyHanko with ``strict=False``) builds what is declared even when the bytes are missing: a
300-byte file declaring 2^31 entries pins a CPU and grows memory until the process is killed.
Every entry or object needs at least one byte of the file, so a count above the file's length is
never a real document. Names may be written with ``#xx`` escapes (``/Si#7Ae`` is ``/Size``), so
they are decoded before the scan.

Used before parsing by the patient space's upload check and by the signature verifier.
"""

from __future__ import annotations

import re

MAX_DECLARED = 8_000_000          # entries / objects, whatever the file's size

_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_SIZE = re.compile(rb"/(?:Size|N)[\s\x00]*\+?(\d{1,30})(?![\d.])")
_INDEX = re.compile(rb"/Index[\s\x00]*\[([^\]]{0,4096})\]")
_XREF_TABLE = re.compile(rb"(?:^|[\s\x00])xref[\s\x00]+((?:\d{1,30}[ \t]+\d{1,30}[\s\x00]+"
                         rb"(?:\d{10}[ \t]\d{5}[ \t][nf][\s\x00]*)*)+)")
_ENTRY = re.compile(rb"\d{10}[ \t]\d{5}[ \t][nf]")
_SUBSECTION = re.compile(rb"(\d{1,30})[ \t]+(\d{1,30})")


def declared_size_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a real PDF's structure (a declared count it cannot hold), or
    ``None``. Cheap: a few regular-expression scans of the raw bytes."""
    bound = min(len(data), MAX_DECLARED)
    text = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), data)
    for match in _SIZE.finditer(text):
        if int(match.group(1)) > bound:
            return f"the PDF declares {int(match.group(1))} objects in {len(data)} bytes"
    for match in _INDEX.finditer(text):
        numbers = re.findall(rb"\d{1,30}", match.group(1))
        counts = [int(n) for n in numbers[1::2]]
        if sum(counts) > bound:
            return f"the PDF's xref stream declares {sum(counts)} entries in {len(data)} bytes"
    for table in _XREF_TABLE.finditer(text):
        headers = _ENTRY.sub(b" ", table.group(1))       # what is left: "first count" pairs
        total = sum(int(m.group(2)) for m in _SUBSECTION.finditer(headers))
        if total > bound:
            return f"the PDF's xref table declares {total} entries in {len(data)} bytes"
    return None
