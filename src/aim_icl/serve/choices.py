"""Each row of a generating batch as one answer choice: its text as it grows, stop strings, its own token limit.

`ChoiceTracker` is a `StoppingCriteria`: `generate` calls it after every step with the whole batch, so it sees each
row's new token as soon as it exists. It streams the safe part of each row's text, ends a row at its end token, at
a stop string (cut from the answer, as OpenAI does) or at its own `max_tokens`, and hands a finished row on at once:
a short answer in a batch with a long one does not wait for the long one.

The streamed pieces add up to exactly the final answer, which is `aim.generate`'s decoding (special tokens
skipped, whitespace stripped): trailing whitespace and any tail that could start a stop string are held back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria


@dataclass
class Choice:
    """One answer choice: its text so far, how it ended (None while generating) and the tokens it took."""

    max_tokens: int
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # streamed pieces, in order
    on_end: Callable[[Choice], None] | None = None  # called once when the choice is finished
    abandoned: Callable[[], bool] = lambda: False  # the client is gone: stop generating this row
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    _sent: int = field(default=0, repr=False)  # characters streamed so far
    _ids: list[int] = field(default_factory=list, repr=False)  # generated token ids, end token excluded

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class ChoiceTracker(StoppingCriteria):
    """Follow every row of one `generate` call; rows finish on their own (per-row stopping, transformers 4.39+)."""

    def __init__(self, choices: list[Choice], tokenizer, eos_ids: set[int]):
        self.choices, self.tokenizer, self.eos_ids = choices, tokenizer, eos_ids
        self._start: int | None = None  # prompt length of the padded batch

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self._start is None:
            self._start = input_ids.shape[1] - 1  # first call: one new token per row
        new = input_ids[:, self._start :].tolist()  # (B, steps)
        for choice, tokens in zip(self.choices, new):
            if not choice.finished:
                self._step(choice, tokens)
        done = [c.finished for c in self.choices]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def close(self, reason: str = "length") -> None:
        """After `generate` returned: rows still open ran out of time or tokens."""
        for choice in self.choices:
            if not choice.finished:
                self._finish(choice, reason)

    def _step(self, choice: Choice, tokens: list[int]) -> None:
        choice.tokens = len(tokens)
        ended = tokens[-1] in self.eos_ids
        choice._ids = tokens[:-1] if ended else tokens
        if ended or choice.tokens >= choice.max_tokens:
            self._finish(choice, "stop" if ended else "length")
        elif choice.abandoned():
            self._finish(choice, "abandoned")
        elif choice.stop or choice.on_text is not None:  # else the text is needed only at the end
            choice.text, cut = self._text(choice)
            if cut:
                self._finish(choice, "stop")
            elif choice.on_text is not None:
                _send(choice, _safe_prefix(choice.text, choice.stop))

    def _text(self, choice: Choice) -> tuple[str, bool]:
        """The row's answer so far, cut before its first stop string; and whether one was found."""
        text = self.tokenizer.decode(choice._ids, skip_special_tokens=True)
        found = [i for i in (text.find(s) for s in choice.stop) if i >= 0]
        return (text[: min(found)], True) if found else (text, False)

    def _finish(self, choice: Choice, reason: str) -> None:
        text, cut = self._text(choice)
        choice.text = text.strip()
        choice.finish_reason = "stop" if cut else reason
        if choice.on_text is not None:
            _send(choice, choice.text)
        if choice.on_end is not None:
            choice.on_end(choice)


def _send(choice: Choice, visible: str) -> None:
    if len(visible) > choice._sent:
        choice.on_text(visible[choice._sent :])
        choice._sent = len(visible)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """What can be sent now: the answer without the tail that may still change (a stop string's start, trailing
    whitespace the final strip removes, a half-decoded character)."""
    hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    visible = text[: len(text) - hold].strip()
    return visible[:-1] if visible.endswith("\ufffd") else visible
