"""Engine throughput: the default pack against a parse-only baseline, in the same run, one core.

    .venv/bin/python -m bench.engine [--seconds 3]   (from the repository root)

Baseline: stdlib `email` with policy.compat32 — parse, walk every part, decode every payload;
no rules. Reported: messages/s and MB/s for each, and the ratio engine/baseline, for a mix of
plain, HTML and attachment (zip of a csv and an image) messages; then, on its own line, for
messages with a PDF attachment, whose text extraction (PDFium) the baseline does not do.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.scan.engine import Engine
from tests.support.pdfs import pdf_with_blob

WORDS = (
    "the quarterly report shows revenue growth in all regions please review the attached "
    "figures before our meeting on thursday and let me know if the numbers for order "
    "12345 look right regards team invoice shipment schedule customer contract"
).split()  # fmt: skip
ENVELOPE = Envelope("alice@corp.example", ("bob@partner.example",))


def prose(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12))
        out.append(line)
        n += len(line) + 1
    return "\n".join(out)


def make_message(rng: random.Random, size: int, kind: str) -> bytes:
    """kind: plain | html | attachment (a zip with a csv and an image) | pdf (a one-page PDF
    with text and an image's worth of bytes)."""
    headers = (
        "From: Alice <alice@corp.example>\r\nTo: Bob <bob@partner.example>\r\n"
        f"Subject: Report {rng.randint(1, 9999)}\r\nMessage-ID: <{rng.random()}@corp.example>\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    )
    if kind == "plain":
        return (
            headers
            + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + prose(rng, size).replace("\n", "\r\n")
        ).encode()
    if kind == "html":
        text = prose(rng, size // 2)
        html = "".join(f"<p>{line}</p>\r\n" for line in text.split("\n"))
        return (
            headers + 'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + text.replace("\n", "\r\n")
            + "\r\n--b1\r\nContent-Type: text/html; charset=utf-8"
            "\r\n\r\n" + html + "\r\n--b1--\r\n"
        ).encode()
    if kind == "pdf":
        name, ctype = "scan.pdf", "application/pdf"
        data = pdf_with_blob(prose(rng, 300), rng.randbytes(size // 2))
    else:
        name, ctype = "q3.zip", "application/zip"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("figures.csv", prose(rng, size // 3).replace(" ", ","))
            z.writestr("scan.png", png_image(rng.randbytes(size // 3)))
        data = buf.getvalue()
    attachment = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (
        headers + 'Content-Type: multipart/mixed; boundary="m1"\r\n\r\n'
        "--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + prose(rng, size // 4).replace("\n", "\r\n")
        + f'\r\n--m1\r\nContent-Type: {ctype}; name="{name}"\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + attachment + "--m1--\r\n"
    ).encode()


def png_image(pixels: bytes) -> bytes:
    """A PNG (signature, IHDR, IDAT, IEND) around `pixels`: what an image attachment is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def parse_only(raw: bytes) -> None:
    message = BytesParser(policy=compat32).parsebytes(raw)
    for part in message.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def rate(
    fn: Callable[[bytes], object],
    corpus: list[bytes],
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Messages/s and MB/s of fn over the corpus, repeated for about `seconds` of `clock`
    (time.process_time: per CPU second, which other load on the machine hardly moves)."""
    total_bytes = sum(map(len, corpus))
    for raw in corpus[:3]:
        fn(raw)  # warm caches
    rounds, start = 0, clock()
    while True:
        for raw in corpus:
            fn(raw)
        rounds += 1
        elapsed = clock() - start
        if elapsed >= seconds:
            break
    return rounds * len(corpus) / elapsed, rounds * total_bytes / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rules", type=Path, default=Path(__file__).parent.parent / "rules")
    args = parser.parse_args()
    engine = Engine.load(args.rules)
    rng = random.Random(7)
    print(f"pack {engine.version}, {len(engine.pack.rules)} rules, one core\n")
    print(
        f"{'corpus':>9} {'baseline msg/s':>14} {'MB/s':>8} {'engine msg/s':>13} {'MB/s':>8} "
        f"{'ratio':>6}"
    )
    for label, size in (("10KB", 10_000), ("100KB", 100_000), ("1MB", 1_000_000)):
        mix = [make_message(rng, size, kind) for kind in ("plain", "html", "attachment") * 3]
        pdfs = [make_message(rng, size, "pdf") for _ in range(3)]
        for name, corpus in ((label, mix), (f"{label} PDF", pdfs)):
            verdicts = {str(engine.scan(raw, ENVELOPE).action) for raw in corpus}
            assert verdicts == {"accept"}, f"benchmark corpus must be clean mail, got {verdicts}"
            base_msgs, base_mb = rate(parse_only, corpus, args.seconds)
            eng_msgs, eng_mb = rate(lambda raw: engine.scan(raw, ENVELOPE), corpus, args.seconds)
            print(
                f"{name:>9} {base_msgs:>14.0f} {base_mb:>8.1f} {eng_msgs:>13.0f} {eng_mb:>8.1f} "
                f"{eng_msgs / base_msgs:>6.2f}"
            )


if __name__ == "__main__":
    main()
