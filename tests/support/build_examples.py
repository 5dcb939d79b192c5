"""Writes the default pack's example messages (rules/examples/*.eml) from the sample builders.

    .venv/bin/python -m tests.support.build_examples rules/examples

The examples are committed so `mailgate rules test` runs anywhere; this script is how they
were made, so a reviewer can see exactly what each holds. tests/test_default_pack.py checks
that the committed files are what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from tests.support import samples as s
from tests.support.outlook_msg import simple_msg
from tests.support.pdfs import make_encrypted_pdf, make_pdf, pdf_with_extras, show

CARD_VISA = "4111 1111 1111 1111"
CARD_MC = "5555-5555-5555-4444"

PLAIN_BUSINESS = """Hi Bob,

Thanks for the call today. As discussed, the kickoff is on 3 December at 10:00 in room 4.12.
Our order 2211-4456 shipped yesterday; the tracking number is 1Z999AA10123456784.
Call me on +1 (555) 010-2345 if anything is unclear.

Best regards,
Alice
"""


class Foreign(NamedTuple):
    """A golden example carrying a file that other software wrote (tests/data/foreign/README.md
    says which, and how), unchanged, as an attachment under its own name."""

    file: str
    content_type: str
    text: str  # the message's own text part


FOREIGN = Path(__file__).resolve().parent.parent / "data" / "foreign"
FOREIGN_EXAMPLES = {
    "card-pdf-libreoffice.eml": Foreign(
        "letter-libreoffice.pdf", "application/pdf", "Booking confirmation attached.\n"
    ),
    "card-docx-libreoffice.eml": Foreign(
        "letter-libreoffice.docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "Booking confirmation attached.\n",
    ),
    "card-odt-libreoffice.eml": Foreign(
        "letter-libreoffice.odt",
        "application/vnd.oasis.opendocument.text",
        "Booking confirmation attached.\n",
    ),
    "card-xlsx-libreoffice.eml": Foreign(
        "customers-libreoffice.xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "Customer list attached.\n",
    ),
    "card-in-zip-infozip.eml": Foreign(
        "customers-infozip.zip", "application/zip", "Customer list attached.\n"
    ),
    "card-in-7z-p7zip.eml": Foreign(
        "customers-p7zip.7z", "application/x-7z-compressed", "Customer list attached.\n"
    ),
    "exe-in-zip-infozip.eml": Foreign(
        "tools-infozip.zip", "application/zip", "The cleanup tool, as promised.\n"
    ),
    "exe-in-7z-p7zip.eml": Foreign(
        "photos-p7zip.7z", "application/x-7z-compressed", "Holiday photos attached.\n"
    ),
    "exe-in-pdf-qpdf.eml": Foreign(
        "letter-exe-qpdf.pdf", "application/pdf", "Booking confirmation attached.\n"
    ),
    "outlook-msg-with-pdf.eml": Foreign(
        "attachment_msg_pdf.msg", "application/vnd.ms-outlook", "Forwarding the saved mail.\n"
    ),
    "outlook-msg-with-attachments.eml": Foreign(
        "attachment_test_msg.msg", "application/vnd.ms-outlook", "Forwarding the saved mail.\n"
    ),
}


def foreign_example(example: Foreign) -> bytes:
    data = (FOREIGN / example.file).read_bytes()
    return s.mime_message(
        s.text_part(example.text),
        s.attachment_part(data, example.file, example.content_type),
    )


def examples() -> dict[str, bytes]:
    pdf = make_pdf([show("Autumn brochure: new routes and fares from 3 December.")])
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\0" * 40
    card_text = f"Please charge the deposit to my card {CARD_VISA}, expiry 12/28.\n"
    card_csv = b"name,card,expiry\r\nJ. Doe,4111111111111111,12/28\r\n"
    inner_with_card = s.text_message(card_text, subject="Booking details")
    vba_docx = s.docx_bytes([["Quarterly figures"]], vba=True)
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Example//EN\r\nMETHOD:REQUEST\r\n"
        "BEGIN:VEVENT\r\nUID:20261127T100000Z-1@example.com\r\nDTSTART:20261203T100000Z\r\n"
        "DTEND:20261203T110000Z\r\nSUMMARY:Project kickoff\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return {
        # --- cards: every place a card number hides
        "card-plain.eml": s.text_message(card_text, subject="Deposit"),
        "card-html-split.eml": s.text_message(
            "<html><body><p>Card: 4111<span>1111</span>1111<b>1111</b> exp 12/28</p></body></html>",
            content_type="text/html; charset=utf-8",
        ),
        "card-html-hidden-digits.eml": s.text_message(
            "<html><body><p>Card: 4111 <span style='display:none'>93</span>1111 "
            "<span style='font-size:0'>7</span>1111 1111</p></body></html>",
            content_type="text/html; charset=utf-8",
        ),
        "card-html-comment.eml": s.text_message(
            f"<html><body><p>See you Monday.</p><!-- card {CARD_VISA} --></body></html>",
            content_type="text/html; charset=utf-8",
        ),
        "card-base64.eml": s.text_message(
            f"Mastercard {CARD_MC} for the hotel.\n", encoding="base64"
        ),
        "card-csv-attachment.eml": s.mime_message(
            s.text_part("Customer list attached.\n"),
            s.attachment_part(
                b"name,card,expiry\r\nJ. Doe,4111111111111111,12/28\r\n",
                "customers.csv",
                "text/csv",
            ),
        ),
        "card-csv-gz-attachment.eml": s.mime_message(
            s.text_part("Customer list attached, compressed.\n"),
            s.attachment_part(
                s.gzip_bytes(b"name,card,expiry\r\nJ. Doe,4111111111111111,12/28\r\n"),
                "customers.csv.gz",
                "application/gzip",
            ),
        ),
        "card-pdf-attachment.eml": s.mime_message(
            s.text_part("Statement attached.\n"),
            s.attachment_part(
                make_pdf([show("Monthly statement"), show(f"Card on file: {CARD_VISA}")]),
                "statement.pdf",
                "application/pdf",
            ),
        ),
        "card-outlook-msg.eml": s.mime_message(
            s.text_part("Forwarding the customer's mail as an attachment.\n"),
            s.attachment_part(
                simple_msg("Booking", card_text), "Booking.msg", "application/vnd.ms-outlook"
            ),
        ),
        "card-rtf-attachment.eml": s.mime_message(
            s.text_part("Letter attached.\n"),
            s.attachment_part(
                b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\pard\\f0 Please charge card "
                b"4111\\~1111 {\\b 1111} 1111.\\par}",
                "letter.rtf",
                "application/rtf",
            ),
        ),
        "card-odt-attachment.eml": s.mime_message(
            s.text_part("Letter attached.\n"),
            s.attachment_part(
                s.odt_bytes(
                    ['Card 4111 <text:span text:style-name="T1">1111</text:span> 1111 1111']
                ),
                "letter.odt",
                "application/vnd.oasis.opendocument.text",
            ),
        ),
        "card-docx-attachment.eml": s.mime_message(
            s.text_part("Signed form attached.\n"),
            s.attachment_part(
                s.docx_bytes([["Payment by card: ", "4111 1111 ", "1111 1111"]]),
                "form.docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
        ),
        "card-attached-message.eml": s.mime_message(
            s.text_part("Forwarding the booking below.\n"), s.message_part(inner_with_card)
        ),
        "card-html-attachment.eml": s.mime_message(
            s.text_part("Statement attached.\n"),
            s.attachment_part(
                b"<html><body>Card &#52;111&nbsp;1111 1111 1111</body></html>",
                "statement.html",
                "text/html",
            ),
        ),
        "numbers-not-cards.eml": s.text_message(
            "Order number: 4532015112830366\n"
            "Invoice no. 5105105105105100 is due on 2026-12-01.\n"
            "Tracking: 4024007103939509 (parcel service)\n"
            "Reference 1234 5678 9012 3456, phone +44 20 7946 0958, timestamp 1732700000000.\n",
            subject="Order confirmation",
        ),
        # --- ordinary mail that must pass
        "plain-business.eml": s.text_message(PLAIN_BUSINESS, subject="Kickoff"),
        "invoice.eml": s.mime_message(
            s.text_part(
                "Dear customer,\n\nplease find invoice INV-2026-0042 for EUR 1,250.00 attached, "
                "payable within 30 days.\n\nAccounts receivable\n"
            ),
            s.attachment_part(pdf, "INV-2026-0042.pdf", "application/pdf"),
            subject="Invoice INV-2026-0042",
        ),
        "newsletter.eml": s.mime_message(
            s.text_part(
                "This month: new offices, product news.\nUnsubscribe: "
                "https://news.example.com/u/123\n"
            ),
            s.text_part(
                "<html><body><h1>News</h1><p>New offices &amp; product news.</p>"
                '<a href="https://news.example.com/u/123">Unsubscribe</a></body></html>',
                "html",
            ),
            subtype="alternative",
            subject="November newsletter",
            extra_headers=[("List-Unsubscribe", "<https://news.example.com/u/123>")],
        ),
        "calendar-invite.eml": s.mime_message(
            s.text_part("You are invited: Project kickoff, 3 December 10:00 UTC.\n"),
            s.text_part(ics, "calendar", params="; method=REQUEST"),
            subtype="alternative",
            subject="Invitation: Project kickoff",
        ),
        "inline-image.eml": s.mime_message(
            s.text_part('<html><body><img src="cid:logo@example.com"> Hello</body></html>', "html"),
            s.MimePart(
                [
                    ("Content-Type", "image/png"),
                    ("Content-Transfer-Encoding", "base64"),
                    ("Content-ID", "<logo@example.com>"),
                    ("Content-Disposition", 'inline; filename="logo.png"'),
                ],
                s.encode_body(png, "base64"),
            ),
            subtype="related",
            subject="Signature with logo",
        ),
        # --- IBAN and SSN
        "iban.eml": s.text_message(
            "Please transfer the refund to DE89 3704 0044 0532 0130 00 by Friday.\n"
        ),
        "rf-reference.eml": s.text_message(
            "Use the creditor reference RF18 5390 0754 7034 with your payment.\n"
        ),
        "ssn.eml": s.text_message("New hire paperwork: SSN 536-90-4187, start date Monday.\n"),
        "ssn-no-context.eml": s.text_message("Ticket 536-90-4187 was closed yesterday.\n"),
        # --- malware and risky attachments
        "eicar-attachment.eml": s.mime_message(
            s.text_part("Test file.\n"), s.attachment_part(s.EICAR, "readme.txt", "text/plain")
        ),
        "eicar-nested-zip.eml": s.mime_message(
            s.text_part("Archive attached.\n"),
            s.attachment_part(
                s.nested_zip(["outer.zip", "inner.zip"], "notes.txt", s.EICAR),
                "outer.zip",
                "application/zip",
            ),
        ),
        "exe-attachment.eml": s.mime_message(
            s.text_part("Installer attached.\n"),
            s.attachment_part(s.pe_executable(), "setup.exe", "application/x-msdownload"),
        ),
        "exe-double-extension.eml": s.mime_message(
            s.text_part("Invoice attached.\n"),
            s.attachment_part(b"echo hello\r\n", "Invoice.PDF.bat. ", "application/pdf"),
        ),
        "exe-in-zip.eml": s.mime_message(
            s.text_part("Tools attached.\n"),
            s.attachment_part(
                s.zip_bytes({"tools/cleanup.scr": b"not really"}), "tools.zip", "application/zip"
            ),
        ),
        "exe-in-tar-gz.eml": s.mime_message(
            s.text_part("Backup attached.\n"),
            s.attachment_part(
                s.gzip_bytes(s.tar_bytes({"backup/restore.exe": s.pe_executable()})),
                "backup.tar.gz",
                "application/gzip",
            ),
        ),
        "exe-in-outlook-msg.eml": s.mime_message(
            s.text_part("See the saved mail.\n"),
            s.attachment_part(
                simple_msg("Tool", "Run this.", {"tool.exe": s.pe_executable()}),
                "Tool.msg",
                "application/vnd.ms-outlook",
            ),
        ),
        "exe-embedded-in-pdf.eml": s.mime_message(
            s.text_part("Invoice attached.\n"),
            s.attachment_part(
                pdf_with_extras("Invoice 2026-0042", files={"viewer.exe": s.pe_executable()}),
                "invoice.pdf",
                "application/pdf",
            ),
        ),
        "pe-renamed.eml": s.mime_message(
            s.text_part("Holiday photo.\n"),
            s.attachment_part(s.pe_executable(), "photo.jpg", "image/jpeg"),
        ),
        "exe-rfc2231-name.eml": s.mime_message(
            s.text_part("Report attached.\n"),
            s.attachment_part(
                b"payload",
                "x",
                disposition="attachment; filename*0*=utf-8''report.pdf.e; filename*1=xe",
            ),
        ),
        "encrypted-zip-with-exe.eml": s.mime_message(
            s.text_part("Password in the next mail.\n"),
            s.attachment_part(
                s.zipcrypto_zip({"payload.exe": b"x" * 200}), "secure.zip", "application/zip"
            ),
        ),
        "encrypted-zip.eml": s.mime_message(
            s.text_part("Salaries, password by phone.\n"),
            s.attachment_part(
                s.aes_zip({"salaries.xlsx": b"x" * 500}), "salaries.zip", "application/zip"
            ),
        ),
        # --- encrypted files and the passwords sent with them (issue 11)
        "password-zip-card.eml": s.mime_message(
            s.text_part("Customer list attached. The password is Harbour-7731.\n"),
            s.attachment_part(
                s.aes_zip({"customers.csv": card_csv}, "Harbour-7731"),
                "customers.zip",
                "application/zip",
            ),
        ),
        # Names encrypted too: only opening it shows the file, a program under a photo's name.
        "password-7z-exe.eml": s.mime_message(
            s.text_part("Die Fotos vom Ausflug. Passwort: Sommer2026!\n"),
            s.attachment_part(
                s.sevenzip_bytes(
                    {"photo.jpg": s.pe_executable()}, password="Sommer2026!", header_encryption=True
                ),
                "fotos.7z",
                "application/x-7z-compressed",
            ),
        ),
        "password-in-subject.eml": s.mime_message(
            s.text_part("Voici le projet de contrat.\n"),
            s.attachment_part(
                make_encrypted_pdf([show("Draft contract, version 3")], user=b"Lune-4821"),
                "contrat.pdf",
                "application/pdf",
            ),
            subject="Contrat (mot de passe : Lune-4821)",
        ),
        "wrong-password-zip.eml": s.mime_message(
            s.text_part("Salaries attached. Password: Winter-2026\n"),
            s.attachment_part(
                s.zipcrypto_zip({"salaries.csv": card_csv}, "Winter-2025"),
                "salaries.zip",
                "application/zip",
            ),
        ),
        "encrypted-pdf.eml": s.mime_message(
            s.text_part("Contract attached, password by phone.\n"),
            s.attachment_part(
                make_encrypted_pdf([show("Contract")]), "contract.pdf", "application/pdf"
            ),
        ),
        "message-partial.eml": (
            b"From: Alice <alice@corp.example>\r\nTo: Bob <bob@partner.example>\r\n"
            b"Subject: Customer list (1/2)\r\nMessage-ID: <partial-1@corp.example>\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: message/partial; id="list@corp.example"; number=1; total=2\r\n\r\n'
            b"Subject: Customer list\r\nContent-Type: text/plain\r\n\r\nJ. Doe, 4111 1111\r\n"
        ),
        "mz-text-file.eml": s.mime_message(
            s.text_part("Notes attached.\n"),
            s.attachment_part(
                b"MZ notes: the meeting moved to Tuesday.\r\n", "notes.txt", "text/plain"
            ),
        ),
        "pdf-attachment.eml": s.mime_message(
            s.text_part("Brochure attached.\n"),
            s.attachment_part(pdf, "brochure.pdf", "application/pdf"),
        ),
        "docm-macros.eml": s.mime_message(
            s.text_part("Figures attached.\n"),
            s.attachment_part(
                vba_docx, "figures.docm", "application/vnd.ms-word.document.macroEnabled.12"
            ),
        ),
        "macros-renamed-docx.eml": s.mime_message(
            s.text_part("Figures attached.\n"),
            s.attachment_part(
                vba_docx,
                "figures.docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
        ),
        # --- classification and fail-closed
        "confidential.eml": s.text_message(
            "Board minutes attached below.\n",
            subject="Board minutes",
            extra_headers=[("X-Classification", "CONFIDENTIAL")],
        ),
        "too-deep.eml": s.nested_messages(12, "the innermost message"),
        # --- no unread corners (issue 11)
        # The declared boundary appears nowhere: read as the text it is, its base64 piece decoded.
        "multipart-no-boundary-card.eml": (
            s.headers_block("Customer list", [("Content-Type", 'multipart/mixed; boundary="lost"')])
            + b"\r\nHello,\r\n\r\nthe list as discussed:\r\n\r\n"
            + b'Content-Type: text/csv; name="customers.csv"\r\n'
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + s.encode_body(card_csv, "base64")
        ),
        "eicar-too-deep.eml": s.nested_messages(
            60,
            innermost=s.mime_message(
                s.text_part("Test file."), s.attachment_part(s.EICAR, "readme.txt", "text/plain")
            ),
        ),
        # A second Subject: the one many clients show holds the card number.
        "duplicate-subject.eml": s.text_message(
            "Details as discussed.\n",
            subject="Travel booking",
            extra_headers=[("Subject", f"Card {CARD_VISA} exp 12/28")],
        ),
        # --- files made by other software
        **{name: foreign_example(example) for name, example in FOREIGN_EXAMPLES.items()},
    }


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "rules/examples")
    target.mkdir(parents=True, exist_ok=True)
    for name, data in examples().items():
        (target / name).write_bytes(data)
    print(f"wrote {len(examples())} examples to {target}")


if __name__ == "__main__":
    main()
