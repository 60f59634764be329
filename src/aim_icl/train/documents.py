"""Documents as training sees them: ordered (image, matched text) pairs as `Demo`s, plus counters of what was skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from aim_icl.core.demo import Demo


class SkipItem(Exception):  # noqa: N818 - a signal, not an error: the item is counted and training goes on
    """Raised by a reader for an item (line, image, pair, document, file) that training skips; `reason` is counted."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Document:
    where: str  # "file:record" for messages
    pairs: list[Demo]  # images decoded to 8-bit RGB; texts matched to them, cut to the token budget


class Skips(Counter):
    """Skipped items by reason ("bad image", "malformed line", "too few pairs", ...)."""

    def summary(self) -> str:
        """'3 skipped (2 bad image, 1 malformed line)' or '0 skipped'."""
        total = sum(self.values())
        if not total:
            return "0 skipped"
        parts = ", ".join(
            f"{n} {reason}" for reason, n in sorted(self.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        return f"{total} skipped ({parts})"
