"""uuencoded content and Content-Transfer-Encoding names, read as mail clients read them.

Decided (issue 10, item 19): uuencode is decoded, never passed over as plain text. A part
declared uuencoded (x-uuencode, uuencode, x-uue, uue) is decoded as uudecode and Thunderbird
do: every character modulo 64, each line's bytes as its length character says (trailing
characters such as a per-line checksum are ignored), so no line is ever dropped. Text around
the encoded file is read too, and a declared part with no "begin" line is read as it stands (a
client that does not decode shows it so). A "begin 644 name" ... "end" block inside a plain
text body is read as an attachment named `name`, as Outlook and Thunderbird show it. The
encoding name is its first word: "base64; x=y" is base64, as Thunderbird reads it.
"""

from __future__ import annotations

import binascii

import pytest

from mailgate.filter.message.mime import parse_message, uuencoded_files
from mailgate.filter.message.model import Message

CARD = b"Card 4111 1111 1111 1111 exp 12/29"
HEAD = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\n"


def uuencode(data: bytes, name: str = "a.txt", line_end: bytes = b"") -> bytes:
    """`data` as a uuencode block; `line_end` is put after each encoded line's characters."""
    lines = [
        binascii.b2a_uu(data[i : i + 45]).rstrip(b"\n") + line_end for i in range(0, len(data), 45)
    ]
    return b"\r\n".join([f"begin 644 {name}".encode(), *lines, b"`", b"end"]) + b"\r\n"


def single_part(body: bytes, encoding: str | None, ctype: str = "text/plain") -> Message:
    headers = HEAD + f"Content-Type: {ctype}\r\n".encode()
    if encoding is not None:
        headers += f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    return parse_message(headers + b"\r\n" + body)


def all_text(msg: Message) -> str:
    return "\n".join(part.text or "" for part in msg.texts())


@pytest.mark.parametrize("encoding", ["x-uuencode", "X-UUEncode", "uuencode", "x-uue", "uue"])
def test_a_part_declared_uuencoded_is_decoded(encoding: str) -> None:
    (part,) = single_part(uuencode(CARD), encoding).parts
    assert part.payload == CARD


def test_characters_after_a_lines_length_are_ignored_not_the_line() -> None:
    # Some encoders end each line with a checksum character; binascii refuses such a line
    # ("trailing garbage") and the card in it went unread.
    (part,) = single_part(uuencode(CARD, line_end=b"XYZW"), "x-uuencode").parts
    assert part.payload == CARD


def test_characters_outside_the_alphabet_decode_modulo_64() -> None:
    begin, *lines, _zero, end = uuencode(CARD).split(b"\r\n")[:-1]
    # "`" and " " both stand for zero; any character 64 above another reads as that one.
    shifted = [line[:1] + bytes(c + 64 if c < 64 else c for c in line[1:]) for line in lines]
    variant = b"\r\n".join([begin, *shifted, b" ", end])
    assert binascii.b2a_uu(CARD) not in variant
    assert [(n, c) for n, c, _, _ in uuencoded_files(variant)] == [("a.txt", CARD)]


def test_a_file_without_an_end_line_runs_to_the_end_of_the_data() -> None:
    encoded = uuencode(CARD).removesuffix(b"`\r\nend\r\n")
    assert list(uuencoded_files(encoded)) == [("a.txt", CARD, 0, len(encoded))]


def test_declared_uuencoded_without_a_begin_line_is_read_as_it_stands() -> None:
    # A client that does not know x-uuencode shows this text; it must not read as empty.
    msg = single_part(CARD + b"\r\n", "x-uuencode")
    assert "4111 1111 1111 1111" in all_text(msg)


def test_text_around_a_declared_uuencoded_file_is_read_too() -> None:
    body = b"Dear Bob, " + CARD + b"\r\n\r\n" + uuencode(b"the attached notes")
    (part,) = single_part(body, "x-uuencode").parts
    assert CARD in part.payload
    assert b"the attached notes" in part.payload


def test_a_uuencoded_file_in_a_plain_body_is_read_as_an_attachment() -> None:
    body = b"See the attached file.\r\n\r\n" + uuencode(CARD, "card.txt") + b"Bye\r\n"
    msg = single_part(body, None)
    text_part, attached = msg.parts
    assert not text_part.is_attachment
    assert attached.path == "1/card.txt"
    assert attached.filename == "card.txt" and attached.extensions == ("txt",)
    assert attached.is_attachment
    assert attached.payload == CARD
    assert "4111 1111 1111 1111" in (attached.text or "")


def test_an_executable_uuencoded_in_a_plain_body_is_seen_as_one() -> None:
    program = b"MZ" + bytes(range(256)) * 4
    msg = single_part(b"run this\r\n" + uuencode(program, "setup.exe"), "7bit")
    (attached,) = msg.attachments
    assert attached.extensions == ("exe",)
    assert attached.payload == program


def test_a_uuencoded_block_in_an_html_body_is_not_an_attachment() -> None:
    # Only plain text bodies get this reading in mail clients.
    msg = single_part(b"<p>x</p>\r\n" + uuencode(CARD), None, ctype="text/html")
    assert msg.attachments == []


@pytest.mark.parametrize(
    "declared", ["base64; x=y", "base64 (the usual)", " BASE64\t", "base64;", "base64(x)"]
)
def test_the_encoding_name_is_its_first_word(declared: str) -> None:
    (part,) = single_part(binascii.b2a_base64(CARD), declared).parts
    assert part.payload == CARD
