"""PDF text for DLP: pages, compression, damage, passwords and the budget, on PDFs built here."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.model import ScanLimits
from mailgate.filter.message.readers import pdf
from mailgate.filter.message.readers.pdf import PAGE_SEPARATOR, is_pdf, pdf_facts
from tests.support.pdfs import (
    build_pdf,
    make_encrypted_pdf,
    make_pdf,
    page_objects,
    pdf_with_extras,
    show,
)

CARD = "4111 1111 1111 1111"


def facts_of(data: bytes, **limits: int) -> pdf.PdfFacts:
    return pdf_facts(data, ScanBudget(ScanLimits(**limits)))


def test_one_page_text() -> None:
    facts = facts_of(make_pdf([show(f"Card {CARD} exp 12/30")]))
    assert facts.text == f"Card {CARD} exp 12/30"
    assert not facts.encrypted
    assert facts.unscannable == set()


@pytest.mark.parametrize(
    "content",
    [
        b"BT /F1 12 Tf 72 720 Td (4111 ) Tj (1111 ) Tj (1111 ) Tj (1111) Tj ET",
        b"BT /F1 12 Tf 72 720 Td [(4111) -280 (1111) -280 (1111) -280 (1111)] TJ ET",
        # Separate text objects, each placed where the last one ended ("4111 " is 30.024 wide).
        b"BT /F1 12 Tf 72 720 Td (4111 ) Tj ET BT /F1 12 Tf 102.024 720 Td (1111 ) Tj ET"
        b" BT /F1 12 Tf 132.048 720 Td (1111 1111) Tj ET",
    ],
    ids=["several-Tj", "TJ-kerned", "text-objects"],
)
def test_card_split_over_text_operators_comes_back_joined(content: bytes) -> None:
    facts = facts_of(make_pdf([content]))
    assert facts.text == CARD


def test_pieces_drawn_out_of_order_read_in_line_order() -> None:
    content = (
        b"BT /F1 12 Tf 102.024 720 Td (1111 1111 1111) Tj ET BT /F1 12 Tf 72 720 Td (4111 ) Tj ET"
    )
    assert facts_of(make_pdf([content])).text == CARD


def test_lines_are_separated_by_newline() -> None:
    content = b"BT /F1 12 Tf 72 720 Td (first line) Tj 0 -14 Td (second line) Tj ET"
    assert facts_of(make_pdf([content])).text == "first line\nsecond line"


def test_text_off_the_page_is_read() -> None:
    content = show("visible") + b" BT /F1 12 Tf 5000 -5000 Td (" + CARD.encode() + b") Tj ET"
    assert CARD in (facts_of(make_pdf([content])).text or "")


def test_many_unmapped_glyphs_before_the_text() -> None:
    # PDFium leaves NUL glyphs out of the text; get_text_range recurses once per leading one.
    content = b"BT /F1 12 Tf 72 720 Td (" + b"\x00" * 5000 + CARD.encode() + b") Tj ET"
    assert facts_of(make_pdf([content])).text == CARD


def test_pages_in_order() -> None:
    facts = facts_of(make_pdf([show("page one"), show(CARD), show("page three")]))
    assert facts.text == PAGE_SEPARATOR.join(["page one", CARD, "page three"])
    assert facts.unscannable == set()


def test_flate_compressed_content() -> None:
    data = make_pdf([show(CARD), show("second")], compress=True)
    assert CARD.encode() not in data
    assert facts_of(data).text == f"{CARD}{PAGE_SEPARATOR}second"


def test_filled_form_field_is_read() -> None:
    appearance = b"/Tx BMC BT /F1 12 Tf 2 8 Td (" + CARD.encode() + b") Tj ET EMC"
    objs = page_objects([show("Card number:")])
    objs[1] = b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [6 0 R] >> >>"
    objs[4] = objs[4][: -len(b">>")] + b"/Annots [6 0 R] >>"
    objs[6] = (
        b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (card) /V (" + CARD.encode() + b")"
        b" /Rect [200 700 400 730] /P 4 0 R /AP << /N 7 0 R >> >>"
    )
    objs[7] = (
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 30]"
        b" /Resources << /Font << /F1 3 0 R >> >> /Length %d >>\nstream\n"
        % len(appearance)
        + appearance
        + b"\nendstream"
    )
    assert b"/Annots [6 0 R]" in objs[4]
    assert facts_of(build_pdf(objs)).text == f"Card number:\n{CARD}"


def test_leading_junk_before_header() -> None:
    data = b"X" * 1000 + make_pdf([show(CARD)])
    assert not data.startswith(pdf.PDF_SIGNATURE)
    assert is_pdf(data)
    assert facts_of(data).text == CARD


def test_is_pdf_searches_as_far_as_pdfium() -> None:
    body = make_pdf([show(CARD)])
    assert is_pdf(b"X" * 1024 + body)  # PDFium still opens this one
    assert facts_of(b"X" * 1024 + body).text == CARD
    assert not is_pdf(b"X" * 1025 + body)
    assert not is_pdf(b"PK\x03\x04" + b"\x00" * 64)
    assert not is_pdf(b"")


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75, 0.9, 0.99])
def test_truncated_pdf_never_raises(cut: float) -> None:
    data = make_pdf([show(CARD), show("second page")])
    facts = facts_of(data[: int(len(data) * cut)])
    # PDFium rebuilds a lost xref only while the trailer is there; either way no exception.
    if facts.text is None:
        assert facts.unscannable == {"malformed"}
    else:
        assert CARD in facts.text
    assert not facts.encrypted


def test_truncated_before_xref_is_malformed() -> None:
    data = make_pdf([show(CARD)])
    facts = facts_of(data[: data.index(b"xref")])
    assert facts.text is None
    assert facts.unscannable == {"malformed"}


def test_wrong_xref_offset_is_recovered() -> None:
    data = make_pdf([show(CARD)])
    start = data.rindex(b"startxref\n") + len(b"startxref\n")
    data = data[:start] + b"9" + data[start:]  # startxref now points past the end
    assert facts_of(data).text == CARD


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n" + bytes(range(256)) * 40,
        b"%PDF-1.4\n" + b"\x00" * 4096,
        b"%PDF-",
        b"",
        b"not a pdf at all",
    ],
    ids=["binary-garbage", "zeros", "signature-only", "empty", "text"],
)
def test_garbage_is_malformed(data: bytes) -> None:
    facts = facts_of(data)
    assert facts.text is None
    assert not facts.encrypted
    assert facts.unscannable == {"malformed"}


def test_page_pdfium_cannot_load_is_malformed_but_others_are_read() -> None:
    data = make_pdf([show("page one"), show(CARD)]).replace(b"/Count 2", b"/Count 3")
    facts = facts_of(data)
    assert facts.text == f"page one{PAGE_SEPARATOR}{CARD}"
    assert facts.unscannable == {"malformed"}


def test_document_without_pages_is_malformed() -> None:
    facts = facts_of(make_pdf([]))
    assert facts.text is None
    assert facts.unscannable == {"malformed"}


def test_encrypted_pdf_is_really_encrypted() -> None:
    # The helper is right if PDFium asks for a password, refuses a wrong one and opens with
    # either the user or the owner password.
    data = make_encrypted_pdf([show(CARD)])
    assert CARD.encode() not in data
    for password in (None, "", "wrong"):
        with pytest.raises(pdfium.PdfiumError) as caught:
            pdfium.PdfDocument(data, password=password)
        assert caught.value.err_code == pdfium.raw.FPDF_ERR_PASSWORD
    for password in ("secret", "owner"):
        doc = pdfium.PdfDocument(data, password=password)
        try:
            page = doc[0]
            textpage = page.get_textpage()
            assert textpage.get_text_range() == CARD
            textpage.close()
            page.close()
        finally:
            doc.close()


def test_password_protected_pdf() -> None:
    facts = facts_of(make_encrypted_pdf([show(CARD)]))
    assert facts.encrypted
    assert facts.unscannable == {"encrypted"}
    assert facts.text is None


def test_unsupported_security_handler_counts_as_encrypted() -> None:
    data = make_encrypted_pdf([show(CARD)]).replace(b"/Filter /Standard", b"/Filter /Adobe.PubSec")
    facts = facts_of(data)
    assert facts.encrypted
    assert facts.unscannable == {"encrypted"}


def test_owner_password_only_pdf_is_read() -> None:
    data = make_encrypted_pdf([show(CARD)], user=b"")
    assert CARD.encode() not in data
    facts = facts_of(data)
    assert not facts.encrypted
    assert facts.text == CARD
    assert facts.unscannable == set()


def test_page_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "MAX_PDF_PAGES", 3)
    facts = facts_of(make_pdf([show(f"page {n}") for n in range(1, 5)]))
    assert facts.text == PAGE_SEPARATOR.join(["page 1", "page 2", "page 3"])
    assert facts.unscannable == {"over_budget"}


def test_page_limit_not_hit_at_exactly_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "MAX_PDF_PAGES", 3)
    facts = facts_of(make_pdf([show(f"page {n}") for n in range(1, 4)]))
    assert facts.text is not None and facts.text.endswith("page 3")
    assert facts.unscannable == set()


def test_text_budget() -> None:
    facts = facts_of(make_pdf([show(CARD)] * 5), max_text_chars=50)
    assert facts.unscannable == {"over_budget"}
    assert facts.text is not None
    assert len(facts.text) == 50
    assert facts.text.startswith(f"{CARD}{PAGE_SEPARATOR}{CARD}")


def test_text_budget_counts_what_the_message_already_used() -> None:
    budget = ScanBudget(ScanLimits(max_text_chars=50), text_chars=45)
    facts = pdf_facts(make_pdf([show(CARD)]), budget)
    assert facts.text == CARD[:5]
    assert facts.unscannable == {"over_budget"}
    assert budget.text_chars == 45  # fitting the text is the caller's job


def test_text_budget_used_up_reads_nothing() -> None:
    budget = ScanBudget(ScanLimits(max_text_chars=50), text_chars=50)
    facts = pdf_facts(make_pdf([show(CARD)]), budget)
    assert facts.text is None
    assert facts.unscannable == {"over_budget"}


def test_text_exactly_at_budget_is_not_over() -> None:
    facts = facts_of(make_pdf([show(CARD)]), max_text_chars=len(CARD))
    assert facts.text == CARD
    assert facts.unscannable == set()


def test_comment_notes_and_document_properties_are_read() -> None:
    data = pdf_with_extras(
        "Quarterly figures",
        note=f"card {CARD}",
        info={"Title": "Q3", "Keywords": "IBAN DE89 3704 0044 0532 0130 00"},
    )
    facts = facts_of(data)
    assert facts.text == (
        f"Quarterly figures\ncard {CARD}\n\nTitle: Q3\nKeywords: IBAN DE89 3704 0044 0532 0130 00"
    )


def test_embedded_files_are_members_read_within_the_budget() -> None:
    files = {"list.csv": f"card,{CARD}\n".encode(), "big.bin": bytes(5000)}
    data = pdf_with_extras("cover", files=files)
    facts = facts_of(data)
    assert [(m.name, m.payload) for m in facts.attachments] == [
        ("list.csv", f"card,{CARD}\n".encode()),
        ("big.bin", bytes(5000)),
    ]
    tight = facts_of(data, max_decoded_total=1000)
    assert tight.attachments[0].payload is not None
    assert tight.attachments[1].payload is None
    assert tight.attachments[1].unscannable == {"over_budget"}
