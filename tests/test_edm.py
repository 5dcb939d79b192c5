"""Exact Data Match: an index built from a CSV by `mailgate edm build` holds hashes only, and
an `edm` condition hits on the rows of it a message really holds (a name and an account of the
same row), through the engine, a confined worker pool and a hot reload; lint checks the index;
broken CSVs and corrupt index files are clear errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.detect.edm.build import build_index
from mailgate.filter.detect.edm.index import EdmIndex
from mailgate.filter.detect.edm.match import Search, _everything, anchor_columns, rows_in
from mailgate.filter.detect.edm.words import value_words
from mailgate.filter.message.textview import as_read
from mailgate.filter.ops.config import packaged_rules_dir
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackError, PackSource, build_pack
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.filter.scan.confine import landlock_available
from mailgate.filter.scan.engine import Engine
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.scan.reload import PackReloader
from tests.support.cli import run_in_process
from tests.support.samples import text_message

ENV = Envelope("alice@corp.example", ("bob@partner.example",), door="relay")
ROWS = [
    ("account", "name", "email", "city"),
    ("10000001", "Anna Berg", "anna.berg@example.com", "Hamburg"),
    ("10000002", "Ben Costa", "ben.costa@example.com", "Berlin"),
    ("4400-1234-5678", "Carla O'Neill", "carla.oneill@example.com", "Köln"),
    ("10000004", "Anna Berg", "a.berg@example.org", "Berlin"),  # the same name, another row
    ("10000005", "Dieter Müller-Lüdenscheidt", "dieter@example.de", "München"),
]
RULES = """\
rules:
  - id: customer-record
    when: [{edm: {index: customers, min_columns: 2, min_rows: 1, proximity: 300}}]
    action: quarantine
  - id: many-customers
    when: [{edm: {index: customers, min_columns: 2, min_rows: 2}}]
    action: reject
  - id: name-and-email
    mode: monitor
    when: [{edm: {index: customers, columns: [name, email]}}]
    action: quarantine
"""


def csv_text(rows: list[tuple[str, ...]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def make_pack(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[tuple[str, ...]] = ROWS,
    rules: str = RULES,
    columns: str = "account,name,email",
) -> Path:
    """A pack folder with `rules` and an index `customers` built by `mailgate edm build`."""
    pack = tmp_path / "pack"
    pack.mkdir(exist_ok=True)
    (pack / "rules.yaml").write_text(rules)
    source = tmp_path / "customers.csv"
    source.write_text(csv_text(rows))
    done = run_in_process(
        capsys, "edm", "build", "customers", str(source), "--columns", columns, "--rules", str(pack)
    )
    assert done.returncode == 0, done.stderr
    return pack


def scan(engine: Engine, body: str) -> Verdict:
    return engine.scan(text_message(body), ENV)


def test_the_built_index_holds_salted_hashes_and_no_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = make_pack(tmp_path, capsys)
    index_file = pack / "edm" / "customers.edm"
    data = index_file.read_bytes()
    for row in ROWS[1:]:
        for value in row[:3]:
            forms = (value, *value_words(value), "".join(value_words(value)))
            for form in (f for f in forms if len(f) > 3):  # shorter ones occur by chance
                assert form.encode() not in data, form
    index = EdmIndex(index_file)
    assert [(c.name, c.kind, c.values) for c in index.columns] == [
        ("account", "number", 5),
        ("name", "text", 5),
        ("email", "email", 5),
    ]
    assert (index.rows, index.entries, index.max_words) == (5, 15, 4)  # anna.berg@example.com
    first_hashes = bytes(index.hashes)
    make_pack(tmp_path, capsys)  # the same CSV again: a new salt, other hashes
    again = EdmIndex(index_file)
    assert again.salt != index.salt
    assert not set(again.hashes.tolist()) & set(index.hashes.tolist())
    assert bytes(again.hashes) != first_hashes

    lint = run_in_process(capsys, "rules", "lint", "--rules", str(pack))
    assert lint.returncode == 0
    described = "EDM index customers: 5 rows, columns account (number), name (text), email (email)"
    assert described in lint.stdout


def test_a_row_hits_only_with_its_own_values_close_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = Engine.load(make_pack(tmp_path, capsys))
    hit = scan(engine, "Dear team, customer Anna Berg (account 10000001) asked to close.")
    assert hit.action is Action.QUARANTINE
    assert hit.rules == ["customer-record"]
    (evidence,) = [h for h in hit.hits if h.rule == "customer-record"]
    assert (evidence.detector, evidence.count, evidence.sample) == (
        "edm",
        1,
        "customers: account, name",
    )
    assert evidence.detail == {"index": "customers", "columns": ["account", "name"], "rows": 1}
    shown = json.dumps([vars(h) for h in hit.hits])
    assert "10000001" not in shown and "Anna" not in shown and "anna" not in shown

    # A name of row 1 beside the account of row 2 is no record of anybody.
    assert scan(engine, "Customer Anna Berg, account 10000002.").action is Action.ACCEPT
    # The same name is row 4's too: its account makes it row 4.
    assert scan(engine, "Anna Berg, 10000004").rules == ["customer-record"]
    # Too far apart: more than 300 characters between the values.
    far = "Customer Anna Berg." + " lorem ipsum" * 30 + " Account 10000001."
    assert scan(engine, far).action is Action.ACCEPT
    # An address alone holds its owner's name, which does not count twice.
    assert scan(engine, "Write to anna.berg@example.com today").action is Action.ACCEPT
    assert scan(engine, "Account 10000001 only").action is Action.ACCEPT


@pytest.mark.parametrize(
    "body",
    [
        "ANNA BERG: account 1000-0001",  # case, and punctuation in the number
        "account 10 000 001, anna  berg",
        "Konto \uff11\uff10\uff10\uff10\uff10\uff10\uff10\uff11 Anna\u00a0Berg",  # fullwidth
        "mail ANNA.BERG@EXAMPLE.COM, acct #10000001",
        "Carla O'Neill, card 4400 1234 5678",  # the account's dashes as spaces
        "Carla ONeill?? no: carla o'neill, 440012345678",
        "Herr Dieter Müller-Lüdenscheidt schreibt von dieter@example.de",
    ],
)
def test_values_are_matched_as_normalised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    engine = Engine.load(make_pack(tmp_path, capsys))
    assert scan(engine, body).rules == ["customer-record"]


def test_min_rows_and_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = Engine.load(make_pack(tmp_path, capsys))
    two = scan(engine, "Anna Berg 10000001\n\nand Ben Costa 10000002")
    assert two.action is Action.REJECT
    assert set(two.rules) == {"customer-record", "many-customers"}
    (many,) = [h for h in two.hits if h.rule == "many-customers"]
    assert many.detail["rows"] == 2
    # Only name and email count for the monitor rule; an account does not.
    assert "name-and-email" not in scan(engine, "Anna Berg 10000001").monitor
    assert "name-and-email" in scan(engine, "Anna Berg <anna.berg@example.com>").monitor


def test_an_index_of_words_only_is_searched_word_by_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = "rules:\n  - {id: name-city, when: [{edm: {index: customers}}], action: quarantine}\n"
    pack = make_pack(tmp_path, capsys, rules=rules, columns="name,city")
    engine = Engine.load(pack)
    index = engine.pack.edm["customers"]
    assert anchor_columns(index, Search("customers", frozenset({0, 1}), 2, 300)) is None
    assert scan(engine, "Anna Berg moved to Hamburg").rules == ["name-city"]
    assert scan(engine, "Anna Berg moved to Köln").action is Action.ACCEPT
    assert scan(engine, "Ben Costa, Berlin").rules == ["name-city"]


def test_lint_checks_the_index_and_its_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = make_pack(tmp_path, capsys)
    bad = {
        "no index": ("{index: clients}", r"no index 'clients' in the pack's edm/ folder"),
        "no column": ("{index: customers, columns: [name, phone]}", r"no column 'phone'"),
        "too many": ("{index: customers, min_columns: 4}", r"min_columns 4, but only 3"),
        "no name": ("{min_columns: 2}", r"'index' is required"),
        "proximity": ("{index: customers, proximity: 20000}", r"at most 10000"),
    }
    for spec, expected in bad.values():
        (pack / "rules.yaml").write_text(
            f"rules:\n  - id: r\n    when: [{{edm: {spec}}}]\n    action: reject\n"
        )
        with pytest.raises(PackError) as raised:
            build_pack(PackSource.read(pack))
        assert re.search(r"rules\.yaml:3: \[r\] edm.*" + expected, str(raised.value)), raised.value


CORRUPTIONS = {
    "truncated": lambda data: data[:-5],
    "a byte of a hash flipped": lambda data: data[:-20] + bytes([data[-20] ^ 1]) + data[-19:],
    "not an index": lambda data: b"account,name\n1,2\n",
    "another format version": lambda data: data[:7] + b"\x09" + data[8:],
    "a huge header length": lambda data: data[:8] + b"\xff\xff\xff\x7f" + data[12:],
    "a header that is no JSON": lambda data: data[:12] + b"\x00" * 40 + data[52:],
    "empty": lambda data: b"",
    "grown": lambda data: data + b"\x00" * 13,
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_index_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corruption: str
) -> None:
    pack = make_pack(tmp_path, capsys)
    index_file = pack / "edm" / "customers.edm"
    index_file.write_bytes(CORRUPTIONS[corruption](index_file.read_bytes()))
    with pytest.raises(PackError) as raised:
        build_pack(PackSource.read(pack))
    (problem,) = raised.value.problems
    assert problem.file.endswith("edm/customers.edm")
    assert re.match(
        r"EDM index: (corrupt index|not an EDM index|an EDM index of another)", problem.message
    )
    lint = run_in_process(capsys, "rules", "lint", "--rules", str(pack))
    assert lint.returncode == 1
    assert "customers.edm: EDM index:" in lint.stdout


def test_a_rebuilt_index_is_a_new_pack_and_a_replaced_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = make_pack(tmp_path, capsys)
    before = PackSource.read(pack)
    make_pack(tmp_path, capsys, rows=[*ROWS, ("10000006", "Eva Lind", "eva@example.com", "Ulm")])
    after = PackSource.read(pack)
    assert after.version != before.version
    # What was linted is what runs: a worker given the old snapshot refuses the new file.
    with pytest.raises(PackError, match="the index changed since the pack was read"):
        build_pack(before)
    assert scan(Engine(build_pack(after)), "Eva Lind 10000006").rules == ["customer-record"]


BROKEN_CSV = {
    "broken quoting": ('account,name\n1,"Anna "Berg"\n', r"line 2: ',' expected after '\"'"),
    "a quote never closed": ('account,name\n1,"Anna Berg\n2,Ben\n', r"line 3: unexpected end"),
    "a record too short": ("account,name\n1,Anna\n2\n", r"line 3: 1 fields, the first line"),
    "no such column": ("acct,name\n1,Anna\n", r"no column named 'account'"),
    "empty": ("", r"empty: the first line names the columns"),
    "not UTF-8": ("account,name\n1,Ann\xe9\n", r"not UTF-8 text"),
}


@pytest.mark.parametrize("case", BROKEN_CSV)
def test_a_broken_csv_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, expected = BROKEN_CSV[case]
    source = tmp_path / "broken.csv"
    source.write_bytes(text.encode("latin-1"))
    (tmp_path / "pack").mkdir()
    done = run_in_process(
        capsys, "edm", "build", "customers", str(source), "--columns", "account,name",
        "--rules", str(tmp_path / "pack"),
    )  # fmt: skip
    assert done.returncode == 1
    assert re.search(expected, done.stderr), done.stderr
    assert not (tmp_path / "pack" / "edm" / "customers.edm").exists()
    assert not list((tmp_path / "pack").rglob("*.partial"))


def test_the_shipped_pack_gets_no_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --rules and without a rules folder here, the configured pack is the one shipped
    with mailgate: a customer list has no place there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "customers.csv").write_text(csv_text(ROWS))
    done = run_in_process(capsys, "edm", "build", "customers", "customers.csv", "--columns", "name")
    assert done.returncode == 2
    assert "give --rules DIR" in done.stderr
    assert not (packaged_rules_dir() / "edm").exists()


def test_many_rows_merge_from_sorted_runs_on_disk(tmp_path: Path) -> None:
    """Chunks of 50 values force the on-disk merge, with a value (the city) that every row
    shares and that no range can split: the index is the same as one sorted in memory."""
    rows = [("account", "name", "city")] + [
        (f"{70000000 + i * 13}", f"Person{i % 97} Family{i}", "Berlin") for i in range(1000)
    ]
    source = tmp_path / "big.csv"
    source.write_text(csv_text(rows))
    merged = build_index(source, ["account", "name", "city"], tmp_path / "a" / "big.edm", chunk=50)
    whole = build_index(source, ["account", "name", "city"], tmp_path / "b" / "big.edm")
    assert merged.entries == whole.entries == 3000
    many, one = EdmIndex(tmp_path / "a" / "big.edm"), EdmIndex(tmp_path / "b" / "big.edm")
    assert [c.kind for c in many.columns] == ["number", "text", "text"]
    search = Search("big", frozenset({0, 1}), 2, 300)
    for i in (0, 1, 499, 998, 999):
        account, name, _ = rows[i + 1]
        assert rows_in(many, [f"{name}: {account}"], search) == [{i: frozenset({0, 1})}]
        assert rows_in(one, ["x", f"{name}: {account}"], search) == [{}, {i: frozenset({0, 1})}]
    # The same rows, in the same order, under each index's own key.
    assert many.row_ids[many.column_ids == 2].tolist() == list(range(1000))
    assert sorted(many.row_ids.tolist()) == sorted(one.row_ids.tolist())


def test_workers_search_the_index_confined_and_pick_up_a_rebuilt_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The workers map the index before they confine themselves (root: as nobody, with
    Landlock where the kernel has it); a rebuilt index reaches them by a reload."""
    pack = make_pack(tmp_path, capsys)

    async def run() -> None:
        pool = ScanPool(pack, workers=1)
        await pool.start()
        try:
            (worker,) = pool._all
            if landlock_available():
                assert "landlock" in worker.confined
            body = "Anna Berg, account 10000001"
            assert (await pool.scan(text_message(body), ENV)).rules == ["customer-record"]
            other = await pool.scan(text_message("Anna Berg, account 10000002"), ENV)
            assert other.action is Action.ACCEPT
            old = pool.pack_version
            rows = [*ROWS, ("10000006", "Eva Lind", "eva@example.com", "Ulm")]
            make_pack(tmp_path, capsys, rows=rows)
            result = await PackReloader(pool, pack).reload("signal")
            assert result.result == "success" and result.version != old
            new = await pool.scan(text_message("Eva Lind 10000006"), ENV)
            assert (new.rules, new.pack_version) == (["customer-record"], result.version)
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(run(), 120))


# --------------------------------------------------------------- the builder and the scanner agree

words = st.text(
    alphabet=st.characters(categories=["Lu", "Ll", "Nd"], max_codepoint=0x17F),
    min_size=1,
    max_size=8,
)
separators = st.sampled_from([" ", "  ", ", ", ".", "-", "'", " & "])
number_separators = st.sampled_from([" ", "-", ".", "/", " - ", ") ", "+"])


@st.composite
def values(draw: st.DrawFn) -> str:
    """A value as a CSV holds it: words with separators, or digit groups with theirs."""
    if draw(st.booleans()):
        groups = draw(
            st.lists(st.text(alphabet="0123456789", min_size=1, max_size=5), min_size=1, max_size=6)
        )
        return "".join(
            g + (draw(number_separators) if i < len(groups) - 1 else "")
            for i, g in enumerate(groups)
        )
    parts = draw(st.lists(words, min_size=1, max_size=8))
    return "".join(
        p + (draw(separators) if i < len(parts) - 1 else "") for i, p in enumerate(parts)
    )


@pytest.fixture(scope="module")
def any_index(tmp_path_factory: pytest.TempPathFactory) -> EdmIndex:
    """An index whose key hashes the texts, and whose longest value (eight words) and numbers
    (1 to 30 digits) bound their candidates."""
    folder = tmp_path_factory.mktemp("edm")
    (folder / "one.csv").write_text("v\na b c d e f g h\n1\n" + "9" * 30 + "\n")
    build_index(folder / "one.csv", ["v"], folder / "one.edm")
    return EdmIndex(folder / "one.edm")


@given(
    values(), st.sampled_from(["", "Re: ", "x ", "(", "#"]), st.sampled_from(["", " y", ".", ")"])
)
def test_a_value_written_in_a_text_is_among_its_candidates(
    any_index: EdmIndex, value: str, before: str, after: str
) -> None:
    """Whatever a CSV value is, written in a message as it stands (with what text may stand
    around it), the scanner hashes a candidate the builder hashed it to."""
    expected = value_words(value)
    if not expected or len(expected) > 8:
        return
    (hashed,) = any_index.hasher.values([expected]).tolist()
    text = as_read(before + value + after)  # as the engine hands texts to conditions
    candidates = _everything(any_index, text).hashes
    assert hashed in candidates


@given(st.lists(st.text(alphabet="abcxyz", min_size=1, max_size=3), min_size=2, max_size=5))
def test_word_order_matters(any_index: EdmIndex, parts: list[str]) -> None:
    if parts == parts[::-1]:
        return
    forward, backward = any_index.hasher.values([parts, parts[::-1]]).tolist()
    assert forward != backward
