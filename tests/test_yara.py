"""YaraScanner: namespaces, externals, parts and archive members, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.filter.detect.detectors.yara_scan import YaraError, YaraMatch, YaraScanner
from mailgate.filter.message.model import Message, Part

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

EICAR_RULE = r"""
rule eicar_test_file : malware test
{
    meta:
        description = "EICAR anti-virus test file"
        severity = 5
    strings:
        $eicar = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
    condition:
        $eicar
}
"""

EXTERNALS_RULE = r"""
rule pdf_named_exe
{
    condition:
        extension == "exe" and mime_type == "application/pdf"
}

rule invoice_name
{
    condition:
        filename matches /^invoice.*\.zip$/i
}

rule raw_message_only
{
    condition:
        mime_type == "message/rfc822" and uint32(0) == 0x6d6f7246  // "From"
}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def message_with(*parts: Part, raw: bytes = b"From: a@example.com\r\n\r\nhello\r\n") -> Message:
    return Message(raw=raw, parts=list(parts))


def test_eicar_in_a_part_and_in_an_archive_member(tmp_path: Path) -> None:
    scanner = YaraScanner.from_files([write(tmp_path, "malware.yar", EICAR_RULE)])
    body = Part(path="1", content_type="text/plain", payload=b"hello", text="hello")
    member = Part(
        path="2/files.zip/inner/eicar.com",
        filename="inner/eicar.com",
        extensions=("com",),
        is_attachment=True,
        payload=EICAR,
        member_of="2",
        depth=1,
    )
    found = scanner.scan(message_with(body, member))
    assert found == [
        YaraMatch(
            rule="eicar_test_file",
            namespace="malware",
            tags=("malware", "test"),
            meta={"description": "EICAR anti-virus test file", "severity": 5},
            where="2/files.zip/inner/eicar.com (inner/eicar.com)",
        )
    ]


def test_raw_message_scanned_and_matches_deduplicated(tmp_path: Path) -> None:
    scanner = YaraScanner.from_files([write(tmp_path, "malware.yar", EICAR_RULE)])
    raw = b"From: a@example.com\r\n\r\n" + EICAR + b"\r\n"
    part = Part(path="1", content_type="text/plain", payload=EICAR + b" " + EICAR)
    found = scanner.scan(message_with(part, raw=raw))
    assert sorted(m.where for m in found) == ["1", "message"]


def test_externals_per_part(tmp_path: Path) -> None:
    scanner = YaraScanner.from_files([write(tmp_path, "names.yar", EXTERNALS_RULE)])
    fake_exe = Part(
        path="2",
        filename="report.pdf.exe",
        extensions=("pdf", "exe"),
        content_type="application/octet-stream",
        detected_type="application/pdf",
        payload=b"%PDF-1.4",
    )
    real_pdf = Part(
        path="3",
        filename="report.pdf",
        extensions=("pdf",),
        content_type="application/pdf",
        payload=b"%PDF-1.4",
    )
    invoice = Part(path="4", filename="Invoice-2024.ZIP", extensions=("zip",), payload=b"PK")
    found = {(m.rule, m.where) for m in scanner.scan(message_with(fake_exe, real_pdf, invoice))}
    assert found == {
        ("pdf_named_exe", "2 (report.pdf.exe)"),
        ("invoice_name", "4 (Invoice-2024.ZIP)"),
        ("raw_message_only", "message"),
    }


def test_declared_type_used_when_nothing_detected(tmp_path: Path) -> None:
    scanner = YaraScanner.from_files([write(tmp_path, "names.yar", EXTERNALS_RULE)])
    part = Part(path="2", extensions=("exe",), content_type="application/pdf", payload=b"x")
    assert [m.rule for m in scanner.scan(message_with(part)) if m.where == "2"] == ["pdf_named_exe"]


def test_namespaces_by_file_stem_and_rule_names(tmp_path: Path) -> None:
    write(tmp_path, "one.yar", 'rule same : t1 { strings: $a = "needle" condition: $a }')
    write(tmp_path, "two.yar", 'rule same : t2 { strings: $a = "needle" condition: $a }')
    write(tmp_path, "notes.txt", "not yara")
    scanner = YaraScanner.from_directory(tmp_path)
    assert scanner.rule_names == {"same"}
    assert scanner.tags == {"t1", "t2"}
    found = scanner.scan(message_with(Part(path="1", payload=b"a needle")))
    assert sorted((m.namespace, m.where) for m in found if m.where == "1") == [
        ("one", "1"),
        ("two", "1"),
    ]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yar", EICAR_RULE)
    bad = write(
        tmp_path,
        "broken.yar",
        "rule ok { condition: true }\n\n"
        'rule broken {\n  strings: $a = "x"\n  condition: $a and\n}\n',
    )
    with pytest.raises(YaraError) as excinfo:
        YaraScanner.from_files([good, bad])
    assert excinfo.value.file == str(bad)
    assert excinfo.value.line == 6
    assert "syntax error" in excinfo.value.reason
    assert str(excinfo.value).startswith(f"{bad}:6: ")


def test_undefined_identifier_names_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "undef.yar", "rule a\n{\n  condition: no_such_thing\n}\n")
    with pytest.raises(YaraError) as excinfo:
        YaraScanner.from_files([bad])
    assert (excinfo.value.file, excinfo.value.line) == (str(bad), 3)
    assert "no_such_thing" in excinfo.value.reason


def test_missing_file_and_duplicate_stem(tmp_path: Path) -> None:
    with pytest.raises(YaraError, match="no such file"):
        YaraScanner.from_files([tmp_path / "absent.yar"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a", "rules.yar", EICAR_RULE)
    second = write(tmp_path / "b", "rules.yar", EICAR_RULE)
    with pytest.raises(YaraError, match="namespace 'rules'"):
        YaraScanner.from_files([first, second])


def test_empty_scanner(tmp_path: Path) -> None:
    for scanner in (YaraScanner.empty(), YaraScanner.from_directory(tmp_path / "none")):
        assert scanner.scan(message_with(Part(path="1", payload=EICAR))) == []
        assert scanner.rule_names == frozenset()


def test_spent_time_budget_marks_parts_unscannable(tmp_path: Path) -> None:
    scanner = YaraScanner.from_files([write(tmp_path, "malware.yar", EICAR_RULE)])
    part = Part(path="1", payload=EICAR)
    message = message_with(part)
    assert scanner.scan(message, timeout=0) == []
    assert message.unscannable == {"timeout"}
    assert part.unscannable == {"timeout"}
