"""Outlook .msg files: text (plain, 8-bit, HTML, RTF bodies), attachments, attached messages,
encryption, budget, and damaged files. The .msg files are built here from MAPI properties."""

from __future__ import annotations

import io
import random
import struct

import olefile
import pytest

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.model import ScanLimits
from mailgate.filter.message.readers.outlook import (
    EMBEDDED_MARKER,
    MsgFacts,
    decompress_rtf,
    is_msg,
    msg_facts,
)
from mailgate.filter.message.rtf import rtf_to_text
from tests.support.cfb import cfb_file
from tests.support.outlook_msg import (
    ATTACH_DATA,
    ATTACH_FILENAME,
    ATTACH_LONG_FILENAME,
    ATTACH_METHOD,
    BODY,
    BODY_8BIT,
    DISPLAY_NAME,
    DISPLAY_TO,
    HTML_BINARY,
    HTML_UNICODE,
    INTERNET_CPID,
    MESSAGE_CLASS,
    MESSAGE_CODEPAGE,
    NATIVE_BODY,
    RECIPIENT_TYPE,
    RTF_COMPRESSED,
    SENDER_NAME,
    SENDER_SMTP,
    SMTP_ADDRESS,
    SUBJECT,
    SUBJECT_8BIT,
    Attachment,
    Msg,
    msg_file,
)
from tests.support.samples import VISA_TEST_CARD, pe_executable

IBAN = "DE89 3704 0044 0532 0130 00"

# [MS-OXRTFCP] 4.1.1 and 4.1.2: the specification's own compressed examples.
SPEC_EXAMPLE_1 = bytes.fromhex(
    "2d0000002b0000004c5a4675f1c5c7a703000a00726370673132354232"
    "0af32068656c090020627705b06c647d0a800fa0"
)
SPEC_EXAMPLE_2 = bytes.fromhex("1a0000001c0000004c5a4675e2d44b51410004205758595a0d6e7d010eb0")


def facts_of(data: bytes, limits: ScanLimits | None = None, max_members: int = 100) -> MsgFacts:
    return msg_facts(data, ScanBudget(limits or ScanLimits()), max_members)


def by_value(name: str, payload: bytes) -> Attachment:
    return Attachment({ATTACH_METHOD: 1, ATTACH_LONG_FILENAME: name, ATTACH_DATA: payload})


# --------------------------------------------------------------------------- text


def test_subject_people_and_unicode_body() -> None:
    msg = Msg(
        {
            MESSAGE_CLASS: "IPM.Note",
            SUBJECT: "Card for the booking",
            SENDER_NAME: "Ann Smith",
            SENDER_SMTP: "ann@example.com",
            BODY: f"Hi,\r\nthe card is {VISA_TEST_CARD}.\r\n",
        },
        recipients=[
            {DISPLAY_NAME: "Bob", SMTP_ADDRESS: "bob@example.org", RECIPIENT_TYPE: 1},
            {DISPLAY_NAME: "carol@example.org", RECIPIENT_TYPE: 2},
        ],
    )
    data = msg_file(msg)
    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        assert is_msg(ole)
    facts = facts_of(data)
    assert facts.text == (
        "Subject: Card for the booking\nFrom: Ann Smith <ann@example.com>\n"
        f"To: Bob <bob@example.org>\nCc: carol@example.org\n\nHi,\nthe card is {VISA_TEST_CARD}."
    )
    assert (facts.attachments, facts.encrypted, facts.unscannable) == ([], False, set())


@pytest.mark.parametrize(
    ("codepage", "body"),
    [(1252, "Café crème, numéro 4111"), (1251, "Привет, счёт 4111"), (None, "Né à Paris")],
)
def test_8bit_strings_use_the_message_code_page(codepage: int | None, body: str) -> None:
    charset = f"cp{codepage or 1252}"
    props: dict[int, int | str | bytes] = {
        SUBJECT_8BIT: body.split(",")[0].encode(charset),
        BODY_8BIT: body.encode(charset) + b"\x00",
        DISPLAY_TO: "Team",  # no recipient storages: the display list stands in
    }
    if codepage:
        props[MESSAGE_CODEPAGE] = codepage
    facts = facts_of(msg_file(Msg(props)))
    assert facts.text == f"Subject: {body.split(',')[0]}\nTo: Team\n\n{body}"


@pytest.mark.parametrize("binary", [True, False])
def test_html_only_body_is_rendered(binary: bool) -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        f"<p>IBAN <b>{IBAN}</b></p><p>Grüße</p><script>var x = 1;</script></body></html>"
    )
    props: dict[int, int | str | bytes] = {SUBJECT: "Payment"}
    if binary:
        props |= {HTML_BINARY: html.encode("utf-8"), INTERNET_CPID: 65001}
    else:
        props[HTML_UNICODE] = html
    facts = facts_of(msg_file(Msg(props)))
    assert facts.text == f"Subject: Payment\n\nIBAN {IBAN}\nGrüße\n\np {{color: red}}\n\nvar x = 1;"


def test_a_body_that_differs_is_read_too_the_shown_one_first() -> None:
    """A harmless plain body beside an HTML body with the data: both are read, whichever
    one Outlook would show (PR_NATIVE_BODY_INFO) first."""
    props: dict[int, int | str | bytes] = {
        BODY: "nothing to see",
        HTML_UNICODE: f"<p>card {VISA_TEST_CARD}</p>",
        NATIVE_BODY: 3,  # HTML
    }
    assert facts_of(msg_file(Msg(props))).text == f"card {VISA_TEST_CARD}\n\nnothing to see"
    del props[NATIVE_BODY]
    assert facts_of(msg_file(Msg(props))).text == f"nothing to see\n\ncard {VISA_TEST_CARD}"


def test_bodies_that_agree_are_read_once() -> None:
    """Outlook saves one text as plain, HTML and RTF: a card in it is one card, not three."""
    props: dict[int, int | str | bytes] = {
        BODY: f"Card {VISA_TEST_CARD}, thanks",
        HTML_UNICODE: f"<p>Card <b>{VISA_TEST_CARD}</b>, thanks</p>",
        NATIVE_BODY: 3,
    }
    text = facts_of(msg_file(Msg(props))).text
    assert text is not None and text.count(VISA_TEST_CARD) == 1


def test_rtf_only_body() -> None:
    rtf = (
        rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Arial;}}{\colortbl;\red0\green0\blue0;}"
        rb"{\*\generator Riched20;}\pard\f0 Caf\'e9 card 4111\~1111 1111 1111\par"
        rb"{\*\htmltag64 <br>}Line\tab two \u8364?5 \uc2\u26085\'93\'fa done\par}"
    )
    stored = struct.pack("<II4sI", len(rtf) + 12, len(rtf), b"MELA", 0) + rtf
    facts = facts_of(msg_file(Msg({SUBJECT: "RTF", RTF_COMPRESSED: stored})))
    assert facts.text == "Subject: RTF\n\nCafé card 4111 1111 1111 1111\nLine\ttwo €5 日 done"


def test_compressed_rtf_spec_examples() -> None:
    assert decompress_rtf(SPEC_EXAMPLE_1) == b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n"
    # The second example copies a token that overlaps the bytes it is writing.
    assert decompress_rtf(SPEC_EXAMPLE_2) == b"{\\rtf1 WXYZWXYZWXYZWXYZWXYZ}"
    assert decompress_rtf(b"\x10\x00\x00\x00\x04\x00\x00\x00XXXX\x00\x00\x00\x00") is None
    facts = facts_of(msg_file(Msg({RTF_COMPRESSED: SPEC_EXAMPLE_1})))
    assert facts.text == "hello world"


def test_truncated_compressed_rtf_yields_what_decodes() -> None:
    assert decompress_rtf(SPEC_EXAMPLE_1[:30]) == b"{\\rtf1\\ansi\\ansicpg1252"


def test_rtf_text_is_linear_and_survives_garbage() -> None:
    assert rtf_to_text(b"{" * 50_000 + b"\\bin-5 x\\u-10179\\u-8704 " + b"}" * 3) == "x😀"
    assert rtf_to_text(b"\\") == ""


# --------------------------------------------------------------------------- attachments


def test_attachments_by_value_with_names_and_payloads() -> None:
    exe = pe_executable() + bytes(6000)  # over 4 KB: kept in regular sectors, not mini ones
    note = f"IBAN: {IBAN}\n".encode()
    msg = Msg(
        {SUBJECT: "files"},
        attachments=[
            by_value("note.txt", note),
            Attachment({ATTACH_METHOD: 1, ATTACH_FILENAME: "SETUP~1.EXE", ATTACH_DATA: exe}),
            Attachment({ATTACH_METHOD: 1, DISPLAY_NAME: "shown name", ATTACH_DATA: b"x"}),
            Attachment({ATTACH_METHOD: 1, ATTACH_DATA: b"y"}),
            by_value("invoice.exe\x00.txt", b"z"),
        ],
    )
    facts = facts_of(msg_file(msg))
    assert [(m.name, m.payload, m.unscannable) for m in facts.attachments] == [
        ("note.txt", note, set()),
        ("SETUP~1.EXE", exe, set()),
        ("shown name", b"x", set()),
        ("attachment-00000003", b"y", set()),
        ("invoice.exe", b"z", set()),
    ]
    assert facts.attachments[1].payload.startswith(b"MZ")


def test_attachment_over_the_budget_is_not_read() -> None:
    msg = Msg(
        {SUBJECT: "big"}, attachments=[by_value("big.bin", bytes(20_000)), by_value("a", b"a")]
    )
    facts = facts_of(msg_file(msg), ScanLimits(max_decoded_total=10_000))
    big, small = facts.attachments
    assert (big.payload, big.unscannable) == (None, {"over_budget"})
    assert (small.payload, small.unscannable) == (b"a", set())
    assert facts.text == "Subject: big"


def test_body_over_the_budget() -> None:
    facts = facts_of(msg_file(Msg({BODY: "x" * 8000})), ScanLimits(max_decoded_total=1000))
    assert facts.unscannable == {"over_budget"}
    assert facts.text is None


def test_more_attachments_than_allowed() -> None:
    msg = Msg({SUBJECT: "many"}, attachments=[by_value(f"f{i}.txt", b"data") for i in range(5)])
    facts = facts_of(msg_file(msg), max_members=3)
    assert [m.name for m in facts.attachments] == ["f0.txt", "f1.txt", "f2.txt"]
    assert facts.unscannable == {"over_budget"}


def test_attached_message_text_and_files() -> None:
    inner = Msg(
        {SUBJECT: "Original", BODY: f"card {VISA_TEST_CARD}"},
        attachments=[by_value("inner.txt", IBAN.encode())],
    )
    outer = Msg(
        {SUBJECT: "Fwd: Original", BODY: "see below"},
        attachments=[Attachment({ATTACH_METHOD: 5, DISPLAY_NAME: "Original"}, embedded=inner)],
    )
    facts = facts_of(msg_file(outer))
    assert facts.text == (
        f"Subject: Fwd: Original\n\nsee below\n\n{EMBEDDED_MARKER}\n"
        f"Subject: Original\n\ncard {VISA_TEST_CARD}"
    )
    assert [(m.name, m.payload) for m in facts.attachments] == [
        ("Original", None),
        ("Original/inner.txt", IBAN.encode()),
    ]


def test_messages_attached_beyond_depth_three_are_too_deep() -> None:
    msg = Msg({SUBJECT: "level 5"})
    for level in range(4, -1, -1):
        attached = Attachment({ATTACH_METHOD: 5, DISPLAY_NAME: f"m{level + 1}"}, embedded=msg)
        msg = Msg({SUBJECT: f"level {level}"}, attachments=[attached])
    facts = facts_of(msg_file(msg))
    assert facts.text is not None
    assert [line for line in facts.text.split("\n") if line.startswith("Subject")] == [
        f"Subject: level {level}" for level in range(4)
    ]
    assert [(m.name, m.unscannable) for m in facts.attachments] == [
        ("m1", set()),
        ("m1/m2", set()),
        ("m1/m2/m3", set()),
        ("m1/m2/m3/m4", {"too_deep"}),
    ]


def test_ole_object_attachment_is_unwrapped() -> None:
    payload = b"%PDF-1.4 secret"
    native = b"\x02\x00label.pdf\x00C:\\tmp\\label.pdf\x00\x00\x00\x03\x00"
    native += struct.pack("<I", 9) + b"C:\\x.pdf\x00" + struct.pack("<I", len(payload)) + payload
    native = struct.pack("<I", len(native)) + native
    msg = Msg(
        {SUBJECT: "objects"},
        attachments=[
            Attachment(
                {ATTACH_METHOD: 6, DISPLAY_NAME: "label.pdf"},
                ole_object={"\x01Ole10Native": native, "\x01CompObj": b"\x01\x00"},
            ),
            Attachment({ATTACH_METHOD: 6, DISPLAY_NAME: "doc"}, ole_object={"WordDocument": b"x"}),
        ],
    )
    packaged, word = facts_of(msg_file(msg)).attachments
    assert (packaged.name, packaged.payload, packaged.unscannable) == ("label.pdf", payload, set())
    assert (word.payload, word.unscannable) == (None, {"malformed"})


# --------------------------------------------------------------------------- encryption


@pytest.mark.parametrize(
    ("message_class", "encrypted"),
    [
        ("IPM.Note.SMIME", True),
        ("IPM.Note.SMIME.MultipartSigned", False),
        ("IPM.Note.rpmsg.Microsoft.Voicemail.UM.CA", True),
        ("IPM.Note", False),
    ],
)
def test_protected_message_classes(message_class: str, encrypted: bool) -> None:
    msg = Msg({MESSAGE_CLASS: message_class}, attachments=[by_value("smime.p7m", b"\x30\x80")])
    assert facts_of(msg_file(msg)).encrypted is encrypted


def test_rights_managed_attachment_is_encrypted() -> None:
    msg = Msg({MESSAGE_CLASS: "IPM.Note"}, attachments=[by_value("message.rpmsg", b"\x76\xe8")])
    facts = facts_of(msg_file(msg))
    assert facts.encrypted
    assert [(m.name, m.encrypted, m.payload) for m in facts.attachments] == [
        ("message.rpmsg", True, None)
    ]


# --------------------------------------------------------------------------- damage


def test_ole_file_that_is_not_a_message() -> None:
    data = cfb_file({"WordDocument": bytes(600), "1Table": bytes(16)})
    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        assert not is_msg(ole)
    assert facts_of(data).unscannable == {"malformed"}


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75, 0.95])
def test_truncated_message_is_malformed(keep: float) -> None:
    msg = Msg(
        {SUBJECT: "cut", BODY: "b" * 9000},
        attachments=[by_value("a.bin", bytes(range(256)) * 40), by_value("b.txt", b"t" * 3000)],
    )
    data = msg_file(msg)
    facts = facts_of(data[: int(len(data) * keep)])
    assert "malformed" in facts.unscannable


def test_directory_too_deep_for_olefile_is_malformed() -> None:
    # Siblings linked as one chain; olefile walks it recursively.
    streams = {f"__substg1.0_{0x8000 + i:04X}001F": b"a\x00" for i in range(1200)}
    data = cfb_file({"__properties_version1.0": bytes(32), **streams}, chained_siblings=True)
    assert facts_of(data).unscannable == {"malformed"}


def test_damaged_messages_never_raise() -> None:
    msg = Msg(
        {SUBJECT: "s", BODY: "body", RTF_COMPRESSED: SPEC_EXAMPLE_1},
        recipients=[{DISPLAY_NAME: "r", RECIPIENT_TYPE: 1}],
        attachments=[
            by_value("a.txt", b"a" * 5000),
            Attachment({ATTACH_METHOD: 5}, embedded=Msg({SUBJECT: "inner", BODY: "x"})),
        ],
    )
    data = msg_file(msg)
    rng = random.Random(1)
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        facts = facts_of(bytes(damaged))
        assert isinstance(facts, MsgFacts)
