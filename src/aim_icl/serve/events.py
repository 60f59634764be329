"""What the engine tells a request while answering it, in order: `Started` once its prompt is read, `Text` pieces
as they are generated (streaming requests only), `Finished` as each choice ends, then `Done` with the answer, or
`Failed` instead at any point. Plain data: they cross from the engine's thread to the request's event loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptInfo:
    """What a request's prompt cost: its tokens (and those served from a cached prefix) and its demos."""

    mode: str
    tokens: int
    demos: int
    bank_hits: int
    bank_misses: int = 0
    demo_keys: list[str] = field(default_factory=list)
    cached_tokens: int = 0


@dataclass(frozen=True)
class Started:
    prompt: PromptInfo


@dataclass(frozen=True)
class Text:
    choice: int
    piece: str


@dataclass(frozen=True)
class Finished:
    choice: int
    reason: str  # "stop" or "length"


@dataclass
class Answer:
    """A request's answer: its choices (`serve.choices.ChoiceText`) and what its prompt cost (`prompt`)."""

    choices: list
    prompt: PromptInfo

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


@dataclass(frozen=True)
class Done:
    answer: Answer


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Started | Text | Finished | Done | Failed
