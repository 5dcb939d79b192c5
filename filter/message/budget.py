"""Per-message budget shared by the MIME walk and archive extraction."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mailgate.filter.message.model import ScanLimits

T = TypeVar("T")


@dataclass
class ScanBudget:
    """What is left of a message's allowance for parts, decoded bytes and text, and for
    trying the passwords found in it."""

    limits: ScanLimits
    decoded_bytes: int = 0
    text_chars: int = 0
    part_count: int = 0
    unlock_trials: int = 0
    unlock_deadline: float = math.inf
    unlock_cut_short: bool = False  # a trial was refused: some candidates were never tried

    @property
    def bytes_left(self) -> int:
        return max(0, self.limits.max_decoded_total - self.decoded_bytes)

    def charge_bytes(self, n: int) -> None:
        self.decoded_bytes += n

    def take_part(self) -> bool:
        """Count one more part; False once the message has used up `max_parts`."""
        if self.part_count >= self.limits.max_parts:
            return False
        self.part_count += 1
        return True

    def fit_text(self, text: str) -> tuple[str, bool]:
        """The text cut to what is left of `max_text_chars`, and whether it was cut."""
        left = self.limits.max_text_chars - self.text_chars
        cut = len(text) > left
        if cut:
            text = text[: max(0, left)]
        self.text_chars += len(text)
        return text, cut

    def start_unlocking(self) -> None:
        """The clock for `max_unlock_seconds` starts with the first file tried."""
        if self.unlock_deadline == math.inf:
            self.unlock_deadline = time.monotonic() + self.limits.max_unlock_seconds

    def unlock_overrun(self) -> bool:
        return time.monotonic() > self.unlock_deadline

    def take_trial(self) -> bool:
        """Count one key derivation; False once the trials or the seconds are used up."""
        if self.unlock_trials >= self.limits.max_unlock_trials or self.unlock_overrun():
            self.unlock_cut_short = True
            return False
        self.unlock_trials += 1
        return True

    def first_to_open(
        self, passwords: Sequence[str], attempt: Callable[[str], T | None]
    ) -> T | None:
        """What `attempt` returns for the first password that opens the file (None: a wrong
        password), trying at most `max_password_candidates` within the trials left."""
        for password in passwords[: self.limits.max_password_candidates]:
            if not self.take_trial():
                return None
            opened = attempt(password)
            if opened is not None:
                return opened
        return None
