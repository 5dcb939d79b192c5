"""Passwords from the message (issue 11): the phrase finder, and encrypted zip (ZipCrypto and
AES), 7z, PDF and Office files opened with what it finds, then scanned as if unencrypted;
bounded work whatever the message holds."""

from __future__ import annotations

import io
import json
import string
from pathlib import Path

import olefile
import py7zr.helpers
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import UNLOCKED_NOTE, Message, Part, ScanLimits
from mailgate.filter.message.passwords import MAX_PASSWORD_CHARS, STOPWORDS, find_passwords
from mailgate.filter.message.readers import archives
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from tests.support import samples as s
from tests.support.cfb import cfb_file
from tests.support.pdfs import make_encrypted_pdf, show

ROOT = Path(__file__).resolve().parent.parent
CARD = "4111 1111 1111 1111"
CSV = f"name,card\r\nJ. Doe,{CARD}\r\n".encode()
LIMIT = ScanLimits().max_password_candidates


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(ROOT / "rules")


def with_attachment(text: str, payload: bytes, name: str, subject: str = "Files") -> bytes:
    return s.mime_message(s.text_part(text), s.attachment_part(payload, name), subject=subject)


def part_named(message: Message, name: str) -> Part:
    return next(p for p in message.parts if p.filename == name)


# --------------------------------------------------------------------------- the finder

# How people write a password into a mail, in the languages the finder knows; {q} is the
# value as written (quoted or not).
PHRASES = [
    "Password: {q}",
    "password:{q}",
    "The password is {q}",
    "the password for the zip file is {q}",
    "Zip password = {q}",
    "pw: {q}",
    "PWD - {q}",
    "Passwort: {q}",
    "Das Passwort lautet {q}",
    "das Kennwort für die Datei ist: {q}",
    "Le mot de passe : {q}",
    "le mot de passe du fichier est {q}",
    "MDP : {q}",
    "La contraseña es {q}",
    "contraseña: {q}",
    "La password è {q}",
    "la parola d'ordine è {q}",
    "Het wachtwoord is {q}",
    "Wachtwoord: {q}",
    "wachtwoord voor het bestand: {q}",
    "Contract (password: {q})",
    "[pw: {q}]",
    "Password:\n{q}",
    "Passwort:\n\n   {q}",
]
BARE = ["contraseña {q}", "Passwort {q}", "wachtwoord {q}"]
QUOTES = ["{p}", '"{p}"', "'{p}'", "“{p}”", "„{p}“", "« {p} »", "`{p}`"]
# A password as people choose them: no blank, no quote character.
PASSWORDS = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "-_#$%&@+*!?.äöüéñ"),
    min_size=1,
    max_size=40,
)
PROSE = st.text(alphabet=st.sampled_from(string.ascii_lowercase + " ,"), max_size=80)


@given(
    password=PASSWORDS,
    phrase=st.sampled_from(PHRASES),
    quote=st.sampled_from(QUOTES),
    before=PROSE,
    after=PROSE,
)
def test_the_finder_finds_the_password_in_every_phrasing(
    password: str, phrase: str, quote: str, before: str, after: str
) -> None:
    assume(password.strip(".,;:!?*_") == password)  # punctuation ending a sentence, bold
    value = quote.format(p=password)
    text = f"{before}\n{phrase.format(q=value)}\n{after}"
    assert password in find_passwords([text], LIMIT)


@given(password=PASSWORDS, phrase=st.sampled_from(BARE))
def test_a_bare_token_after_the_label_is_a_candidate(password: str, phrase: str) -> None:
    assume(password.lower() not in STOPWORDS and any(c.isalnum() for c in password))
    assume(password.strip(".,;:!?*_") == password)
    assert password in find_passwords([phrase.format(q=password)], LIMIT)


@given(password=PASSWORDS, end=st.sampled_from([".", ",", "!", ";"]))
def test_sentence_punctuation_is_tried_without_and_with(password: str, end: str) -> None:
    assume(password.strip(".,;:!?*_") == password)
    found = find_passwords([f"The password is {password}{end} Thanks."], LIMIT)
    assert found[:2] == [password, password + end]


@given(st.text(max_size=400), st.integers(min_value=1, max_value=30))
def test_the_finder_only_returns_what_the_text_holds(text: str, limit: int) -> None:
    found = find_passwords([text], limit)
    assert len(found) <= limit
    assert len(set(found)) == len(found)
    for candidate in found:
        assert 0 < len(candidate) <= MAX_PASSWORD_CHARS
        assert candidate in text


def test_the_finder_ignores_mail_without_a_password_phrase() -> None:
    texts = ["Please reset your passwords regularly.", "Passwords: 12 characters.", "I pass."]
    assert find_passwords(texts, LIMIT) == []


def test_ten_thousand_phrases_cost_twenty_tries() -> None:
    """Bad input: the finder stops at the limit, and a file is tried at most that often."""
    phrases = "".join(f"Password: guess-{n}\n" for n in range(10_000))
    found = find_passwords([phrases], LIMIT)
    assert found == [f"guess-{n}" for n in range(LIMIT)]
    budget = ScanBudget(ScanLimits())
    budget.start_unlocking()
    zipped = s.zipcrypto_zip({"a.txt": b"x" * 100}, "guess-9999")
    assert archives.unlock_zip(zipped, [f"guess-{n}" for n in range(10_000)], budget, 10) is None
    assert budget.unlock_trials == LIMIT


def test_ten_thousand_phrases_in_a_message_leave_the_file_encrypted() -> None:
    phrases = "".join(f"Password: guess-{n}\n" for n in range(10_000))
    raw = with_attachment(phrases, s.zipcrypto_zip({"a.csv": CSV}, "guess-9999"), "a.zip")
    message = parse_message(raw)
    assert part_named(message, "a.zip").encrypted
    assert message.unscannable == {"encrypted"}


# --------------------------------------------------------------------------- opening files


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("The password is Fjord-2026.", "Fjord-2026"),
        ("Passwort: Sommer2026!", "Sommer2026!"),
        ("Le mot de passe : « Lune 4821 »", "Lune 4821"),
        ("contraseña tortuga99", "tortuga99"),
    ],
)
def test_a_password_zip_is_opened_and_its_card_found(
    engine: Engine, text: str, password: str
) -> None:
    for zipped in (s.aes_zip({"c.csv": CSV}, password), s.zipcrypto_zip({"c.csv": CSV}, password)):
        raw = with_attachment(text, zipped, "customers.zip")
        message = parse_message(raw)
        archive, member = part_named(message, "customers.zip"), part_named(message, "c.csv")
        assert not archive.encrypted and archive.unlocked and member.unlocked
        assert member.text is not None and CARD.replace(" ", "") in member.text.replace(" ", "")
        assert message.unscannable == set()
        verdict = engine.scan(raw, envelope_from_headers(raw))
        assert str(verdict.action) == "quarantine" and verdict.rules == ["card-number"]
        hit = next(h for h in verdict.hits if h.rule == "card-number")
        assert UNLOCKED_NOTE in hit.where
        # The password itself never leaves the engine.
        assert password not in json.dumps(verdict.to_dict())


def test_the_password_may_come_later_or_earlier_or_in_the_subject() -> None:
    zipped = s.aes_zip({"c.csv": CSV}, "Kestrel-55")
    later = s.mime_message(
        s.text_part("Files attached."),
        s.attachment_part(zipped, "a.zip"),
        s.text_part("PS: password: Kestrel-55"),
    )
    earlier_html = s.mime_message(
        s.text_part("<p>Het wachtwoord is <b>Kestrel-55</b></p>", "html"),
        s.attachment_part(zipped, "a.zip"),
    )
    in_subject = with_attachment("Files attached.", zipped, "a.zip", subject="pw: Kestrel-55")
    in_a_text_file = s.mime_message(
        s.attachment_part(zipped, "a.zip"),
        s.attachment_part(b"Password for a.zip: Kestrel-55\r\n", "readme.txt", "text/plain"),
    )
    for raw in (later, earlier_html, in_subject, in_a_text_file):
        message = parse_message(raw)
        assert part_named(message, "a.zip").unlocked, raw[:200]
        assert part_named(message, "c.csv").payload == CSV


def test_a_wrong_password_leaves_the_file_encrypted(engine: Engine) -> None:
    raw = with_attachment("Password: Winter-2026", s.zipcrypto_zip({"c.csv": CSV}, "x"), "a.zip")
    message = parse_message(raw)
    assert part_named(message, "a.zip").encrypted and not part_named(message, "a.zip").unlocked
    assert part_named(message, "c.csv").payload == b""
    assert message.unscannable == {"encrypted"}
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert verdict.rules == ["encrypted-archive"]


def test_a_password_7z_with_encrypted_names_is_opened_and_its_executable_found(
    engine: Engine,
) -> None:
    archive = s.sevenzip_bytes(
        {"photo.jpg": s.pe_executable()}, password="Lune-4821", header_encryption=True
    )
    raw = with_attachment("mot de passe : Lune-4821", archive, "photos.7z")
    message = parse_message(raw)
    member = part_named(message, "photo.jpg")
    assert member.unlocked and member.detected_type is not None
    assert "executable" in member.detected_type
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject" and verdict.rules == ["executable-attachment"]


def test_unlocked_content_is_scanned_like_any_other(engine: Engine) -> None:
    """YARA, macros and nested archives inside an opened file: EICAR in a plain zip in a
    password zip is rejected; a macro document in it is held for its macros."""
    inner = s.zip_bytes({"notes.txt": s.EICAR})
    raw = with_attachment("pw: Osprey!", s.aes_zip({"inner.zip": inner}, "Osprey!"), "a.zip")
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject" and verdict.rules == ["eicar-test-file"]
    macros = s.aes_zip({"figures.docx": s.docx_bytes([["Q3"]], vba=True)}, "Osprey!")
    raw = with_attachment("pw: Osprey!", macros, "a.zip")
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert verdict.rules == ["office-macros"]


def test_a_password_in_an_opened_file_opens_the_next() -> None:
    inner = s.zipcrypto_zip({"c.csv": CSV}, "second-key")
    outer = s.aes_zip({"inner.zip": inner, "readme.txt": b"Password: second-key\r\n"}, "first")
    message = parse_message(with_attachment("Password: first", outer, "outer.zip"))
    assert part_named(message, "inner.zip").unlocked
    assert part_named(message, "c.csv").payload == CSV
    assert message.unscannable == set()


def test_a_password_pdf_is_opened(engine: Engine) -> None:
    pdf = make_encrypted_pdf([show(f"Card on file: {CARD}")], user=b"tortuga99")
    raw = with_attachment("La contraseña es tortuga99", pdf, "statement.pdf")
    message = parse_message(raw)
    statement = part_named(message, "statement.pdf")
    assert statement.unlocked and not statement.encrypted
    assert statement.text is not None and CARD in statement.text
    assert engine.scan(raw, envelope_from_headers(raw)).rules == ["card-number"]


def test_a_password_office_document_is_decrypted(engine: Engine) -> None:
    document = s.password_docx([[f"Payment by card: {CARD}"]], "Molen#12")
    raw = with_attachment("Het wachtwoord is Molen#12", document, "form.docx")
    message = parse_message(raw)
    form = part_named(message, "form.docx")
    assert form.unlocked and not form.encrypted
    assert form.text is not None and CARD in form.text
    assert engine.scan(raw, envelope_from_headers(raw)).rules == ["card-number"]
    wrong = with_attachment("Het wachtwoord is Molen#13", document, "form.docx")
    assert part_named(parse_message(wrong), "form.docx").encrypted


def test_an_office_file_asking_for_more_key_rounds_than_office_writes_is_not_tried() -> None:
    """A crafted spinCount would make every try cost minutes: refused, reported."""
    document = s.password_docx([["text"]], "Molen#12")
    with olefile.OleFileIO(io.BytesIO(document)) as ole:
        streams = {"/".join(p): ole.openstream(p).read() for p in ole.listdir()}
    info = streams["EncryptionInfo"]
    streams["EncryptionInfo"] = info.replace(b'spinCount="100000"', b'spinCount="5000000"')
    assert streams["EncryptionInfo"] != info
    message = parse_message(with_attachment("pw: Molen#12", cfb_file(streams), "form.docx"))
    assert part_named(message, "form.docx").encrypted
    assert message.unscannable == {"encrypted", "over_budget"}


def test_at_most_twenty_candidates_per_file() -> None:
    zipped = s.zipcrypto_zip({"c.csv": CSV}, "right")

    def opened(wrong: int) -> bool:
        text = "".join(f"Password: wrong-{n}\n" for n in range(wrong)) + "Password: right\n"
        return part_named(parse_message(with_attachment(text, zipped, "a.zip")), "a.zip").unlocked

    assert opened(LIMIT - 1)
    assert not opened(LIMIT)


def test_at_most_five_files_per_message() -> None:
    files = [
        s.attachment_part(s.zipcrypto_zip({f"{n}.csv": CSV}, "same"), f"{n}.zip") for n in range(7)
    ]
    message = parse_message(s.mime_message(s.text_part("Password: same"), *files))
    archives_ = [part_named(message, f"{n}.zip") for n in range(7)]
    assert [a.unlocked for a in archives_] == [True] * 5 + [False] * 2
    assert all("over_budget" in a.unscannable and a.encrypted for a in archives_[5:])


def test_a_thousand_encrypted_members_cost_a_bounded_number_of_tries() -> None:
    """Bad input: each member read with the password is a try; past the message's trials
    the rest stay encrypted and the archive says over_budget. Never a crash."""
    limits = ScanLimits(max_parts=2000)
    members = {f"m{n:04}.txt": b"row %d\r\n" % n for n in range(1000)}
    raw = with_attachment("Password: many", s.zipcrypto_zip(members, "many"), "many.zip")
    message = parse_message(raw, limits)
    archive = part_named(message, "many.zip")
    read = [p for p in message.parts if p.member_of == archive.path and p.payload]
    # One try found the password on the smallest member, every other try read one.
    assert len(read) == limits.max_unlock_trials - 1
    assert archive.encrypted and {"encrypted", "over_budget"} <= archive.unscannable
    wrong = parse_message(
        with_attachment("Password: wrong", s.zipcrypto_zip(members, "x"), "m.zip"), limits
    )
    assert wrong.unscannable == {"encrypted"}
    assert not any(p.payload for p in wrong.parts if p.member_of)


def test_no_seconds_left_means_no_tries() -> None:
    limits = ScanLimits(max_unlock_seconds=0)
    raw = with_attachment("Password: right", s.zipcrypto_zip({"c.csv": CSV}, "right"), "a.zip")
    message = parse_message(raw, limits)
    assert part_named(message, "a.zip").encrypted
    assert message.unscannable == {"encrypted", "over_budget"}


# --------------------------------------------------------------------------- 7z keys


@pytest.mark.parametrize(
    ("password", "cycles", "salt"),
    [("Lune-4821", 19, b""), ("Grüße 2026", 19, b"salt1234"), ("", 5, b""), ("x" * 64, 17, b"")],
)
def test_the_7z_key_is_py7zr_s_key(password: str, cycles: int, salt: bytes) -> None:
    encoded = password.encode("utf-16-le")
    ours = archives.seven_zip_key(encoded, cycles, salt, "sha256")
    assert ours == py7zr.helpers.calculate_key(encoded, cycles, salt, "sha256")
    assert py7zr.compressor.calculate_key is archives.seven_zip_key


def test_a_7z_asking_for_a_costlier_key_than_7zip_writes_is_refused() -> None:
    with pytest.raises(py7zr.exceptions.UnsupportedCompressionMethodError):
        archives.seven_zip_key(b"p\0", archives.MAX_7Z_KEY_CYCLES + 1, b"", "sha256")
