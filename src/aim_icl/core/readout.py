"""What the projector wrote: each fused token read back as its nearest vocabulary tokens.

A fused token lives in the model's input-embedding space, so the input embeddings of the whole vocabulary (in the
scale the embedding module produces) are a dictionary to read it with. Next to the demo's own text token at the same
slot, this shows whether a slot copies its token, or carries what the demo's image says (a colour, a shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aim_icl.core.demo import Demo


@dataclass(frozen=True)
class SlotReading:
    token: str  # the demo text's own token at this slot
    nearest: tuple[str, ...]  # vocabulary tokens nearest to the fused vector, nearest first
    distances: tuple[float, ...]  # their Euclidean distances to it


@torch.no_grad()
def read_fused_tokens(aim, demos: Sequence[Demo], top: int = 3) -> list[list[SlotReading]]:
    """For each demo, one reading per fused token: its own text token and the `top` nearest vocabulary tokens."""
    tokenizer = aim.encoder.tokenizer
    vocab_ids = _readable_ids(aim)
    vocab = aim.backbone.embed(vocab_ids).float()  # (V, embed)
    readings = []
    for states in aim.encode(list(demos)):
        fused = aim.project(states.hidden, token_ids=states.token_ids).float()  # (n_text_tokens, embed)
        distances = torch.cdist(fused, vocab)  # (n_text_tokens, V)
        best = distances.topk(min(top, len(vocab_ids)), largest=False)
        own = tokenizer.convert_ids_to_tokens(list(states.token_ids))
        readings.append(
            [
                SlotReading(
                    token,
                    tuple(tokenizer.convert_ids_to_tokens(vocab_ids[idx].tolist())),
                    tuple(round(d, 3) for d in dist.tolist()),
                )
                for token, idx, dist in zip(own, best.indices, best.values)
            ]
        )
    return readings


def _readable_ids(aim) -> torch.Tensor:
    """Every id of the model's vocabulary but special tokens, the image placeholder and the fused-slot marker."""
    tokenizer = aim.encoder.tokenizer
    special = set(tokenizer.all_special_ids) | {aim.backbone.image_token_id, aim.encoder.slot_id}
    size = min(len(tokenizer), aim.model.get_input_embeddings().num_embeddings)
    return torch.tensor([i for i in range(size) if i not in special], device=aim.backbone.device)


def readout_table(readings: list[SlotReading], title: str = "") -> str:
    """One demo's readings as a plain-text table: slot, own token, nearest tokens."""
    rows = [("slot", "own token", "nearest vocabulary tokens")]
    rows += [(str(i), r.token, " / ".join(r.nearest)) for i, r in enumerate(readings)]
    widths = [max(len(row[c]) for row in rows) for c in range(2)]
    lines = [title] if title else []
    lines += [f"{a.rjust(widths[0])}  {b.ljust(widths[1])}  {c}" for a, b, c in rows]
    return "\n".join(lines)
