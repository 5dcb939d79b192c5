"""The message model: headers, names, part walk, transfer encodings, charsets, text views."""

from __future__ import annotations

import pytest

from mailgate.filter.message.headers import decode_rfc2047, extensions_of, parse_params
from mailgate.filter.message.html import html_to_text
from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import Message, ScanLimits
from tests.support.pdfs import make_pdf, show
from tests.support.samples import (
    VISA_TEST_CARD,
    MimePart,
    attachment_part,
    crlf,
    headers_block,
    message_part,
    mime_message,
    multipart_entity,
    nested_messages,
    text_message,
    text_part,
)


def only_text(msg: Message) -> str:
    return "\n".join(p.text or "" for p in msg.texts())


# --------------------------------------------------------------------------- headers


def test_headers_are_decoded_unfolded_and_case_insensitive() -> None:
    raw = crlf(
        "From: a@example.com\nSubject: =?utf-8?B?UXVhcnRlcmx5IHJlcG9ydCDinJM=?=\n"
        "X-Long: first\n second\nx-classification: Confidential\nMessage-ID: <m1@x> \n\nbody\n"
    )
    msg = parse_message(raw)
    assert msg.subject == "Quarterly report ✓"
    assert msg.header("X-LONG") == ["first second"]
    assert msg.header("X-Classification") == ["Confidential"]
    assert msg.message_id == "<m1@x>"
    assert msg.size == len(raw)


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("=?utf-8?Q?caf=C3=A9_au_lait?=", "café au lait"),
        ("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
        ("=?utf-8?B?w6k=?= =?utf-8?B?w6k=?=", "éé"),  # whitespace between words dropped
        ("=?utf-8?B?4py=?= =?utf-8?B?kw==?=", "✓"),  # a character split across two words
        ("=?utf-8*en?Q?hello?=", "hello"),  # RFC 2231 language suffix
        ("=?x-unknown?Q?caf=E9?=", "café"),  # unknown charset: UTF-8, then Latin-1
        ("=?utf-8?B?SGVsbG8?=", "Hello"),  # missing base64 padding
        ("plain =?broken", "plain =?broken"),
    ],
)
def test_rfc2047(encoded: str, decoded: str) -> None:
    assert decode_rfc2047(encoded) == decoded


def test_raw_8bit_header_bytes_fall_back_to_utf8_then_latin1() -> None:
    raw = b"Subject: caf\xc3\xa9\r\nX-Latin: caf\xe9\r\n\r\nbody\r\n"
    msg = parse_message(raw)
    assert msg.subject == "café"
    assert msg.header("x-latin") == ["café"]


def test_header_values_are_bounded() -> None:
    limits = ScanLimits(max_header_value=1000)
    raw = b"Subject: " + b"A" * 5000 + b"\r\n\r\nbody\r\n"
    msg = parse_message(raw, limits)
    assert 900 <= len(msg.subject) <= 1000


# --------------------------------------------------------------------------- filenames


def test_rfc2231_continuations_with_charset_join_into_one_name() -> None:
    part = attachment_part(
        b"MZ", "", disposition="attachment; filename*0*=utf-8''report.pdf.e; filename*1=xe"
    )
    msg = parse_message(mime_message(text_part("hi"), part))
    (att,) = msg.attachments
    assert att.filename == "report.pdf.exe"
    assert att.extensions == ("pdf", "exe")


@pytest.mark.parametrize(
    ("disposition", "name_param", "expected"),
    [
        ("attachment; filename*=UTF-8''%E2%82%AC%20rates.xlsx", None, "€ rates.xlsx"),
        ('attachment; filename="=?utf-8?B?w7xiZXJzaWNodC5wZGY=?="', None, "übersicht.pdf"),
        ("attachment", '"from-content-type.zip"', "from-content-type.zip"),
        ("", "=?iso-8859-1?Q?r=E9sum=E9.doc?=", "résumé.doc"),
        ("attachment; filename=\"plain.txt\"; filename*=utf-8''better.txt", None, "better.txt"),
        (
            'attachment; filename*0="long name "; filename*1="part two.csv"',
            None,
            "long name part two.csv",
        ),
        ('attachment; filename="unterminated.exe', None, "unterminated.exe"),
    ],
)
def test_filename_sources(disposition: str, name_param: str | None, expected: str) -> None:
    part = attachment_part(b"data", "", disposition=disposition, name_param=name_param)
    (att,) = parse_message(mime_message(part)).attachments
    assert att.filename == expected


def test_both_names_give_extensions_the_saved_name_last() -> None:
    """Clients differ in which name they save a file under: Content-Disposition's filename
    or Content-Type's name. Both names' extensions count; the filename's come last."""
    part = attachment_part(b"echo hi\r\n", "notes.html", name_param='"run.bat"')
    (att,) = parse_message(mime_message(text_part("see"), part)).attachments
    assert att.filename == "notes.html"
    assert att.extensions == ("bat", "html")


@pytest.mark.parametrize(
    ("name", "extensions"),
    [
        ("a.PDF.exe . ", ("pdf", "exe")),
        ("invoice.pdf.exe", ("pdf", "exe")),
        ("README", ()),
        ("archive.tar.GZ", ("tar", "gz")),
        ("dir/sub\\evil.js", ("js",)),
        ("photo.jpg\x00.exe", ("jpg", "exe")),
        ("trailing...", ()),
        ("spaced .exe", ("exe",)),
        ("gpj\u202e.exe", ("exe",)),
    ],
)
def test_extensions(name: str, extensions: tuple[str, ...]) -> None:
    assert extensions_of(name) == extensions


def test_parse_params_keeps_quoted_semicolons() -> None:
    ctype, params = parse_params('Multipart/Mixed; boundary="a;b"; charset=UTF-8')
    assert ctype == "multipart/mixed"
    assert params == {"boundary": "a;b", "charset": "UTF-8"}


# --------------------------------------------------------------------------- part walk


def test_paths_depths_and_attachment_flags_follow_the_structure() -> None:
    inner = mime_message(
        text_part("inner body"),
        attachment_part(make_pdf([show("in")]), "in.pdf"),
        boundary="inner-msg",
    )
    raw = mime_message(
        multipart_entity([text_part("plain body"), text_part("<p>html body</p>", "html")]),
        attachment_part(make_pdf([show("report")]), "report.pdf", "application/pdf"),
        message_part(inner),
        MimePart([("Content-Type", "image/png")], b"iVBORw0KGgo=\r\n"),
    )
    msg = parse_message(raw)
    summary = [(p.path, p.content_type, p.filename, p.is_attachment, p.depth) for p in msg.parts]
    assert summary == [
        ("1.1", "text/plain", None, False, 0),
        ("1.2", "text/html", None, False, 0),
        ("2", "application/pdf", "report.pdf", True, 0),
        ("3", "message/rfc822", "forwarded.eml", True, 0),
        ("3.1", "text/plain", None, False, 1),
        ("3.2", "application/octet-stream", "in.pdf", True, 1),
        ("4", "image/png", None, True, 0),
    ]
    assert msg.unscannable == set()
    assert [p.path for p in msg.attachments] == ["2", "3", "3.2", "4"]


def test_single_part_message_body_is_part_1() -> None:
    msg = parse_message(text_message("hello " + VISA_TEST_CARD))
    (part,) = msg.parts
    assert part.path == "1"
    assert part.text is not None and VISA_TEST_CARD in part.text


def test_attached_message_headers_and_body_are_text() -> None:
    inner = text_message("inner card " + VISA_TEST_CARD, subject="Fwd secret 5500")
    msg = parse_message(mime_message(text_part("see attached"), message_part(inner)))
    texts = only_text(msg)
    assert "Fwd secret 5500" in texts
    assert VISA_TEST_CARD in texts


def test_message_depth_limit_marks_too_deep_and_the_flat_pass_reads_below_it() -> None:
    limits = ScanLimits(max_depth=3)
    deep = parse_message(nested_messages(5, body="bottom " + VISA_TEST_CARD), limits)
    assert "too_deep" in deep.unscannable
    # Below the limit the flat pass finds every part at one level, past the limit.
    assert max(p.depth for p in deep.parts) == 4
    assert VISA_TEST_CARD in only_text(deep)
    shallow = parse_message(nested_messages(2, body="bottom " + VISA_TEST_CARD), limits)
    assert "too_deep" not in shallow.unscannable
    assert VISA_TEST_CARD in only_text(shallow)


def test_attached_eml_file_is_parsed_as_a_message() -> None:
    inner = mime_message(
        text_part("card " + VISA_TEST_CARD),
        attachment_part(b"MZ\x90\x00" * 50, "tool.exe"),
        boundary="inner-msg",
    )
    msg = parse_message(mime_message(text_part("hi"), attachment_part(inner, "saved.eml")))
    names = [p.filename for p in msg.parts]
    assert "tool.exe" in names
    assert VISA_TEST_CARD in only_text(msg)


def test_base64_encoded_message_rfc822_is_decoded_and_walked() -> None:
    inner = text_message("encoded inner " + VISA_TEST_CARD)
    part = MimePart(
        [("Content-Type", "message/rfc822"), ("Content-Transfer-Encoding", "base64")],
        __import__("base64").encodebytes(inner),
    )
    msg = parse_message(mime_message(text_part("x"), part))
    assert VISA_TEST_CARD in only_text(msg)


def test_max_parts_marks_over_budget() -> None:
    parts = [text_part(f"part {i}") for i in range(30)]
    msg = parse_message(mime_message(*parts), ScanLimits(max_parts=10))
    assert len(msg.parts) == 10
    assert "over_budget" in msg.unscannable


def test_delivery_status_is_read_as_text() -> None:
    status = MimePart(
        [("Content-Type", "message/delivery-status")],
        crlf(
            "Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; bob@x.org\n"
            "Status: 5.1.1\n"
        ),
    )
    msg = parse_message(mime_message(text_part("bounce"), status, subtype="report"))
    assert "Status: 5.1.1" in only_text(msg)


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("encoding", ["8bit", "base64", "quoted-printable"])
def test_transfer_encodings_decode(encoding: str) -> None:
    body = "Zahlung: " + VISA_TEST_CARD + " - Grüße €\n"
    msg = parse_message(text_message(body, encoding=encoding))
    (part,) = msg.parts
    assert part.payload.replace(b"\r\n", b"\n") == body.encode("utf-8")
    assert part.text == body


def test_base64_with_junk_and_missing_padding_still_decodes() -> None:
    raw = headers_block(
        extra=[("Content-Type", "text/plain"), ("Content-Transfer-Encoding", "base64")]
    )
    raw += b"\r\nNDExMSAxMTEx\r\n!!--**!!\r\nIDExMTEgMTExMQ\r\n"
    (part,) = parse_message(raw).parts
    assert part.text == "4111 1111 1111 1111"


def test_uuencoded_part_is_decoded() -> None:
    import binascii

    line = binascii.b2a_uu(b"card 4111 1111 1111 1111")
    part = MimePart(
        [("Content-Type", "text/plain"), ("Content-Transfer-Encoding", "x-uuencode")],
        b"begin 644 a.txt\r\n" + line.replace(b"\n", b"\r\n") + b"`\r\nend\r\n",
    )
    msg = parse_message(mime_message(part))
    assert msg.parts[0].payload == b"card 4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        ("iso-8859-1", "caf\xe9".encode("latin-1"), "café"),
        ("unknown-8bit", "café".encode(), "café"),
        ("us-ascii", "café".encode(), "café"),  # lying charset: really UTF-8
        ("utf-8", b"caf\xe9", "café"),  # lying charset: really Latin-1
        ("x-no-such-charset", b"caf\xe9", "café"),
        ("punycode", b"abc-def", "abc-def"),  # refused codec, read as UTF-8
        ("windows-1252", b"\x80 5", "€ 5"),
    ],
)
def test_charset_fallbacks(charset: str, body: bytes, expected: str) -> None:
    raw = headers_block(
        extra=[
            ("Content-Type", f"text/plain; charset={charset}"),
            ("Content-Transfer-Encoding", "8bit"),
        ]
    )
    (part,) = parse_message(raw + b"\r\n" + body).parts
    assert part.text == expected


# --------------------------------------------------------------------------- text views


def test_format_flowed_soft_breaks_are_joined() -> None:
    body = "Card 4111 1111 \n1111 1111 end\n> quoted \n-- \nsig\n"
    msg = parse_message(text_message(body, content_type="text/plain; format=flowed"))
    text = msg.parts[0].text or ""
    assert "Card 4111 1111 1111 1111 end\n" in text
    assert "-- \nsig" in text


def test_format_flowed_delsp_removes_the_soft_break_space() -> None:
    body = "4111111111 \n111111 ok\n"
    ctype = "text/plain; format=flowed; delsp=yes"
    msg = parse_message(text_message(body, content_type=ctype))
    assert (msg.parts[0].text or "").startswith("4111111111111111 ok")


def test_html_is_rendered_so_tag_split_digits_join() -> None:
    html = (
        "<html><head><style>.x{color:red}</style><script>var card='0000';</script></head>"
        "<body><p>Card 4111<b>1111</b>1111 1111</p><p>&#52;&#x35;&#53;5&nbsp;&euro;"
        "&amp;&lt;b&gt;</p><!-- 9999 --></body></html>"
    )
    msg = parse_message(mime_message(text_part(html, "html")))
    text = msg.parts[0].text
    # What is shown first; then, each on lines of its own, what is not (it leaves all the same).
    assert text == "Card 411111111111 1111\n4555 €&<b>\n\n.x{color:red}\n\nvar card='0000';\n\n9999"


def test_html_block_tags_and_zero_width_characters() -> None:
    text = html_to_text("<div>a</div><div>b</div>4111\u200b1111<br>x<td>y</td>")
    assert text == "a\nb\n41111111\nx\ny"


def test_text_like_attachments_get_text_views() -> None:
    msg = parse_message(
        mime_message(
            text_part("cover"),
            attachment_part(b"name,card\r\nBob,4111 1111 1111 1111\r\n", "cards.csv", "text/csv"),
            attachment_part(b"<p>4111<i>1111</i>1111 1111</p>", "page.html", "text/html"),
            attachment_part(b"plain note 5500\n", "note.txt"),
            attachment_part(b"\x89PNG\r\n\x1a\n" + bytes(100), "img.png", "image/png"),
        )
    )
    by_name = {p.filename: p.text for p in msg.parts}
    assert "Bob,4111 1111 1111 1111" in (by_name["cards.csv"] or "")
    assert by_name["page.html"] == "411111111111 1111"
    assert by_name["note.txt"] == "plain note 5500\n"
    assert by_name["img.png"] is None


def test_total_text_is_bounded() -> None:
    limits = ScanLimits(max_text_chars=1000)
    msg = parse_message(mime_message(text_part("a" * 800), text_part("b" * 800)), limits)
    assert sum(len(p.text or "") for p in msg.parts) == 1000
    assert "over_budget" in msg.unscannable


def test_nul_bytes_do_not_split_text() -> None:
    raw = headers_block(extra=[("Content-Type", "text/plain")]) + b"\r\n4111\x001111 1111 1111\r\n"
    assert parse_message(raw).parts[0].text == "41111111 1111 1111\n"


# --------------------------------------------------------------------------- defects


def test_ordinary_defects_do_not_make_mail_unscannable() -> None:
    # No MIME-Version, LF line ends, header without a space, unterminated multipart.
    raw = (
        b"From: a@example.com\nSubject:no space\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nhello\n--b\nContent-Type: text/plain\n\nlast part\n"
    )
    msg = parse_message(raw)
    assert msg.unscannable == set()
    assert [p.text for p in msg.parts] == ["hello", "last part"]


def test_boundary_that_never_appears_is_read_as_the_text_it_is() -> None:
    """Every byte of it could be read, so it is not malformed (issue 11)."""
    raw = headers_block(extra=[("Content-Type", 'multipart/mixed; boundary="nope"')])
    raw += b"\r\nsome text with " + VISA_TEST_CARD.encode() + b"\r\n"
    msg = parse_message(raw)
    assert msg.unscannable == set()
    assert VISA_TEST_CARD in only_text(msg)


def test_undeclared_boundary_is_recovered_from_the_body() -> None:
    body = multipart_body_with("real-b")
    raw = headers_block(extra=[("Content-Type", "multipart/mixed")]) + b"\r\n" + body
    msg = parse_message(raw)
    assert msg.unscannable == set()  # every part was read, with the boundary its body uses
    assert "evil.exe" in [p.filename for p in msg.parts]
    assert VISA_TEST_CARD in only_text(msg)


def test_wrong_declared_boundary_is_recovered_from_the_body() -> None:
    body = multipart_body_with("real-b")
    raw = headers_block(extra=[("Content-Type", 'multipart/mixed; boundary="other"')])
    msg = parse_message(raw + b"\r\n" + body)
    assert msg.unscannable == set()
    assert "evil.exe" in [p.filename for p in msg.parts]


def multipart_body_with(boundary: str) -> bytes:
    from tests.support.samples import multipart_body

    return multipart_body(
        [text_part("card " + VISA_TEST_CARD), attachment_part(b"MZ\x90\x00", "evil.exe")],
        boundary,
    )


def test_hidden_html_neither_splits_what_is_shown_nor_escapes_the_detectors() -> None:
    """Digits hidden between a card's groups (display:none, font-size:0, the hidden attribute)
    are left out of what is shown, so the card reads whole; hidden content itself follows."""
    text = html_to_text(
        '<p>Card 4111 <span style="display: none">99</span>1111 <font style="font-size:0px">'
        '7</font>1111 <i hidden>5<i>5</i></i>1111</p><input type="hidden" value="x"><p>end</p>'
    )
    assert text == "Card 4111 1111 1111 1111\nend\n\n99\n\n7\n\n55"
    unterminated = html_to_text('<p>a</p><div style="visibility:hidden">4111 1111<p>b</p>')
    assert unterminated == "a\n\n4111 1111\nb"


def test_calendar_lines_are_unfolded_as_a_calendar_shows_them() -> None:
    """iCalendar folds long lines (CRLF, then a space); a card split by a fold is one card."""
    ics = (
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDESCRIPTION:Deposit on card 4111 1111 11\r\n"
        " 11 1111 by Friday.\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    inline = parse_message(mime_message(text_part("invite"), text_part(ics, "calendar")))
    attached = parse_message(
        mime_message(text_part("invite"), attachment_part(ics.encode(), "invite.ics"))
    )
    for msg in inline, attached:
        assert "card 4111 1111 1111 1111 by Friday." in (msg.parts[1].text or "")


def test_alt_and_title_text_is_read_but_not_link_targets() -> None:
    """An image's alternative text and a tooltip are text a reader sees; link targets are
    not read (newsletters carry long tracking numbers in them)."""
    text = html_to_text(
        '<p>Hi <img src="x.png" alt="card 4111 1111 1111 1111"> '
        '<a href="https://x.example/?id=4111111111111111" title=tip>link</a></p>'
    )
    assert text == "Hi  link\n\ncard 4111 1111 1111 1111\n\ntip"
