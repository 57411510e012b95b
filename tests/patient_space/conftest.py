"""Fixtures of the patient-space service tests: a migrated SQLite store (no HSM), the record
service and the patient space on it, professionals in the directory, enrolled patients, and
small valid and disguised files."""

from __future__ import annotations

import datetime as dt
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cps_login.patient_space import MessageBox, PatientSpace
from cps_login.patients import PatientService, ProfessionalContext
from pki import ids
from pki.clock import SYSTEM_CLOCK
from pki.store.db import Store
from pki.store.models import Professional


def new_ins(birth: dt.date, sex: int = 2) -> str:
    nir = f"{sex}{birth.year % 100:02d}{birth.month:02d}75{secrets.randbelow(10**6):06d}"
    return nir + ids.ins_key(nir)


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def pdf(text: str = "Compte rendu") -> bytes:
    """A one-page PDF written by pyHanko's writer (a real, parseable file)."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.writer import PdfFileWriter

    writer = PdfFileWriter()
    stream = generic.StreamObject(stream_data=f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page = generic.DictionaryObject({
        generic.NameObject("/Type"): generic.NameObject("/Page"),
        generic.NameObject("/MediaBox"): generic.ArrayObject(
            [generic.NumberObject(n) for n in (0, 0, 595, 842)]),
        generic.NameObject("/Contents"): writer.add_object(stream),
    })
    writer.insert_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@dataclass
class Space:
    store: Store
    records: PatientService
    space: PatientSpace
    doctor: ProfessionalContext       # in the care team of every patient enrolled here
    nurse: ProfessionalContext        # in no care team
    pharmacist: ProfessionalContext

    def enrol(self, given: str = "Louise", birth: dt.date = dt.date(1985, 5, 12),
              reps: tuple[str, ...] = ()) -> str:
        return self.records.enrol(self.doctor, new_ins(birth), given, "Martin", birth,
                                  reps).ins


def _pro(store: Store, profession: int, given: str) -> ProfessionalContext:
    rpps = ids.luhn_complete(f"1000{secrets.randbelow(10**6):06d}")
    with store.session() as session:
        session.add(Professional(rpps=rpps, profession_code=profession, given_name=given,
                                 surname="Test", created_at=dt.datetime.now(dt.UTC)))
    return ProfessionalContext("8" + rpps, profession)


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    store = Store(f"sqlite:///{tmp_path / 'space.db'}")
    store.migrate()
    records = PatientService(store, SYSTEM_CLOCK)
    try:
        yield Space(store, records, PatientSpace(records, MessageBox(secrets.token_bytes(32))),
                    _pro(store, 10, "Carla"), _pro(store, 60, "Nina"),
                    _pro(store, 21, "Paco"))
    finally:
        store.dispose()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (Playwright)")


def add_page(writer: Any, contents: bytes) -> None:
    """One A4 page drawing ``contents``, added to a pyHanko ``PdfFileWriter``."""
    from pyhanko.pdf_utils import generic

    writer.insert_page(generic.DictionaryObject({
        generic.NameObject("/Type"): generic.NameObject("/Page"),
        generic.NameObject("/MediaBox"): generic.ArrayObject(
            [generic.NumberObject(n) for n in (0, 0, 595, 842)]),
        generic.NameObject("/Contents"): writer.add_object(
            generic.StreamObject(stream_data=contents))}))


def pdf_with_script(hidden: bool = True) -> bytes:
    """A PDF whose open action runs JavaScript; ``hidden``: kept in a compressed object stream,
    so the words /JavaScript and /JS are nowhere in its raw bytes."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.writer import PdfFileWriter

    writer = PdfFileWriter(stream_xrefs=True)
    stream = writer.prepare_object_stream() if hidden else None
    action = writer.add_object(generic.DictionaryObject({
        generic.NameObject("/S"): generic.NameObject("/JavaScript"),
        generic.NameObject("/JS"): generic.TextStringObject("app.alert(1)")}), obj_stream=stream)
    add_page(writer, b"BT ET")
    writer.root[generic.NameObject("/OpenAction")] = action
    out = io.BytesIO()
    writer.write(out)
    data = out.getvalue()
    assert (b"/JavaScript" in data) is not hidden
    return data
