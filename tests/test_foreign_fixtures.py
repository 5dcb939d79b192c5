"""The files other software wrote (tests/data/foreign/README.md): each still shows the program
that wrote it, and its golden example carries it unchanged. What the default pack decides on
them is tests/test_default_pack.py's."""

from __future__ import annotations

import hashlib
import zipfile
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.build_examples import FOREIGN, FOREIGN_EXAMPLES, foreign_example

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
LIBREOFFICE = b"LibreOffice/7.4.7.2"
LIBREOFFICE_PDF = "LibreOffice 7.4".encode("utf-16-be").hex().encode()  # /Producer, hex UTF-16
POI_BLOBS = {  # git blob ids in Apache POI's test-data/hsmf/
    "attachment_msg_pdf.msg": "35b66e1116ab2f4d734a328e09710cc3dca74422",
    "attachment_test_msg.msg": "ea82d915ed0357ccc3e473873fa2c43efb988d0b",
}


def member(name: str, inner: str) -> bytes:
    with zipfile.ZipFile(FOREIGN / name) as archive:
        return archive.read(inner)


def test_libreoffice_wrote_the_documents() -> None:
    assert LIBREOFFICE in member("letter-libreoffice.odt", "meta.xml")
    assert LIBREOFFICE in member("letter-libreoffice.docx", "docProps/app.xml")
    assert LIBREOFFICE in member("customers-libreoffice.xlsx", "docProps/app.xml")
    assert (
        b"/Producer<FEFF" + LIBREOFFICE_PDF.upper()
        in (FOREIGN / "letter-libreoffice.pdf").read_bytes()
    )


def test_qpdf_rewrote_libreoffice_pdf_with_the_program_attached() -> None:
    pdf = (FOREIGN / "letter-exe-qpdf.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-1.6\n%\xbf\xf7\xa2\xfe\n")  # the binary comment qpdf writes
    assert b"<feff" + LIBREOFFICE_PDF in pdf  # the producer it kept, in its own lower case
    assert b"/EmbeddedFiles" in pdf


@pytest.mark.parametrize("name", ["customers-infozip.zip", "tools-infozip.zip"])
def test_info_zip_wrote_the_zips(name: str) -> None:
    with zipfile.ZipFile(FOREIGN / name) as archive:
        for info in archive.infolist():
            # "Made by" Unix, version 3.0: Info-ZIP's zip 3.0 (Python's zipfile says 2.0).
            assert (info.create_system, info.create_version) == (3, 30)


@pytest.mark.parametrize("name", ["customers-p7zip.7z", "photos-p7zip.7z"])
def test_the_7z_files_are_7z(name: str) -> None:
    assert (FOREIGN / name).read_bytes().startswith(b"7z\xbc\xaf\x27\x1c")


@pytest.mark.parametrize("name", sorted(POI_BLOBS))
def test_the_outlook_files_are_apache_pois_own(name: str) -> None:
    data = (FOREIGN / name).read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == POI_BLOBS[name]


@pytest.mark.parametrize("name", sorted(FOREIGN_EXAMPLES))
def test_the_golden_example_carries_the_file_unchanged(name: str) -> None:
    committed = (EXAMPLES / name).read_bytes()
    assert committed == foreign_example(FOREIGN_EXAMPLES[name])
    parsed = message_from_bytes(committed, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == FOREIGN_EXAMPLES[name].file
    assert attachment.get_content() == (FOREIGN / FOREIGN_EXAMPLES[name].file).read_bytes()


def test_every_file_here_is_in_a_golden_example() -> None:
    files = {p.name for p in FOREIGN.iterdir() if p.is_file()} - {"README.md", "make.sh"}
    assert files == {example.file for example in FOREIGN_EXAMPLES.values()}
