"""pkilint, in process: certificates, CRLs and OCSP responses against the PKIX profile.

The validator containers are built once per process (building them dominates a cold call).
A finding of any severity counts, INFO included, with one exception: pkilint reports at INFO
which method computed a Subject Key Identifier (``pkix.subject_key_identifier_*_identified``)
for *every* certificate that carries one, and SPEC §3 requires the SKI. Only those codes are
set aside (``INFORMATIONAL``); anything else, however mild, fails the lint.
"""

from __future__ import annotations

import collections
import functools
import threading
import types
from typing import Any

from pkilint import document, loader, pkix, validation
from pkilint.pkix import certificate, crl, extension, name, ocsp
from pkilint.pkix.certificate import certificate_extension

_LOCK = threading.Lock()
INFORMATIONAL = frozenset({
    "pkix.subject_key_identifier_method_1_identified",
    "pkix.subject_key_identifier_method_2_identified",
    "pkix.subject_key_identifier_rfc7093_method_1_identified",
    "pkix.subject_key_identifier_rfc7093_method_2_identified",
    "pkix.subject_key_identifier_rfc7093_method_3_identified",
})


# --- dispatch -----------------------------------------------------------------------------
# pkilint's ValidatorContainer asks every validator ``match(node)`` at every node of the
# document (~6,000 calls per certificate, about a third of the lint time). Most of what a match
# checks — the node's path, a path pattern, the ASN.1 class — depends only on (path, type), so
# each container remembers, per (path, type), which validators can match at all; only those
# are asked, and a validator whose match is nothing but those static checks is not asked again.
# The order of validators and of results is pkilint's own (tests/ca/test_lint_dispatch.py
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
        self.hits = self.misses = 0

    def __call__(self, substrate: Any, asn1Spec: Any) -> tuple[Any, bytes]:
        data = bytes(substrate)
        if not self.enabled or len(data) > self._max_bytes:
            return self._decode(data, asn1Spec=asn1Spec)  # type: ignore[no-any-return]
        key = (id(asn1Spec), data)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is asn1Spec:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit[1], b""
        decoded, rest = self._decode(data, asn1Spec=asn1Spec)
        self.misses += 1
        self._cache[key] = (asn1Spec, decoded)   # the schema object is kept: ids stay unique
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return decoded, rest

    def clear(self) -> None:
        self._cache.clear()


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


@functools.cache
def _cert_validator() -> Any:
    return accelerate(_pkilint_cert_validator())


def _pkilint_cert_validator() -> Any:
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS,
                                               extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@functools.cache
def _crl_validator() -> Any:
    return accelerate(_pkilint_crl_validator())


def _pkilint_crl_validator() -> Any:
    return crl.create_pkix_crl_validator_container(
        [pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
        [crl.create_issuer_validator_container([]),
         crl.create_validity_validator_container([]),
         crl.create_extensions_validator_container([])],
    )


@functools.cache
def _ocsp_validator() -> Any:
    return accelerate(_pkilint_ocsp_validator())


def _pkilint_ocsp_validator() -> Any:
    return ocsp.create_pkix_ocsp_response_validator_container(
        [ocsp.create_response_decoder(),
         pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
        [],
    )


def _findings(results: Any) -> list[str]:
    out: list[str] = []
    for result in results:
        for desc in result.finding_descriptions:
            if desc.finding.code in INFORMATIONAL:
                continue
            msg = f": {desc.message}" if desc.message else ""
            out.append(f"{desc.finding.severity.name} {desc.finding.code} "
                       f"@ {result.node.path}{msg}")
    return out


def lint_certificate(der: bytes) -> list[str]:
    """pkilint PKIX findings for a DER certificate (empty list: clean)."""
    with _LOCK:
        doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
        return _findings(_cert_validator().validate(doc.root))


def lint_crl(der: bytes) -> list[str]:
    with _LOCK:
        doc = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
        return _findings(_crl_validator().validate(doc.root))


def lint_ocsp_response(der: bytes) -> list[str]:
    with _LOCK:
        doc = loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "ocsp")
        return _findings(_ocsp_validator().validate(doc.root))
