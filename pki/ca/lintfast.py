"""A faster pkilint, finding exactly what pkilint finds.

pkilint is pure Python; linting one end-entity certificate cost ~30M instructions (5-9 ms
here), more than the HSM's RSA-4096 signature it has to precede. Three changes, none of which
alters a finding (tests/ca/test_lint_fast.py runs both versions side by side on clean, faulty
and byte-mutated certificates and CRLs and compares every result):

* **dispatch** — validators are pre-selected per (node path, ASN.1 type) instead of asking
  every validator at every node;
* **value decodes remembered** — extension and attribute values repeat byte for byte across a
  CA's certificates and are decoded once;
* **certificates decoded by part** — the fixed parts of a certificate (issuer, algorithm
  identifiers, each extension) go through the same memory; the unique ones (serial, validity,
  key) are decoded each time. Anything outside the strict DER layout of a v3 certificate is
  decoded whole, as before, so malformed input meets pkilint's own decoder and errors.

Per certificate (callgrind, end-entity RSA-2048 subjects): 30.8M instructions as shipped,
17.2M with the dispatch, 14.5M with remembered values, 11.2M decoded by part.
"""

from __future__ import annotations

import collections
import types
from typing import Any

from pkilint import document, validation
from pkilint.pkix import extension
from pkilint.pkix.certificate import certificate_extension
from pyasn1_alt_modules import rfc5280

from pki import der

# --- validator dispatch -------------------------------------------------------------------
# pkilint's ValidatorContainer asks every validator ``match(node)`` at every node of the
# document (~6,000 calls per certificate, about a third of the lint time). Most of what a match
# checks — the node's path, a path pattern, the ASN.1 class — depends only on (path, type), so
# each container remembers, per (path, type), which validators can match at all; only those
# are asked, and a validator whose match is nothing but those static checks is not asked again.
# The order of validators and of results is pkilint's own (tests/ca/test_lint_fast.py
# compares both drivers finding by finding).
#
# ``match`` overrides audited to begin with ``super().match(node)`` (pkilint 0.13): for these
# the static checks are a necessary condition. Any other override is asked at every node.
_STATIC_FIRST = frozenset({
    document.NodeVisitor.match,
    validation.TypeMatchingValidator.match,
    extension.ExtensionCriticalityValidator.match,
    certificate_extension.ExtendedKeyUsageCriticalityValidator.match,
})
_PLAN_LIMIT = 20_000   # (path, type) keys kept per container; hostile inputs cannot grow it


def _static_match(v: Any, path: str, pdu_type: type) -> bool:
    if v._path is not None and v._path != path:
        return False
    if v._path_re is not None and v._path_re.match(path) is None:
        return False
    return v._pdu_class is None or issubclass(pdu_type, v._pdu_class)


def _plan_for(validators: list[Any], path: str, pdu_type: type) -> tuple[tuple[Any, bool], ...]:
    """(validator, must still call its match) for the validators that may match."""
    plan = []
    for v in validators:
        match = type(v).match
        if match not in _STATIC_FIRST:
            plan.append((v, True))
        elif _static_match(v, path, pdu_type):
            dynamic = (match is not document.NodeVisitor.match
                       or v._pdu_supertype is not None or v._predicate is not None)
            plan.append((v, dynamic))
    return tuple(plan)


def _fast_validate_rec(self: Any, node: Any, results: list[Any]) -> None:
    # pkilint's recursion, as a loop: pre-order, each node's validators before its children,
    # children read only after their parent's validators ran (decoders add children).
    plans: dict[tuple[str, type], tuple[tuple[Any, bool], ...]] = self._cps_plans
    stack = [node]
    while stack:
        node = stack.pop()
        key = (node.path, type(node.pdu))
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= _PLAN_LIMIT:
                plans.clear()
            plan = plans[key] = _plan_for(self.validators, *key)
        for v, dynamic in plan:
            if not dynamic or v.match(node):
                result = v.validate_wrapper(node)
                if isinstance(result, list):
                    results += result
                else:
                    results.append(result)
        children = node.children
        if children:
            stack.extend(reversed(children.values()))


# --- value decodes remembered -------------------------------------------------------------
class DecodeMemo:
    """pkilint's DER decoder, remembering recent small decodes (extension and attribute values).

    Certificates from one CA and profile repeat most of their extension values byte for byte
    (policies, CRL distribution points, AIA, key usage, the issuer name's attributes). Decoding
    is a pure function of (bytes, schema object) and pkilint only reads the values it decodes,
    so a repeated value is decoded once. Failures are never remembered (they re-raise each
    time); whole documents (over ``max_bytes``) are never cached.
    """

    def __init__(self, decode: Any, size: int = 4096, max_bytes: int = 1024) -> None:
        self._decode = decode
        self._size = size
        self._max_bytes = max_bytes
        self._cache: collections.OrderedDict[tuple[int, bytes], tuple[Any, Any]] = \
            collections.OrderedDict()
        self.enabled = True
        self.hits = self.whole = 0   # served from memory; certificates decoded whole

    def __call__(self, substrate: Any, asn1Spec: Any) -> tuple[Any, bytes]:
        """pyasn1_fasder.decode_der's signature, as pkilint.document calls it."""
        data = bytes(substrate)
        if not self.enabled:
            return self._decode(data, asn1Spec=asn1Spec)  # type: ignore[no-any-return]
        if _is_certificate_schema(asn1Spec):
            try:
                return _decode_by_part(data, self), b""
            except Exception:   # not a plain v3 layout: pkilint decodes it whole
                self.whole += 1
                return self._decode(data, asn1Spec=asn1Spec)  # type: ignore[no-any-return]
        if len(data) > self._max_bytes:
            return self._decode(data, asn1Spec=asn1Spec)  # type: ignore[no-any-return]
        return self.decode(data, asn1Spec), b""

    def decode(self, data: bytes, spec: Any) -> Any:
        key = (id(spec), data)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is spec:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit[1]
        decoded, _ = self._decode(data, asn1Spec=spec)
        self._cache[key] = (spec, decoded)   # the schema object is kept: ids stay unique
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return decoded

    def decode_uncached(self, data: bytes, spec: Any) -> Any:
        return self._decode(data, asn1Spec=spec)[0]


# --- certificates decoded by part ----------------------------------------------------------
_TBS = rfc5280.TBSCertificate.componentType
# (DER tag, position in TBSCertificate, optional, remembered)
_TBS_LAYOUT = (
    (0xA0, 0, True, True),      # version [0] EXPLICIT
    (0x02, 1, False, False),    # serialNumber
    (0x30, 2, False, True),     # signature
    (0x30, 3, False, True),     # issuer
    (0x30, 4, False, False),    # validity
    (0x30, 5, False, True),     # subject (a holder's two certificates share it)
    (0x30, 6, False, False),    # subjectPublicKeyInfo
    (0x81, 7, True, False),     # issuerUniqueID [1] IMPLICIT
    (0x82, 8, True, False),     # subjectUniqueID [2] IMPLICIT
)
_TBS_SPECS = tuple(_TBS.getTypeByPosition(i) for i in range(len(_TBS)))
_EXTENSION_SPEC = rfc5280.Extension()
_ALGORITHM_SPEC = rfc5280.AlgorithmIdentifier()
_SIGNATURE_SPEC = rfc5280.Certificate.componentType.getTypeByPosition(2)


class _NotSplittable(Exception):
    pass


def _decode_by_part(data: bytes, memo: DecodeMemo) -> Any:
    """A v3 certificate assembled from its separately decoded parts (same value as whole)."""
    tag, start, end = der.read_tlv(data, 0, len(data))
    if tag != 0x30 or end != len(data):
        raise _NotSplittable
    top = der.children(data, start, end)
    if [t for t, _, _, _ in top] != [0x30, 0x30, 0x03]:
        raise _NotSplittable
    (_, _, tbs_start, tbs_end), (_, alg_at, _, alg_end), (_, sig_at, _, sig_end) = top
    parts = der.children(data, tbs_start, tbs_end)
    tbs = rfc5280.TBSCertificate()
    i = 0
    for want, position, optional, remembered in _TBS_LAYOUT:
        if i < len(parts) and parts[i][0] == want:
            _, at, _, stop = parts[i]
            chunk, spec = data[at:stop], _TBS_SPECS[position]
            value = memo.decode(chunk, spec) if remembered else memo.decode_uncached(chunk, spec)
            tbs.setComponentByPosition(position, value)
            i += 1
        elif not optional:
            raise _NotSplittable
    if int(tbs.getComponentByPosition(0)) != 2:   # only v3 (v1's DEFAULT must be absent)
        raise _NotSplittable
    if i != len(parts) - 1 or parts[i][0] != 0xA3:
        raise _NotSplittable                       # v3 with its extensions, nothing after
    _, _, seq_at, seq_end = parts[i]
    tag, items_start, items_end = der.read_tlv(data, seq_at, seq_end)
    if tag != 0x30 or items_end != seq_end:
        raise _NotSplittable
    items = der.children(data, items_start, items_end)
    if not items or any(t != 0x30 for t, _, _, _ in items):
        raise _NotSplittable
    extensions = _TBS_SPECS[9].clone()
    for n, (_, at, _, stop) in enumerate(items):
        extensions.setComponentByPosition(n, memo.decode(data[at:stop], _EXTENSION_SPEC))
    tbs.setComponentByPosition(9, extensions)
    cert = rfc5280.Certificate()
    cert.setComponentByPosition(0, tbs)
    cert.setComponentByPosition(1, memo.decode(data[alg_at:alg_end], _ALGORITHM_SPEC))
    cert.setComponentByPosition(2, memo.decode_uncached(data[sig_at:sig_end], _SIGNATURE_SPEC))
    return cert


def _is_certificate_schema(spec: Any) -> bool:
    return type(spec) is rfc5280.Certificate and spec.tagSet == rfc5280.Certificate.tagSet


DECODE_MEMO = DecodeMemo(document.decode_der)
document.decode_der = DECODE_MEMO   # pkilint.document looks the name up at each decode


def accelerate(container: Any) -> Any:
    """Give ``container`` and every container nested in it the cached dispatch."""
    seen: set[int] = set()

    def walk(v: Any) -> None:
        if id(v) in seen:
            return
        seen.add(id(v))
        if isinstance(v, validation.ValidatorContainer):
            if type(v)._validate_rec is validation.ValidatorContainer._validate_rec:
                v._cps_plans = {}
                v._validate_rec = types.MethodType(_fast_validate_rec, v)
            for inner in v.validators:
                walk(inner)

    walk(container)
    return container


