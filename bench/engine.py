"""Engine throughput: the default pack against a parse-only baseline, in the same run, one core.

    .venv/bin/python bench/engine.py [--seconds 3]

Baseline: stdlib `email` with policy.compat32 — parse, walk every part, decode every payload;
no rules. Reported: messages/s and MB/s for each, and the ratio engine/baseline.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import sys
import time
import zipfile
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

from mailgate.filter.engine import Engine
from mailgate.filter.envelope import Envelope

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.pdfs import pdf_with_blob  # the tests' PDF builder

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
    """kind: plain | html | attachment (a zip with a csv and a one-page PDF holding a blob)."""
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
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("figures.csv", prose(rng, size // 3).replace(" ", ","))
        z.writestr("scan.pdf", pdf_with_blob("Scanned figures", rng.randbytes(size // 3)))
    attachment = base64.encodebytes(buf.getvalue()).decode().replace("\n", "\r\n")
    return (
        headers + 'Content-Type: multipart/mixed; boundary="m1"\r\n\r\n'
        "--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + prose(rng, size // 4).replace("\n", "\r\n")
        + '\r\n--m1\r\nContent-Type: application/zip; name="q3.zip"\r\n'
        'Content-Disposition: attachment; filename="q3.zip"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + attachment + "--m1--\r\n"
    ).encode()


def parse_only(raw: bytes) -> None:
    message = BytesParser(policy=compat32).parsebytes(raw)
    for part in message.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def rate(fn: Callable[[bytes], object], corpus: list[bytes], seconds: float) -> tuple[float, float]:
    """Messages/s and MB/s of fn over the corpus, repeated for about `seconds`."""
    total_bytes = sum(map(len, corpus))
    for raw in corpus[:3]:
        fn(raw)  # warm caches
    rounds, start = 0, time.perf_counter()
    while True:
        for raw in corpus:
            fn(raw)
        rounds += 1
        elapsed = time.perf_counter() - start
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
        f"{'size':>6} {'baseline msg/s':>15} {'MB/s':>8} {'engine msg/s':>13} {'MB/s':>8} "
        f"{'ratio':>6}"
    )
    for label, size in (("10KB", 10_000), ("100KB", 100_000), ("1MB", 1_000_000)):
        corpus = [make_message(rng, size, kind) for kind in ("plain", "html", "attachment") * 3]
        verdicts = {str(engine.scan(raw, ENVELOPE).action) for raw in corpus}
        assert verdicts == {"accept"}, f"benchmark corpus must be clean mail, got {verdicts}"
        base_msgs, base_mb = rate(parse_only, corpus, args.seconds)
        eng_msgs, eng_mb = rate(lambda raw: engine.scan(raw, ENVELOPE), corpus, args.seconds)
        print(
            f"{label:>6} {base_msgs:>15.0f} {base_mb:>8.1f} {eng_msgs:>13.0f} {eng_mb:>8.1f} "
            f"{eng_msgs / base_msgs:>6.2f}"
        )


if __name__ == "__main__":
    main()
