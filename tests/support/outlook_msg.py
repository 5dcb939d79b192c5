"""Outlook .msg files built from MAPI properties ([MS-OXMSG]) on the tests' compound-file
writer, for tests, golden examples and benches."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.support.cfb import cfb_file

# Property tags (id << 16 | type) used below.
MESSAGE_CLASS = 0x001A001F
SUBJECT = 0x0037001F
SUBJECT_8BIT = 0x0037001E
SENDER_NAME = 0x0C1A001F
SENDER_SMTP = 0x5D01001F
DISPLAY_TO = 0x0E04001F
RECIPIENT_TYPE = 0x0C150003
DISPLAY_NAME = 0x3001001F
SMTP_ADDRESS = 0x39FE001F
BODY = 0x1000001F
BODY_8BIT = 0x1000001E
RTF_COMPRESSED = 0x10090102
HTML_BINARY = 0x10130102
HTML_UNICODE = 0x1013001F
NATIVE_BODY = 0x10160003
INTERNET_CPID = 0x3FDE0003
MESSAGE_CODEPAGE = 0x3FFD0003
ATTACH_DATA = 0x37010102
ATTACH_FILENAME = 0x3704001F
ATTACH_METHOD = 0x37050003
ATTACH_LONG_FILENAME = 0x3707001F


@dataclass
class Msg:
    """A message as MAPI properties: ints are PT_LONG, str are PT_UNICODE, bytes are the
    stream as stored (PT_STRING8, PT_BINARY)."""

    props: dict[int, int | str | bytes]
    recipients: list[dict[int, int | str | bytes]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Attachment:
    props: dict[int, int | str | bytes]
    embedded: Msg | None = None  # an attached message (PR_ATTACH_METHOD 5)
    ole_object: dict[str, bytes] | None = None  # an OLE object's streams (method 6)


def _mapi_object(props: Mapping[int, int | str | bytes], header: bytes) -> dict[str, bytes]:
    streams: dict[str, bytes] = {}
    fixed = header
    for tag, value in props.items():
        if isinstance(value, int):
            fixed += struct.pack("<IIII", tag, 0x6, value, 0)  # flags: readable, writable
        elif isinstance(value, str):
            streams[f"__substg1.0_{tag:08X}"] = value.encode("utf-16-le")
        else:
            streams[f"__substg1.0_{tag:08X}"] = value
    streams["__properties_version1.0"] = fixed
    return streams


def _message_streams(msg: Msg, top: bool) -> dict[str, bytes]:
    # [MS-OXMSG] 2.4.1.1: next recipient and attachment ids, then their counts; the top-level
    # header has 8 more reserved bytes than an attached message's.
    counts = (len(msg.recipients), len(msg.attachments)) * 2
    header = struct.pack("<8xIIII", *counts) + (bytes(8) if top else b"")
    streams = _mapi_object(msg.props, header)
    if top:
        streams["__nameid_version1.0/__substg1.0_00020102"] = b""
    for i, recipient in enumerate(msg.recipients):
        for name, data in _mapi_object(recipient, bytes(8)).items():
            streams[f"__recip_version1.0_#{i:08X}/{name}"] = data
    for i, attachment in enumerate(msg.attachments):
        folder = f"__attach_version1.0_#{i:08X}"
        for name, data in _mapi_object(attachment.props, bytes(8)).items():
            streams[f"{folder}/{name}"] = data
        inner: dict[str, bytes] = {}
        if attachment.embedded is not None:
            inner = _message_streams(attachment.embedded, top=False)
        elif attachment.ole_object is not None:
            inner = attachment.ole_object
        for name, data in inner.items():
            streams[f"{folder}/__substg1.0_3701000D/{name}"] = data
    return streams


def msg_file(msg: Msg) -> bytes:
    return cfb_file(_message_streams(msg, top=True))


def simple_msg(subject: str, body: str, files: Mapping[str, bytes] | None = None) -> bytes:
    """A saved e-mail: subject, plain body and files attached by value."""
    attachments = [
        Attachment({ATTACH_METHOD: 1, ATTACH_LONG_FILENAME: name, ATTACH_DATA: data})
        for name, data in (files or {}).items()
    ]
    return msg_file(Msg({MESSAGE_CLASS: "IPM.Note", SUBJECT: subject, BODY: body}, [], attachments))
