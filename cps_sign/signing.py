"""CAdES (ETSI EN 319 122-1) and PAdES (EN 319 142-1) baseline signatures made with the card.

pyHanko builds both: ``Signer.async_sign_general_data(..., use_cades=True)`` gives the
detached CMS with content-type, message-digest, signing-time and signing-certificate-v2, and
the signature time stamp (B-T) as an unsigned attribute; ``PdfSigner`` embeds a PAdES signature
(``ETSI.CAdES.detached``) and, at B-LT, the DSS with the chain and OCSP responses it fetched.

CAdES B-LT adds the validation data the baseline profile (EN 319 122-1 §5.5 / 319 122-2)
places in the SignedData itself: the chain in ``certificates`` and the OCSP responses of the
signing certificate and of the time stamp's TSA certificate in ``crls`` as
``OtherRevocationInfoFormat`` id-ri-ocsp-response (RFC 5940), version v5. These fields are
outside the signed attributes: adding them changes no signature. The OCSP responses are fetched
after the time stamp, so they speak of the certificates at (or after) the signing time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Callable, Sequence
from typing import Literal

from asn1crypto import cms
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko_certvalidator import ValidationContext

from cps_sign.card_signer import CardSigner

Level = Literal["B-B", "B-T", "B-LT"]
LEVELS: tuple[Level, ...] = ("B-B", "B-T", "B-LT")
Format = Literal["cades", "pades"]
PDF_RESERVED = 32 * 1024      # bytes kept for the CMS in a PDF: chain + TST + OCSP fit


def asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def _needs_tsa(level: Level, timestamper: TimeStamper | None) -> TimeStamper | None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    if level == "B-B":
        return None
    if timestamper is None:
        raise ValueError(f"{level} needs a time-stamping authority (--tsa URL)")
    return timestamper


def sign_cades(content: bytes, signer: CardSigner, *, level: Level = "B-B",
               timestamper: TimeStamper | None = None,
               chain: Sequence[x509.Certificate] = (),
               ocsp_for: Callable[[], bytes] | None = None,
               tsa_ocsp_for: TsaOcsp | None = None,
               now: dt.datetime | None = None) -> bytes:
    """Detached CAdES signature of ``content`` (DER ContentInfo). ``chain`` is the issuing CA
    (and root) to embed at B-LT; ``ocsp_for()`` returns the signing certificate's OCSP
    response, called after the signature is time-stamped; ``tsa_ocsp_for(tsa, candidates)``
    the TSA certificate's (``candidates``: the certificates of the token and ``chain``, among
    which its issuer usually is), embedded after the signer's."""
    ts = _needs_tsa(level, timestamper)
    if level == "B-LT" and (ocsp_for is None or not chain):
        raise ValueError("B-LT needs the issuing CA certificate and an OCSP responder")
    attrs = PdfCMSSignedAttributes(signing_time=now or dt.datetime.now(dt.UTC))
    info: cms.ContentInfo = asyncio.run(signer.async_sign_general_data(
        content, "sha256", detached=True, use_cades=True, timestamper=ts,
        signed_attr_settings=attrs))
    if level == "B-LT":
        assert ocsp_for is not None
        responses = [ocsp_for()]
        extra: list[x509.Certificate] = []
        if tsa_ocsp_for is not None:
            tsa, token_certs = tsa_of(info)
            responses.append(tsa_ocsp_for(tsa, [*token_certs, *chain]))
            extra = [c for c in token_certs if c.subject == tsa.issuer]
        info = with_validation_data(info, [*chain, *extra], responses)
    return bytes(info.dump())


TsaOcsp = Callable[[x509.Certificate, Sequence[x509.Certificate]], bytes]


def tsa_of(info: cms.ContentInfo) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The TSA certificate of the signature's time stamp, and the other certificates of the
    token (asn1crypto's CMS classes through ``cmsparts``)."""
    from cps_sign.cmsparts import from_signed_data, tst_from_token

    token = from_signed_data(info["content"]).tst
    if token is None:
        raise ValueError("the signature carries no time stamp")
    t = tst_from_token(cms.ContentInfo.load(token))
    certs = [x509.load_der_x509_certificate(der) for der in t.certs]
    tsa = next((c for c in certs if c.serial_number == t.sid_serial
                and c.issuer.public_bytes() == t.sid_issuer), None)
    if tsa is None:
        raise ValueError("the time-stamp token does not carry the TSA certificate")
    return tsa, [c for c in certs if c is not tsa]


def with_validation_data(info: cms.ContentInfo, chain: Sequence[x509.Certificate],
                         ocsp_responses: Sequence[bytes]) -> cms.ContentInfo:
    """``info`` with ``chain`` added to its certificates and the OCSP responses in its crls
    (RFC 5940). The signer infos are carried over as parsed, byte for byte."""
    signed = info["content"]
    certs = list(signed["certificates"]) if signed["certificates"].native is not None else []
    have = {c.chosen.dump() for c in certs}
    for cert in chain:
        item = asn1_cert(cert)
        if item.dump() not in have:
            certs.append(cms.CertificateChoices(name="certificate", value=item))
            have.add(item.dump())
    revinfo = [cms.RevocationInfoChoice(name="other", value=cms.OtherRevocationInfoFormat({
        "other_rev_info_format": "ocsp_response",
        "other_rev_info": asn1_ocsp.OCSPResponse.load(der)})) for der in ocsp_responses]
    new = cms.SignedData({
        "version": "v5",
        "digest_algorithms": signed["digest_algorithms"],
        "encap_content_info": cms.EncapsulatedContentInfo.load(
            signed["encap_content_info"].dump()),
        "certificates": cms.CertificateSet(certs),
        "crls": cms.RevocationInfoChoices(revinfo),
        "signer_infos": signed["signer_infos"],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": new})


def sign_pades(pdf: bytes, signer: CardSigner, *, level: Level = "B-B",
               timestamper: TimeStamper | None = None,
               chain: Sequence[x509.Certificate] = (), field_name: str = "Signature1"
               ) -> bytes:
    """The PDF with a PAdES baseline signature appended (an incremental update). At B-LT
    pyHanko fetches the OCSP responses of the signer and the TSA and writes them with the
    chain in the document security store (DSS); ``chain`` must end at the root."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.misc import PdfReadError
    from pyhanko.sign import fields, signers

    ts = _needs_tsa(level, timestamper)
    context = None
    if level == "B-LT":
        roots = [c for c in chain if c.issuer == c.subject]
        if not roots:
            raise ValueError("B-LT needs the chain up to the root (--chain)")
        context = validation_context(roots, [c for c in chain if c not in roots])
    try:
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    except (PdfReadError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"not a PDF file: {exc}") from None
    meta = signers.PdfSignatureMetadata(
        field_name=field_name, md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES, embed_validation_info=level == "B-LT",
        validation_context=context, use_pades_lta=False)
    pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=ts)
    out = pdf_signer.sign_pdf(writer, bytes_reserved=PDF_RESERVED)
    return bytes(out.getvalue())


def validation_context(roots: Sequence[x509.Certificate],
                       others: Sequence[x509.Certificate], *, moment: dt.datetime | None = None,
                       fetch: bool = True) -> ValidationContext:
    return ValidationContext(trust_roots=[asn1_cert(c) for c in roots],
                             other_certs=[asn1_cert(c) for c in others],
                             allow_fetching=fetch, revocation_mode="soft-fail",
                             moment=moment)
