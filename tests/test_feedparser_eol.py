"""The feed parser's end-of-text line-end search, looked up at the end only (message/mime.py):
the same answer as the stdlib pattern scanning the whole text."""

from __future__ import annotations

import re
from email import feedparser

from hypothesis import given
from hypothesis import strategies as st

import mailgate.filter.message.mime  # noqa: F401  (installs the search)

STDLIB = re.compile(r"(\r\n|\r|\n)\Z")


@given(st.text(alphabet="a\r\n ", max_size=12))
def test_same_match_as_the_stdlib_pattern(text: str) -> None:
    ours, theirs = feedparser.NLCRE_eol.search(text), STDLIB.search(text)
    assert (ours and (ours.span(), ours.group(0))) == (theirs and (theirs.span(), theirs.group(0)))
    assert type(feedparser.NLCRE_eol).__name__ == "_LineEndAtEnd"
