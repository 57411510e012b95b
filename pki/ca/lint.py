"""pkilint, in process: certificates, CRLs and OCSP responses against the PKIX profile.

The validator containers are built once per process (building them dominates a cold call).
A finding of any severity counts, INFO included, with one exception: pkilint reports at INFO
which method computed a Subject Key Identifier (``pkix.subject_key_identifier_*_identified``)
for *every* certificate that carries one, and SPEC §3 requires the SKI. Only those codes are
set aside (``INFORMATIONAL``); anything else, however mild, fails the lint.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from pkilint import loader, pkix
from pkilint.pkix import certificate, crl, extension, name, ocsp

from pki.ca.lintfast import accelerate

_LOCK = threading.Lock()
INFORMATIONAL = frozenset({
    "pkix.subject_key_identifier_method_1_identified",
    "pkix.subject_key_identifier_method_2_identified",
    "pkix.subject_key_identifier_rfc7093_method_1_identified",
    "pkix.subject_key_identifier_rfc7093_method_2_identified",
    "pkix.subject_key_identifier_rfc7093_method_3_identified",
})


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
