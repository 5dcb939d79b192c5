"""Per-message budget shared by the MIME walk and archive extraction."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.filter.message.model import ScanLimits


@dataclass
class ScanBudget:
    """What is left of a message's allowance for parts, decoded bytes and text."""

    limits: ScanLimits
    decoded_bytes: int = 0
    text_chars: int = 0
    part_count: int = 0

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
