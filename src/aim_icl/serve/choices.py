"""One answer choice as its tokens arrive: its text, the part of it safe to stream, how it ended.

`ChoiceText.add(token)` takes a row's next token and says what may be streamed now; the choice ends at an end token,
at a stop string (cut from the answer, as OpenAI does) or at its own `max_tokens`. The streamed pieces add up to
exactly the final answer, which is `aim.generate`'s decoding (special tokens skipped, whitespace stripped):
trailing whitespace and any tail that could start a stop string are held back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChoiceText:
    """One choice: its text so far, how it ended (None while generating) and the tokens it took (its end token
    included)."""

    tokenizer: object
    end_tokens: frozenset[int]
    max_tokens: int
    stop: tuple[str, ...] = ()
    stream: bool = False  # decode as it goes (else only at the end, unless stop strings need it)
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    _sent: int = field(default=0, repr=False)  # characters handed out so far
    _ids: list[int] = field(default_factory=list, repr=False)  # generated ids, end token excluded

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int) -> str:
        """Take the next token; returns the text that may be streamed now ("" for none)."""
        self.tokens += 1
        if token in self.end_tokens:
            return self._finish("stop")
        self._ids.append(token)
        if self.tokens >= self.max_tokens:
            return self._finish("length")
        if not (self.stop or self.stream):
            return ""
        self.text, cut = self._decoded()
        if cut:
            return self._finish("stop")
        return self._take(_safe_prefix(self.text, self.stop)) if self.stream else ""

    def _decoded(self) -> tuple[str, bool]:
        """The answer so far, cut before its first stop string; and whether one was found."""
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(found)], True) if found else (text, False)

    def _finish(self, reason: str) -> str:
        text, cut = self._decoded()
        self.text = text.strip()
        self.finish_reason = "stop" if cut else reason
        return self._take(self.text) if self.stream else ""

    def _take(self, visible: str) -> str:
        piece = visible[self._sent :]
        self._sent = max(self._sent, len(visible))
        return piece


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """What can be sent now: the answer without the tail that may still change (a stop string's start, trailing
    whitespace the final strip removes, a half-decoded character)."""
    hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    visible = text[: len(text) - hold].strip()
    return visible[:-1] if visible.endswith("\ufffd") else visible
