"""The model side of the engine: a prompt prefilled into its row's slot, then one decoding step for every row.

`join(inputs)` reads a prompt (a `build_inputs`-style dict of one row) through the model's forward into a free slot
of `RowSlots` and returns its next-token logits; a `PrefixCache` in front of it supplies the prompt's leading
positions (fixed demos read once), so only the query's own positions are computed. `step(tokens)` feeds every
active row its last token in one forward and returns the next logits, `(rows, vocab)`; `leave(slot)` frees a row.
The forward gets what `generate` would give it: a first pass with every prompt input (`inputs_embeds` for fused
demos, pixels, type ids), then token ids with explicit positions (each row counts its own; the three M-RoPE sections
alike after the prompt's last one), the 2-D mask of the rows' padding, and type ids extended as `generate` extends
them. Sampling, stop strings and scheduling are the engine's.
"""

from __future__ import annotations

from typing import Any

import torch

from aim_icl.core.prefix_attention import use_prefix_attention
from aim_icl.core.prompt import is_per_token
from aim_icl.serve.kv import RowSlots

# per-token inputs a decoding step extends, as `generate` does: the last value, or a fixed one
_EXTENDED = {"token_type_ids": None, "mm_token_type_ids": 0}
# per-token inputs a model reads by absolute position (Gemma 3's image blocks): a prefill after cached positions
# passes them whole, from the sequence's start, as `generate` does for a prefill chunk
_FROM_START = ("token_type_ids",)


class Decoder:
    """Rows of one model generating together (at most `max_rows`), through their KV slots."""

    def __init__(self, aim, max_rows: int):
        self.aim = aim
        model = aim.model
        use_prefix_attention(model)  # a row joining after a cached prefix attends without an explicit mask
        self.slots = RowSlots(model.config.get_text_config().num_hidden_layers, max_rows)
        self._positions: list[torch.Tensor] = []  # per slot: its next position, (1, 1) or (3, 1, 1)
        self._extras: list[dict[str, torch.Tensor]] = []  # per slot: its decoding type ids, (1, 1)

    @property
    def rows(self) -> int:
        return self.slots.n

    @property
    def device(self) -> torch.device:
        return self.aim.backbone.device

    @torch.no_grad()
    def join(self, prompts: list[dict[str, torch.Tensor]], prefix=None) -> tuple[int, torch.Tensor, int]:
        """Prefill prompts into new slots: several of identical shapes in one forward (no padding), or one after the
        positions `prefix` (a `serve.prefix.RowPrefix`) holds. Returns the first new slot (the others follow it),
        their next-token logits (prompts, vocab) in float32, and how many positions came from the prefix."""
        inputs = (
            prompts[0] if len(prompts) == 1 else {k: torch.cat([p[k] for p in prompts]) for k in prompts[0]}
        )
        count, length = inputs["input_ids"].shape
        positions = torch.cat([self._prompt_positions(p) for p in prompts], dim=-2)  # (k, T) or (3, k, T)
        first = self.slots.open_rows(count, length)
        try:  # a prompt that cannot be read (its prefix copy or its forward) leaves its slots as they were
            past = 0 if prefix is None else self._copy_prefix(prefix, prompts, first, length)
            self.slots.prefill(first, count, length - past, past)
            model_inputs = {
                k: (v[:, past:] if is_per_token(inputs, k) and k not in _FROM_START else v)
                for k, v in inputs.items()
                if k != "labels"
            }
            if "inputs_embeds" in model_inputs:  # most families refuse ids with embeddings: as `generate`'s
                model_inputs.pop("input_ids")
            model_inputs["position_ids"] = positions[..., past:]
            model_inputs["attention_mask"] = inputs["attention_mask"]
            logits = self._forward(model_inputs)[:, -1].float()
        except BaseException:
            for slot in reversed(range(first, first + count)):
                self.leave(slot)
            raise
        for row in range(count):
            self._positions.append(positions[..., row : row + 1, -1:] + 1)
            self._extras.append(
                {
                    k: inputs[k][row : row + 1, -1:] if fill is None else inputs[k].new_full((1, 1), fill)
                    for k, fill in _EXTENDED.items()
                    if k in inputs
                }
            )
        return first, logits, past

    def fork(self, slot: int) -> int:
        """A new slot holding a copy of `slot`'s row (another choice of the same prompt)."""
        new = self.slots.copy_row(slot)
        self._positions.append(self._positions[slot].clone())
        self._extras.append(dict(self._extras[slot]))
        return new

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decoding step of every active row, `tokens` (rows,) their last tokens; next logits (rows, vocab)."""
        slots = self.slots
        slots.decode()
        positions = torch.cat(self._positions, dim=-2)  # (rows, 1) or (3, rows, 1)
        inputs: dict[str, Any] = {
            "input_ids": tokens.view(-1, 1).to(self.device),
            "attention_mask": slots.attention_mask(self.device),
            "position_ids": positions,
        }
        zero = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        for key in {key for extra in self._extras for key in extra}:  # a row without one (no image) gets 0
            inputs[key] = torch.cat([extra.get(key, zero) for extra in self._extras])
        logits = self._forward(inputs)[:, -1].float()
        slots.advance()
        self._positions = [p + 1 for p in self._positions]
        return logits

    def leave(self, slot: int) -> int:
        """Free `slot`; the row that was in the last slot moves into it: returns that row's old slot."""
        moved = self.slots.remove(slot)
        for state in (self._positions, self._extras):
            if len(state) > self.slots.n:  # a row that failed in `join` had no state yet
                state[slot] = state[moved]
                state.pop()
        return moved

    # -- internals ------------------------------------------------------------------------------------------------

    def _forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.aim.model(**inputs, cache=self.slots, use_cache=True, logits_to_keep=1).logits

    def _prompt_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positions of one unpadded prompt: 0 .. T-1, or the family's M-RoPE positions (3, 1, T)."""
        if self.aim.backbone.rope_index is not None:
            return self.aim.backbone.positions(inputs)
        return torch.arange(inputs["input_ids"].shape[1], device=self.device)[None]

    def _copy_prefix(self, prefix, prompts: list[dict], first: int, length: int) -> int:
        """Copy the positions `prefix` (a `RowPrefix`) holds for the prompts into their slots; how many: the fewest
        any of them shares (0 when one shares none; then the prompts are read whole)."""
        states = [prefix.states_for(p) for p in prompts]
        if any(s is None for s in states):
            return 0
        cached = min(held for _, _, held in states)
        end = self.slots.end - length + cached
        for row, (keys, values, held) in enumerate(states):
            drop = held - cached  # a layer's states end at `held` (a sliding layer's hold only the last ones)
            keys = [k[:, :, : k.shape[2] - drop] for k in keys]
            values = [v[:, :, : v.shape[2] - drop] for v in values]
            self.slots.write_prefix(first + row, keys, values, end)
        return cached
