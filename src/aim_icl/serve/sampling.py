"""What a request asks of generation (OpenAI's fields), and per-row sampling inside one batch.

Rows of different requests generate together, each with its own temperature, top_p and seeded generator:
`TokenSampler` picks one row's next token from its logits (the argmax when greedy, as `generate` takes it, so
greedy rows match `aim.generate`), and `next_tokens` does it for every row of a step. `RowSampler` is the same
draw as a `transformers` logits processor, for a `generate` call with rows of their own settings.

Every value the API accepts is answered: temperatures under `GREEDY_BELOW` are greedy (softmax(scores / 1e-38)
overflows float32; such a distribution is the top token anyway), the scaled scores go through log-softmax in
float32, and top_p keeps the top token however small it is (1e-46 is 0 in float32).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

GREEDY_BELOW = 1e-4  # temperatures under this sample the top token: greedy


@dataclass(frozen=True)
class Generation:
    """One request's generation settings; `temperature` under GREEDY_BELOW is greedy. `n` choices each get
    their own row."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()

    def row_seeds(self) -> list[int]:
        """A seed per choice: fixed by the request's seed (same seed, same answers), else fresh."""
        if self.seed is None:
            return [secrets.randbits(63) for _ in range(self.n)]
        return [_derive(self.seed, i) for i in range(self.n)]


@dataclass(frozen=True)
class RowSampling:
    temperature: float
    top_p: float
    seed: int


def rows_of(generation: Generation) -> list[RowSampling]:
    return [RowSampling(generation.temperature, generation.top_p, s) for s in generation.row_seeds()]


class RowSampler(LogitsProcessor):
    """Sample each row with its own settings and generator; run `generate` with `do_sample=False` around it."""

    def __init__(self, rows: list[RowSampling]):
        self.rows = rows
        self._generators: list[torch.Generator | None] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._generators is None:  # on the scores' device, seeded once per generation
            self._generators = [
                _generator(r.seed, scores.device) if r.temperature >= GREEDY_BELOW else None
                for r in self.rows
            ]
        for row, (setting, generator) in enumerate(zip(self.rows, self._generators)):
            if generator is not None:
                token = _draw(scores[row], setting, generator)
                scores[row] = float("-inf")
                scores[row, token] = 0.0
        return scores


class TokenSampler:
    """One row's next token: the argmax when greedy, else a draw with the row's own generator (seeded once)."""

    def __init__(self, setting: RowSampling):
        self.setting = setting
        self.greedy = setting.temperature < GREEDY_BELOW
        self._generator: torch.Generator | None = None

    def draw(self, logits: torch.Tensor) -> int:
        """A token from one row's logits (vocab,)."""
        if self.greedy:
            return int(logits.argmax())
        if self._generator is None:
            self._generator = _generator(self.setting.seed, logits.device)
        return int(_draw(logits, self.setting, self._generator))


def next_tokens(logits: torch.Tensor, samplers: list[TokenSampler]) -> list[int]:
    """Each row's next token from its logits (rows, vocab): greedy rows in one argmax, the others drawn."""
    tokens = logits.argmax(-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[row] = sampler.draw(logits[row])
    return tokens


def _draw(scores: torch.Tensor, setting: RowSampling, generator: torch.Generator) -> torch.Tensor:
    """One token from softmax(scores / temperature), restricted to the smallest set holding top_p of the mass."""
    probs = torch.log_softmax(scores.float() / setting.temperature, dim=-1).exp()  # (vocab,)
    if setting.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        dropped = before >= setting.top_p
        dropped[0] = False  # the top token always stays
        sorted_probs[dropped] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _derive(seed: int, choice: int) -> int:
    """Independent seeds for the choices of one request (seed + i would repeat another request's choices)."""
    digest = hashlib.sha256(f"{seed}/{choice}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
