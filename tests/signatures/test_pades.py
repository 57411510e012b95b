"""PAdES B-B / B-T / B-LT with the card's signature key: pyHanko's own validator passes them
(trust: our root; B-LT: from the DSS with fetching off), and our verifier agrees."""

from __future__ import annotations

import io

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PdfFileWriter
from pyhanko.sign.validation import validate_pdf_signature

from cps_sign.card_signer import CardSigner
from cps_sign.fetch import HttpTimeStamper
from cps_sign.signing import Level, sign_pades, validation_context
from tests.signatures.conftest import PIN, SignEnv
from tests.signatures.test_cades import verdict, verifier


def make_pdf(text: str = "Ordonnance: paracetamol 1 g, 3 fois par jour") -> bytes:
    writer = PdfFileWriter()
    content = generic.StreamObject(stream_data=(
        f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET").encode())
    font = generic.DictionaryObject({
        generic.pdf_name("/Type"): generic.pdf_name("/Font"),
        generic.pdf_name("/Subtype"): generic.pdf_name("/Type1"),
        generic.pdf_name("/BaseFont"): generic.pdf_name("/Helvetica")})
    page = generic.DictionaryObject({
        generic.pdf_name("/Type"): generic.pdf_name("/Page"),
        generic.pdf_name("/MediaBox"): generic.ArrayObject(
            [generic.NumberObject(n) for n in (0, 0, 595, 842)]),
        generic.pdf_name("/Contents"): writer.add_object(content),
        generic.pdf_name("/Resources"): generic.DictionaryObject({
            generic.pdf_name("/Font"): generic.DictionaryObject({
                generic.pdf_name("/F1"): writer.add_object(font)})})})
    writer.insert_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("level", ["B-B", "B-T", "B-LT"])
def test_pyhanko_validator_passes_pades(sign_env: SignEnv, level: Level) -> None:
    card = sign_env.cards["alice"]
    signed = sign_pades(make_pdf(), CardSigner(card, PIN), level=level,
                        timestamper=HttpTimeStamper(sign_env.tsa_url) if level != "B-B" else None,
                        chain=sign_env.chain)
    assert signed.startswith(b"%PDF-")
    reader = PdfFileReader(io.BytesIO(signed))
    embedded = reader.embedded_signatures[0]
    assert embedded.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
    # pyHanko's validator with our root; for B-LT, no fetching: only what the PDF carries
    ltv = level == "B-LT"
    context = validation_context([sign_env.root], [sign_env.issuing], fetch=not ltv)
    if ltv:
        from pyhanko.sign.validation.dss import DocumentSecurityStore

        dss = DocumentSecurityStore.read_dss(reader)
        assert dss.ocsps, "B-LT: the DSS carries the OCSP responses"
    status = validate_pdf_signature(embedded, signer_validation_context=context,
                                    ts_validation_context=context)
    assert status.intact and status.valid and status.trusted, status.pretty_print_details()
    assert status.bottom_line
    if level != "B-B":
        assert status.timestamp_validity is not None and status.timestamp_validity.trusted
    report = verifier(sign_env, live=not ltv).verify_pades(signed)
    assert verdict(report) == ("TOTAL_PASSED", None), report
    assert report.format == "pades" and report.level == level
    assert report.signer == "8" + card.holder().rpps


def test_pades_refusals(sign_env: SignEnv) -> None:
    card = sign_env.cards["alice"]
    signed = sign_pades(make_pdf(), CardSigner(card, PIN), level="B-T",
                        timestamper=HttpTimeStamper(sign_env.tsa_url))
    v = verifier(sign_env)
    # a changed byte of the signed text: the byte-range digest differs
    forged = signed.replace(b"paracetamol 1 g", b"paracetamol 9 g")
    assert forged != signed
    assert verdict(v.verify_pades(forged)) == ("TOTAL_FAILED", "HASH_FAILURE")
    # an unsigned PDF, a truncated one, not a PDF
    assert verdict(v.verify_pades(make_pdf())) == ("INDETERMINATE", "SIGNED_DATA_NOT_FOUND")
    assert v.verify_pades(signed[: len(signed) // 2]).indication != "TOTAL_PASSED"
    assert verdict(v.verify_pades(b"%PDF-1.7 garbage")) == ("TOTAL_FAILED", "FORMAT_FAILURE")
    # a page appended after the signature: not covered
    reader_bytes = signed + b"\n% appended\n"
    assert v.verify_pades(reader_bytes).indication in {"TOTAL_PASSED", "TOTAL_FAILED"}


def test_pades_refuses_non_pdf(sign_env: SignEnv) -> None:
    with pytest.raises(ValueError, match="not a PDF"):
        sign_pades(b"hello", CardSigner(sign_env.cards["alice"], PIN))


def test_many_small_object_stream_bombs_are_bounded_by_the_document_budget() -> None:
    """Sixty fields, each in an object stream that inflates to just under pyHanko's 4 MiB
    floor for one stream: 248 KB that pyHanko's default document budget (256 MiB) let the
    public POST /verify inflate whole (259 MiB held, measured). The verifier's budget is
    16 MiB or 100 times the file: refused as unreadable, a few tens of MiB at most."""
    import tracemalloc

    from cps_sign import report as r
    from cps_sign.pdf import read_pdf_signature
    from cps_sign.report import Verdict
    from tests.patient_space.test_pdf_bomb import object_stream, pdf_with_object_streams

    mib = 1024 * 1024
    fields = list(range(10, 70))
    catalog = [(1, b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields ["
                + b" ".join(b"%d 0 R" % f for f in fields) + b"] >> >>"),
               (2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
               (3, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>")]
    bomb = pdf_with_object_streams(
        [object_stream(catalog)] +
        [object_stream([(f, b"<< /FT /Tx /T (f%d) >>" % f)], gap=4 * mib - 4096)
         for f in fields])
    assert len(bomb) < 256 * 1024
    with pytest.raises(Verdict):                       # warm: pyHanko's modules imported
        read_pdf_signature(b"%PDF-1.7\n%%EOF\n")
    tracemalloc.start()
    try:
        with pytest.raises(Verdict) as refused:
            read_pdf_signature(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.sub_indication == r.FORMAT_FAILURE
    assert "exceeds the limit" in refused.value.detail
    assert peak < 64 * mib, peak


def test_a_child_reads_what_post_verify_is_sent(sign_env: SignEnv,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_pdf_signature_isolated`` (POST /verify) judges as the in-process reader does —
    B-LT with its DSS, a forged byte, no signature, garbage — and a PDF too costly to read
    (the child past its CPU limit) is FORMAT_FAILURE; every child busy is ``PdfBusy``."""
    import threading

    from cps_sign import pdf as cps_pdf
    from cps_sign.verify import Verifier
    from tests.redteam.test_oidc_round6 import _fields_array_pdf

    card = sign_env.cards["alice"]
    signed = sign_pades(make_pdf(), CardSigner(card, PIN), level="B-LT",
                        timestamper=HttpTimeStamper(sign_env.tsa_url), chain=sign_env.chain)
    here = verifier(sign_env)
    policy = sign_env.auth.config.profiles.sign_policy_oid
    isolated = Verifier([sign_env.root], [sign_env.issuing], [policy],
                        pdf_reader=cps_pdf.read_pdf_signature_isolated)
    for document in (signed, signed.replace(b"paracetamol 1 g", b"paracetamol 9 g"),
                     make_pdf(), b"%PDF-1.7 garbage"):
        assert verdict(isolated.verify_pades(document)) == verdict(here.verify_pades(document))
    report = isolated.verify_pades(signed)
    assert verdict(report) == ("TOTAL_PASSED", None) and report.level == "B-LT", report
    monkeypatch.setattr(cps_pdf, "CHILD_CPU", 1)
    costly = isolated.verify_pades(_fields_array_pdf(1_000_000))    # 2.4 KB, ~11 s of CPU
    assert verdict(costly) == ("TOTAL_FAILED", "FORMAT_FAILURE")
    assert "too large or too complex" in costly.detail
    monkeypatch.setattr(cps_pdf, "CHILD_CPU", 3)
    # one child at a time per client address: its next PDF is PdfBusy(mine), others go on
    monkeypatch.setattr(cps_pdf, "_CLIENTS", {"192.0.2.1": 1})
    with pytest.raises(cps_pdf.PdfBusy) as busy:
        isolated.verify_pades(signed, "192.0.2.1")
    assert busy.value.mine
    assert verdict(isolated.verify_pades(signed, "192.0.2.2")) == ("TOTAL_PASSED", None)
    assert cps_pdf._CLIENTS == {"192.0.2.1": 1}                 # the other's count released
    monkeypatch.setattr(cps_pdf, "_SLOTS", threading.BoundedSemaphore(1))
    monkeypatch.setattr(cps_pdf, "CHILD_WAIT", 0.1)
    cps_pdf._SLOTS.acquire()
    with pytest.raises(cps_pdf.PdfBusy):
        isolated.verify_pades(signed)
