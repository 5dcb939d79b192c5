"""Candidate passwords in a message's own text: the oldest way to send a locked archive is
with its password in the same message ("Password: Fjord-2026", "das Passwort lautet …",
"mot de passe : …", "contraseña …", a lone token on the line after "Password:").

Text processing only: the readers try what this finds. Phrasings of English, German, French,
Spanish, Italian, Dutch and Portuguese, quoted or not. Each label found looks at most
`_WINDOW` characters ahead, and the search stops at `limit` distinct candidates, so a text
of any size and any number of phrases costs one linear pass at most.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_PASSWORD_CHARS = 128
# How far past a label a value may start: the label, a few connecting words ("for the zip
# file", "für die Datei"), the separator, and the value itself, or the next line's token.
_WINDOW = 400
# The word that names a password. A bare "pass" only with a separator ("Pass: …"), as it
# is also an everyday verb.
_LABEL = re.compile(
    r"(?<!\w)(?:"
    r"pa(?:ss|ß)wor[dt]|passwd|pass[- ]?phrase|pass[- ]?code|kennwort|codewort|pwd?"
    r"|mot[ \t]+de[ \t]+passe|mdp|contrase(?:ñ|n)a|clave(?:[ \t]+de[ \t]+acceso)?"
    r"|wachtwoord|parola[ \t]+(?:d['\u2019]ordine|chiave)|senha"
    r"|pass(?=[ \t]*[:=])"
    r")(?!\w)",
    re.IGNORECASE,
)
# After the label: connecting words on the same line, then a separator: a colon (also the
# fullwidth one) or equals sign, a dash, en or em dash or arrow between spaces, or "is" in one
# of the languages.
_SEPARATOR = re.compile(
    r"[^\n:=\uff1a]{0,60}?"
    r"(?:[ \t]*[:=\uff1a]|[ \t]+[-\u2013\u2014\u2192>]{1,2}(?=[ \t])"
    r"|[ \t]+(?:is|ist|lautet|heißt|heisst|est|es|è|e|é|luidt|será|sera|sarà|wird|will[ \t]+be)"
    r"(?!\w)[ \t]*:?)[ \t]*",
    re.IGNORECASE,
)
# A value in quotes: straight, curly (English, German low-high), guillemets (French, with
# their thin spaces), single curly, backticks.
_QUOTED = re.compile(
    r"\"([^\"\n]{1,128})\"|'([^'\n]{1,128})'"
    r"|\u201c([^\u201d\n]{1,128})\u201d|\u201e([^\u201c\u201d\n]{1,128})[\u201c\u201d]"
    r"|«[ \t\u00a0\u202f]?([^»\n]{1,128}?)[ \t\u00a0\u202f]?»"
    r"|\u2018([^\u2019\n]{1,128})\u2019|`([^`\n]{1,128})`"
)
_TOKEN = re.compile(r"[^\s]{1,128}")
_NEXT_LINE = re.compile(r"[ \t]*\r?\n(?:[ \t]*\r?\n)?[ \t]*([^\n]{1,130}?)[ \t]*\r?(?:\n|$)")
# Wrapping a bare token often carries: sentence punctuation after it, brackets or markdown
# emphasis around it. The token is tried as written too.
_TRAILING = ".,;:!?"
_WRAPPERS = (("*", "*"), ("_", "_"), ("<", ">"), ("(", ")"), ("[", "]"))
# Words that follow a label without a separator ("password for the file is …", "contraseña
# del archivo"): not a password, so a bare token that is one of them is not a candidate.
STOPWORDS = frozenset(
    """a an and as at be by for from in is it of on or the to was will with you your
    protected reset required sent separately below above follows attached
    der die das den dem des ein eine für ist und wird zum zur mit von im
    le la les un une du de des est et pour par en au
    el los las del es para por y con al
    il lo gli per di da è e con
    het een voor van en op met
    o os as do da para é""".split()
)


def find_passwords(texts: Iterable[str], limit: int) -> list[str]:
    """Up to `limit` distinct candidates, in the order the texts and phrases give them."""
    found: dict[str, None] = {}
    for text in texts:
        for label in _LABEL.finditer(text):
            for candidate in _after_label(text, label.end()):
                found.setdefault(candidate)
                if len(found) >= limit:
                    return list(found)
    return list(found)


def _after_label(text: str, at: int) -> list[str]:
    """The candidates a label at `at` offers: the value after a separator (on the line, or
    alone on the next one), then the token right after the label ("contraseña X")."""
    window = text[at : at + _WINDOW]
    candidates: list[str] = []
    separator = _SEPARATOR.match(window)
    if separator is not None:
        candidates += _value(window, separator.end())
    bare = _TOKEN.match(window, _skip_blanks(window, 0))
    if bare is not None and bare.start() > 0 and window[: bare.start()].strip(" \t") == "":
        candidates += [
            c
            for c in _token_variants(bare.group())
            if c.lower() not in STOPWORDS and any(ch.isalnum() for ch in c)
        ]
    return candidates


def _skip_blanks(window: str, at: int) -> int:
    while at < len(window) and window[at] in " \t":
        at += 1
    return at


def _value(window: str, at: int) -> list[str]:
    """The value starting at `at`: quoted, a token, or (when the line ends there) a lone
    token or quoted value on the next line."""
    quoted = _QUOTED.match(window, at)
    if quoted is not None:
        return [next(g for g in quoted.groups() if g is not None)]
    token = _TOKEN.match(window, at)
    if token is not None and at < len(window) and window[at] not in "\r\n":
        return _token_variants(token.group())
    line = _NEXT_LINE.match(window, at)
    if line is None:
        return []
    lone = line.group(1)
    quoted = _QUOTED.fullmatch(lone)
    if quoted is not None:
        return [next(g for g in quoted.groups() if g is not None)]
    return _token_variants(lone) if _TOKEN.fullmatch(lone) else []


def _token_variants(token: str) -> list[str]:
    """A bare token without what usually wraps it, then as written."""
    clean = token
    for _ in range(4):  # "(**Geheim99**)." takes four steps
        before = clean
        clean = clean.rstrip(_TRAILING)
        for left, right in _WRAPPERS:
            if len(clean) > 2 and clean.startswith(left) and clean.endswith(right):
                clean = clean[1:-1]
            elif len(clean) > 1 and clean.endswith(right) and left not in clean:
                clean = clean[:-1]  # the phrase was in brackets: "(password: X)"
        if clean == before:
            break
    variants = [clean, token] if clean and clean != token else [token]
    return [v for v in variants if len(v) <= MAX_PASSWORD_CHARS]
