"""Attachment facts: detected types, archives (zip, rar, 7z, tar, gzip, bzip2, xz), bombs,
encryption, Office."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import Message, Part, ScanLimits
from mailgate.filter.message.readers.dispatch import detect_type
from tests.support.outlook_msg import simple_msg
from tests.support.pdfs import make_encrypted_pdf, make_pdf, pdf_with_extras, show
from tests.support.samples import (
    EICAR,
    VISA_TEST_CARD,
    aes_zip,
    attachment_part,
    bzip2_bytes,
    docx_bytes,
    elf_executable,
    encrypted_ooxml,
    gzip_bytes,
    lying_size_zip,
    mime_message,
    nested_zip,
    odt_bytes,
    ole_doc_encrypted,
    ole_doc_plain,
    ole_doc_with_vba,
    pe_executable,
    rar4_bytes,
    rar4_header_encrypted,
    sevenzip_bytes,
    tar_bytes,
    text_part,
    xls_bytes,
    xlsx_bytes,
    xz_bytes,
    zip_bomb,
    zip_bytes,
    zipcrypto_zip,
)


def parse_attachment(payload: bytes, filename: str, limits: ScanLimits | None = None) -> Message:
    raw = mime_message(text_part("see attached"), attachment_part(payload, filename))
    return parse_message(raw, limits)


def by_path(msg: Message) -> dict[str, Part]:
    return {p.path: p for p in msg.parts}


# --------------------------------------------------------------------------- detected type


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (pe_executable(), "application/vnd.microsoft.portable-executable"),
        (elf_executable(), "application/x-executable"),
        (b"MZ is how this plain text note starts.\nNothing to run here.\n", "text/plain"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40), "image/png"),
        (b"<!DOCTYPE html><html><body>x</body></html>", "text/html"),
        (b"#!/bin/sh\necho hi\n", "text/x-shellscript"),
        (zip_bytes({"a.txt": b"x"}), "application/zip"),
    ],
)
def test_detected_type(payload: bytes, expected: str) -> None:
    assert detect_type(payload) == expected


def test_pe_under_another_name_is_detected_and_declared_type_kept() -> None:
    msg = parse_attachment(pe_executable(), "holiday.jpg")
    part = by_path(msg)["2"]
    assert part.extensions == ("jpg",)
    assert part.content_type == "application/octet-stream"
    assert part.detected_type == "application/vnd.microsoft.portable-executable"
    assert part.size == len(pe_executable())
    assert part.text is None


# --------------------------------------------------------------------------- zip


def test_zip_members_become_parts_with_paths() -> None:
    archive = zip_bytes(
        {
            "docs/readme.txt": b"card " + VISA_TEST_CARD.encode(),
            "tool.exe": pe_executable(),
            "empty/": b"",
        }
    )
    parts = by_path(parse_attachment(archive, "report.zip"))
    assert parts["2"].detected_type == "application/zip"
    readme = parts["2/report.zip/docs/readme.txt"]
    assert readme.member_of == "2"
    assert readme.depth == 1
    assert readme.is_attachment
    assert readme.text == "card " + VISA_TEST_CARD
    tool = parts["2/report.zip/tool.exe"]
    assert tool.extensions == ("exe",)
    assert tool.detected_type == "application/vnd.microsoft.portable-executable"
    assert tool.payload == pe_executable()
    assert not any(p.endswith("empty/") for p in parts)


def test_nested_zips_to_depth_three() -> None:
    archive = nested_zip(["report.zip", "inner.zip", "deepest.zip"], "a.exe", EICAR)
    msg = parse_attachment(archive, "report.zip")
    parts = by_path(msg)
    leaf = parts["2/report.zip/inner.zip/deepest.zip/a.exe"]
    assert leaf.payload == EICAR
    assert leaf.member_of == "2/report.zip/inner.zip/deepest.zip"
    assert leaf.depth == 3
    assert msg.unscannable == set()


def test_zip_nested_beyond_depth_three_is_too_deep() -> None:
    archive = nested_zip(["l1.zip", "l2.zip", "l3.zip", "l4.zip"], "a.exe", EICAR)
    msg = parse_attachment(archive, "l1.zip")
    assert "too_deep" in msg.unscannable
    assert "too_deep" in by_path(msg)["2/l1.zip/l2.zip/l3.zip/l4.zip"].unscannable
    assert all(p.payload != EICAR for p in msg.parts)


@pytest.mark.parametrize("build", [zipcrypto_zip, aes_zip])
def test_encrypted_zip_lists_member_names(build) -> None:  # type: ignore[no-untyped-def]
    msg = parse_attachment(build({"invoice.pdf.exe": b"x" * 100, "notes.txt": b"y"}), "e.zip")
    parts = by_path(msg)
    assert parts["2"].encrypted
    assert "encrypted" in parts["2"].unscannable
    member = parts["2/e.zip/invoice.pdf.exe"]
    assert member.encrypted and member.payload == b""
    assert member.extensions == ("pdf", "exe")
    assert "2/e.zip/notes.txt" in parts
    assert "encrypted" in msg.unscannable


def test_zip_bomb_is_refused_without_inflating() -> None:
    msg = parse_attachment(zip_bomb(20 << 20), "bomb.zip")
    member = by_path(msg)["2/bomb.zip/zeros.bin"]
    assert member.payload == b""
    assert "over_budget" in member.unscannable
    assert "over_budget" in msg.unscannable


def test_zip_member_over_total_budget() -> None:
    archive = zip_bytes({"a.bin": bytes(300_000), "b.bin": bytes(300_000)})
    msg = parse_attachment(archive, "two.zip", ScanLimits(max_decoded_total=500_000))
    parts = by_path(msg)
    assert parts["2/two.zip/a.bin"].size == 300_000
    assert "over_budget" in parts["2/two.zip/b.bin"].unscannable


def test_zip_with_lying_sizes_is_malformed_and_not_inflated() -> None:
    msg = parse_attachment(lying_size_zip(), "small.zip")
    member = by_path(msg)["2/small.zip/small.txt"]
    assert member.size <= 1000
    assert "malformed" in msg.unscannable


def test_truncated_zip_is_malformed() -> None:
    archive = zip_bytes({"a.txt": b"hello" * 100})
    msg = parse_attachment(archive[: len(archive) // 2], "cut.zip")
    assert "malformed" in msg.unscannable


def test_archive_members_count_against_max_parts() -> None:
    archive = zip_bytes({f"f{i}.txt": b"x" for i in range(50)})
    msg = parse_attachment(archive, "many.zip", ScanLimits(max_parts=20))
    assert len(msg.parts) == 20
    assert "over_budget" in msg.unscannable


@pytest.mark.parametrize(
    ("codec", "content_type"),
    [
        ("utf-16", "text/plain"),  # Python writes the byte-order mark
        ("utf-16-le", "text/plain; charset=utf-16le"),
        ("utf-32-be", "text/plain; charset=UTF-32BE"),
    ],
)
def test_wide_text_attachments_are_read(codec: str, content_type: str) -> None:
    """Excel's "Unicode text" export is UTF-16; without a byte-order mark only the declared
    charset says so (libmagic sees binary)."""
    data = f"name\tcard\r\nBob\t{VISA_TEST_CARD}\r\n".encode(codec)
    raw = mime_message(text_part("see attached"), attachment_part(data, "export.txt", content_type))
    text = by_path(parse_message(raw))["2"].text
    assert text is not None and VISA_TEST_CARD in text


@pytest.mark.parametrize("name", ["letter.rtf", "letter.doc"])
def test_rtf_documents_are_read_as_text(name: str) -> None:
    """Word saves RTF under .rtf and .doc alike; its control words must not split a number."""
    rtf = (
        rb"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Arial;}}\pard\f0 Card 4111\~1111 {\b 1111}"
        rb" 1111\par Caf\'e9\par}"
    )
    text = by_path(parse_attachment(rtf, name))["2"].text
    assert text == f"Card {VISA_TEST_CARD}\nCafé\n"


def test_opendocument_and_xml_markup_is_rendered() -> None:
    """LibreOffice splits a paragraph into spans at will; its content.xml reads as shown,
    one line per paragraph."""
    card = VISA_TEST_CARD.replace(
        " 1111 1111", ' <text:span text:style-name="T1">1111</text:span> 1111'
    )
    archive = odt_bytes([f"Card {card}", "Second paragraph"])
    content = by_path(parse_attachment(archive, "letter.odt"))["2/letter.odt/content.xml"]
    assert content.text == f"Card {VISA_TEST_CARD}\nSecond paragraph"


# --------------------------------------------------------------------------- tar and compressors

CARD_CSV = b"name,card\nJ. Doe," + VISA_TEST_CARD.encode() + b"\n"


@pytest.mark.parametrize("compress", [gzip_bytes, bzip2_bytes, xz_bytes])
def test_compressed_file_is_inflated_and_named_after_its_outer_name(
    compress: Callable[[bytes], bytes],
) -> None:
    msg = parse_attachment(compress(CARD_CSV), "customers.csv.gz")
    inner = by_path(msg)["2/customers.csv.gz/customers.csv"]
    assert inner.member_of == "2"
    assert inner.extensions == ("csv",)
    assert inner.text == CARD_CSV.decode()
    assert msg.unscannable == set()


def test_gzip_stored_name_wins_over_the_outer_name() -> None:
    msg = parse_attachment(gzip_bytes(pe_executable(), stored_name="C:\\tmp\\run.exe"), "x.gz")
    inner = by_path(msg)["2/x.gz/run.exe"]
    assert inner.extensions == ("exe",)
    assert inner.detected_type == "application/vnd.microsoft.portable-executable"


def test_concatenated_gzip_streams_read_as_one_file() -> None:
    msg = parse_attachment(gzip_bytes(b"first half, ") + gzip_bytes(b"second half"), "a.txt.gz")
    assert by_path(msg)["2/a.txt.gz/a.txt"].text == "first half, second half"


def test_tar_gz_members_become_parts() -> None:
    archive = gzip_bytes(tar_bytes({"backup/run.exe": pe_executable(), "notes.csv": CARD_CSV}))
    parts = by_path(parse_attachment(archive, "backup.tgz"))
    tar = parts["2/backup.tgz/backup.tar"]
    assert tar.detected_type == "application/x-tar"
    run = parts["2/backup.tgz/backup.tar/backup/run.exe"]
    assert run.detected_type == "application/vnd.microsoft.portable-executable"
    assert run.depth == 2
    assert parts["2/backup.tgz/backup.tar/notes.csv"].text == CARD_CSV.decode()


def test_gzip_bomb_inflates_no_further_than_the_ratio_guard() -> None:
    """20 MB of zeros gzip to ~20 KB; the guard allows 100x the compressed size beyond 1 MB,
    so about 2 MB are inflated, marked over budget, and the rest is never produced."""
    bomb = gzip_bytes(bytes(20 << 20))
    msg = parse_attachment(bomb, "zeros.bin.gz")
    inner = by_path(msg)["2/zeros.bin.gz/zeros.bin"]
    assert 0 < inner.size <= max(1 << 20, 100 * len(bomb))
    assert "over_budget" in inner.unscannable


def test_compressed_file_over_the_total_budget_is_cut() -> None:
    data = random.Random(7).randbytes(1 << 20)  # does not compress
    msg = parse_attachment(gzip_bytes(data), "a.bin.gz", ScanLimits(max_decoded_total=1_200_000))
    inner = by_path(msg)["2/a.bin.gz/a.bin"]
    assert inner.size < len(data)
    assert "over_budget" in inner.unscannable


def test_truncated_gzip_is_malformed_but_what_inflated_is_still_scanned() -> None:
    data = b"".join(b"line %d of the customer list\n" % i for i in range(20_000)) + CARD_CSV
    cut = gzip_bytes(CARD_CSV + data)[:-2000]
    msg = parse_attachment(cut, "list.csv.gz")
    inner = by_path(msg)["2/list.csv.gz/list.csv"]
    assert "malformed" in msg.unscannable
    assert inner.text is not None and VISA_TEST_CARD in inner.text


def test_tar_member_over_the_budget_is_listed_unread() -> None:
    archive = tar_bytes({"small.txt": b"hello", "big.bin": bytes(300_000)})
    msg = parse_attachment(archive, "x.tar", ScanLimits(max_decoded_total=350_000))
    parts = by_path(msg)
    assert parts["2/x.tar/small.txt"].text == "hello"
    big = parts["2/x.tar/big.bin"]
    assert big.payload == b""
    assert "over_budget" in big.unscannable


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"\x1f\x8b\x08\x00" + b"\xff" * 300, "x.gz"),
        (b"\xfd7zXZ\x00" + bytes(300), "x.xz"),
        (tar_bytes({"a.txt": b"hello" * 200})[:700], "x.tar"),
    ],
)
def test_damaged_compressed_files_and_tars_are_malformed(payload: bytes, name: str) -> None:
    assert "malformed" in parse_attachment(payload, name).unscannable


# --------------------------------------------------------------------------- PDF


def test_pdf_text_is_read_also_inside_archives() -> None:
    statement = make_pdf([show("Statement"), show("Card " + VISA_TEST_CARD)])
    parts = by_path(parse_attachment(zip_bytes({"docs/statement.pdf": statement}), "a.zip"))
    member = parts["2/a.zip/docs/statement.pdf"]
    assert member.detected_type == "application/pdf"
    assert member.text is not None and VISA_TEST_CARD in member.text


def test_pdf_behind_junk_is_read_when_it_says_it_is_a_pdf() -> None:
    """libmagic only looks at the first bytes; readers find the header up to 1 KB in."""
    shifted = b"\x00" * 600 + make_pdf([show("Card " + VISA_TEST_CARD)])
    named = by_path(parse_attachment(shifted, "statement.pdf"))["2"]
    assert named.text is not None and VISA_TEST_CARD in named.text
    unnamed = by_path(parse_attachment(shifted, "blob.bin"))["2"]
    assert unnamed.text is None and not unnamed.unscannable


def test_encrypted_and_damaged_pdfs_are_unscannable() -> None:
    locked = by_path(parse_attachment(make_encrypted_pdf([show("x")]), "a.pdf"))["2"]
    assert locked.encrypted and "encrypted" in locked.unscannable
    broken = parse_attachment(b"%PDF-1.4\n" + bytes(range(256)) * 8, "b.pdf")
    assert "malformed" in broken.unscannable


def test_files_embedded_in_a_pdf_are_members() -> None:
    carrier = pdf_with_extras("Invoice", files={"setup.exe": pe_executable()}, note="pay now")
    parts = by_path(parse_attachment(carrier, "invoice.pdf"))
    assert parts["2"].text == "Invoice\npay now"
    exe = parts["2/invoice.pdf/setup.exe"]
    assert exe.member_of == "2"
    assert exe.extensions == ("exe",)
    assert exe.detected_type == "application/vnd.microsoft.portable-executable"


def test_pdf_that_is_also_a_zip_is_read_both_ways() -> None:
    polyglot = make_pdf([show("Card " + VISA_TEST_CARD)]) + zip_bytes({"run.exe": pe_executable()})
    parts = by_path(parse_attachment(polyglot, "both.pdf"))
    assert VISA_TEST_CARD in (parts["2"].text or "")
    assert parts["2/both.pdf/run.exe"].detected_type.endswith("portable-executable")


# --------------------------------------------------------------------------- Outlook .msg


def test_outlook_message_text_and_attachments_become_parts() -> None:
    saved = simple_msg(
        "Customer list",
        "Card on file: " + VISA_TEST_CARD,
        {"setup.exe": pe_executable(), "notes.csv": b"a,b\n1,2\n"},
    )
    parts = by_path(parse_attachment(saved, "forwarded.msg"))
    outer = parts["2"]
    assert outer.detected_type == "application/vnd.ms-outlook"
    assert outer.text is not None and VISA_TEST_CARD in outer.text
    assert "Subject: Customer list" in outer.text
    exe = parts["2/forwarded.msg/setup.exe"]
    assert exe.detected_type == "application/vnd.microsoft.portable-executable"
    assert exe.member_of == "2"
    assert parts["2/forwarded.msg/notes.csv"].text == "a,b\n1,2\n"


def test_outlook_message_deep_in_archives_is_read_but_its_files_are_too_deep() -> None:
    saved = simple_msg("Deep", "Card " + VISA_TEST_CARD, {"a.txt": b"x"})
    archive = nested_zip(["one.zip", "two.zip", "three.zip"], "deep.msg", saved)
    msg = parse_attachment(archive, "one.zip")
    deep = [p for p in msg.parts if p.filename == "deep.msg"]
    assert deep and VISA_TEST_CARD in (deep[0].text or "")
    assert "too_deep" in deep[0].unscannable
    assert not any(p.filename == "a.txt" for p in msg.parts)


# --------------------------------------------------------------------------- rar and 7z


def test_rar_listing_and_stored_member_content() -> None:
    msg = parse_attachment(rar4_bytes({"run.exe": pe_executable(), "a.txt": b"hello"}), "x.rar")
    parts = by_path(msg)
    assert parts["2/x.rar/run.exe"].detected_type == "application/vnd.microsoft.portable-executable"
    assert parts["2/x.rar/a.txt"].text == "hello"
    assert msg.unscannable == set()


def test_encrypted_rar_members_are_listed() -> None:
    msg = parse_attachment(rar4_bytes({"run.exe": b"MZ" * 10}, encrypted=True), "x.rar")
    parts = by_path(msg)
    assert parts["2"].encrypted
    assert parts["2/x.rar/run.exe"].encrypted
    assert "encrypted" in msg.unscannable


def test_rar_with_encrypted_headers_is_encrypted() -> None:
    msg = parse_attachment(rar4_header_encrypted(), "x.rar")
    assert by_path(msg)["2"].encrypted
    assert "encrypted" in msg.unscannable


@pytest.mark.parametrize(
    ("payload", "name"),
    [(b"Rar!\x1a\x07\x00" + b"\x01" * 300, "x.rar"), (b"7z\xbc\xaf\x27\x1c" + bytes(300), "x.7z")],
)
def test_damaged_rar_and_7z_are_malformed(payload: bytes, name: str) -> None:
    assert "malformed" in parse_attachment(payload, name).unscannable


def test_7z_is_listed_and_extracted() -> None:
    msg = parse_attachment(sevenzip_bytes({"run.exe": pe_executable(), "a.csv": b"4,5\n"}), "x.7z")
    parts = by_path(msg)
    assert parts["2/x.7z/run.exe"].payload == pe_executable()
    assert parts["2/x.7z/a.csv"].text == "4,5\n"


@pytest.mark.parametrize("header_encryption", [False, True])
def test_encrypted_7z(header_encryption: bool) -> None:
    data = sevenzip_bytes({"run.exe": b"MZ"}, password="pw", header_encryption=header_encryption)
    msg = parse_attachment(data, "x.7z")
    assert by_path(msg)["2"].encrypted
    assert "encrypted" in msg.unscannable
    names = [p.filename for p in msg.parts]
    assert ("run.exe" in names) is not header_encryption


# --------------------------------------------------------------------------- Office


def test_docx_text_joins_runs() -> None:
    doc = docx_bytes([["Card: 4111 11", "11 1111 1111"], ["Second paragraph"]])
    part = by_path(parse_attachment(doc, "letter.docx"))["2"]
    assert part.text == "Card: 4111 1111 1111 1111\nSecond paragraph"
    assert not part.macros
    assert not any(p.member_of for p in parse_attachment(doc, "letter.docx").parts)


def test_xlsx_text_has_shared_inline_and_numeric_cells() -> None:
    book = xlsx_bytes(["4111 1111 1111 1111"], ["DE89 3704 0044 0532 0130 00"], ["123456789"])
    part = by_path(parse_attachment(book, "sheet.xlsx"))["2"]
    assert part.text is not None
    for value in ("4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "123456789"):
        assert value in part.text
    assert not part.macros


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (docx_bytes([["hi"]], vba=True), "invoice.docm"),
        (xlsx_bytes(["a"], vba=True), "budget.xlsm"),
        (xlsx_bytes(["a"], macro_sheet=True), "excel4.xlsx"),
        (ole_doc_with_vba(), "old.doc"),
        (xls_bytes(macro_sheet=True), "xlm.xls"),
        (docx_bytes([["hi"]], vba=True), "renamed.pdf"),
    ],
)
def test_macros_are_found(payload: bytes, name: str) -> None:
    part = by_path(parse_attachment(payload, name))["2"]
    assert part.macros


@pytest.mark.parametrize("payload", [ole_doc_plain(), xls_bytes()])
def test_plain_ole_documents_have_no_macros(payload: bytes) -> None:
    msg = parse_attachment(payload, "plain.doc")
    assert not by_path(msg)["2"].macros
    assert msg.unscannable == set()


@pytest.mark.parametrize(
    "payload", [encrypted_ooxml(), xls_bytes(encrypted=True), ole_doc_encrypted()]
)
def test_encrypted_office_documents(payload: bytes) -> None:
    msg = parse_attachment(payload, "secret.docx")
    assert by_path(msg)["2"].encrypted
    assert "encrypted" in msg.unscannable


def test_docm_inside_zip_is_inspected() -> None:
    archive = zip_bytes({"invoice.docm": docx_bytes([["pay now"]], vba=True)})
    member = by_path(parse_attachment(archive, "a.zip"))["2/a.zip/invoice.docm"]
    assert member.macros
    assert member.text == "pay now"


def test_damaged_ole_file_is_malformed() -> None:
    data = ole_doc_with_vba()
    msg = parse_attachment(data[:600], "cut.doc")
    assert "malformed" in msg.unscannable
