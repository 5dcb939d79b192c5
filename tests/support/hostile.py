"""The hostile corpus: messages made to break a MIME parser (huge headers, deep nesting,
garbage where structure belongs), for the parser's tests and the worker pool's."""

from __future__ import annotations

from tests.support.samples import (
    attachment_part,
    crlf,
    headers_block,
    mime_message,
    nested_messages,
    text_part,
    zip_bytes,
)


def deep_multipart(levels: int) -> bytes:
    raw = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, levels):
        raw += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i)
    return raw + b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % (levels - 1)


HOSTILE = {
    "empty": b"",
    "only_newlines": b"\r\n" * 1000,
    "nul_bytes": b"Subject: a\x00b\r\n\r\n\x00\x00body\x00" * 100,
    "header_500k": b"Subject: " + b"A" * 500_000 + b"\r\n\r\nbody\r\n",
    "header_500k_folded": b"X-Fold: x\r\n" + b" folded line\r\n" * 40_000 + b"\r\nbody\r\n",
    "no_header_end": b"X-H: " + b"y" * 2_000_000,
    "content_type_500k_semicolons": (
        b'Content-Type: multipart/mixed; x="' + b";" * 500_000 + b'"; boundary=z\r\n\r\n'
        b"--z\r\nContent-Type: text/plain\r\n\r\nhi\r\n--z--\r\n"
    ),
    "nested_content_type_semicolons": mime_message(
        b'Content-Type: multipart/mixed; x="' + b";" * 200_000 + b'"; boundary=z\r\n\r\n'
        b"--z\r\n\r\nhi\r\n--z--\r\n"
    ),
    "deep_multipart_2000": deep_multipart(2000),
    "deep_multipart_200": deep_multipart(200),
    "deep_messages": nested_messages(40),
    "unterminated_multipart": headers_block(extra=[("Content-Type", "multipart/mixed; boundary=b")])
    + b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nno end",
    "missing_boundary": headers_block(extra=[("Content-Type", "multipart/mixed")])
    + b"\r\nno boundary here\r\n",
    "boundary_soup": headers_block(extra=[("Content-Type", "multipart/mixed; boundary=b")])
    + b"\r\n"
    + b"--b\r\n" * 20_000,
    "many_parts": mime_message(*[text_part("p") for _ in range(3000)]),
    "bad_base64": headers_block(extra=[("Content-Transfer-Encoding", "base64")])
    + b"\r\n"
    + b"=====!!!!====a\r\n" * 1000,
    "bad_qp": headers_block(extra=[("Content-Transfer-Encoding", "quoted-printable")])
    + b"\r\n=ZZ=\r\n=0" * 1000,
    "bad_charsets": headers_block(
        subject="=?rot13?Q?x?= =?utf-7?B?*?= =?punycode?Q?" + "a" * 10_000 + "?=",
        extra=[("Content-Type", "text/plain; charset=zlib_codec")],
    )
    + b"\r\n\xff\xfe\x00body",
    "bad_rfc2231": mime_message(
        attachment_part(
            b"x",
            "",
            disposition="attachment; filename*0*=bogus''%ZZ%; filename*9=x;"
            " filename*00000001*=''; filename*=utf-8'';" + " a=b;" * 2000,
        )
    ),
    "html_angle_brackets": mime_message(text_part("<" * 200_000 + "<script" * 20_000, "html")),
    "html_unterminated_comment": mime_message(text_part("<!--" * 50_000 + "x", "html")),
    "zip_not_really": mime_message(attachment_part(b"PK\x03\x04" + b"\xff" * 5000, "a.zip")),
    "zip_of_garbage_names": mime_message(
        attachment_part(zip_bytes({"\x01/../../evil\u202e.exe": b"x"}), "a.zip")
    ),
    "ole_garbage": mime_message(
        attachment_part(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\xff" * 4000, "a.doc")
    ),
    "rar_garbage": mime_message(attachment_part(b"Rar!\x1a\x07\x00" + b"\x01" * 3000, "a.rar")),
    "7z_garbage": mime_message(attachment_part(b"7z\xbc\xaf\x27\x1c" + b"\x02" * 3000, "a.7z")),
    "eml_loop": mime_message(
        attachment_part(mime_message(attachment_part(b"From: x\r\n\r\nx", "b.eml")), "a.eml")
    ),
    "lf_only_8bit_headers": crlf(b"From: \xff\xfe\nSubject: \xe9\xe8\n\n\xe9").replace(b"\r", b""),
}
