"""Prefix KV caching: when one fixed demo set serves many queries, the prompt up to the query image is computed once.

The prompt is `[template prefix] demo_1 sep ... demo_k sep [query image] query [suffix]`: everything before the query
image is the same for every query. Its key/value cache is computed once and each query runs only its own tokens.

How (transformers 5.x): `generate` gets the query's FULL-length inputs (`input_ids`, `inputs_embeds`,
`pixel_values`, per-token type ids) plus a copy of the prefix cache, and skips what is cached; image merging and
M-RoPE work as in the uncached path (suffix-only `inputs_embeds` would break image merging). Outputs equal
`aim.generate`'s.

Exactness is checked per query, never assumed: a query reuses only the leading positions where its every per-token
input (ids, fused vectors, masks, type ids) equals the cached prefix's. Tokenizers may merge the last separator with
the image marker's text (Gemma 3's "\\n" + "\\n\\n" is one token), so the cached length is learned from the first
query, and shrinks (the cache is rebuilt) if a later query shares less.

What it saves: the prefix's positions per query. Once a cache offset exists, transformers attends with an
explicit mask instead of SDPA's causal fast path, and on CPU that kernel is 2-3x slower; so the cached calls run
the language model with `core.prefix_attention`, which builds no mask and attends without one, exactly.
`benchmarks/efficiency.py` measures the result.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch

from aim_icl.core.aim import AIM, DemoLike
from aim_icl.core.modes import MODE_TABLE, MODES, mode_of
from aim_icl.core.prefix_attention import use_prefix_attention
from aim_icl.core.prompt import is_per_token, query_parts
from aim_icl.errors import AIMError

logger = logging.getLogger(__name__)

CACHED_MODES = tuple(name for name in MODES if MODE_TABLE[name].prefix_cached)


class PrefixCache:
    """Serve many queries with one fixed demo list: the shared prompt prefix is computed once, on the first query.

    `mode`: `aim` (demos are read and projected once, here: retraining the projector later does not change this
    cache), `text` or `zero`. `icl` puts the demo images in the prefix and is not served. Families whose processor
    puts every image first (PaliGemma) are refused: the query image precedes the demos, and PaliGemma's prefix-LM
    mask lets the prefix attend to the query, so nothing can be shared exactly.
    """

    def __init__(self, aim: AIM, demos: Iterable[DemoLike] = (), mode: str = "aim", batch_size: int = 8):
        if mode not in CACHED_MODES:
            raise AIMError(f"a prefix cache serves modes {', '.join(CACHED_MODES)}, not {mode!r}")
        if aim.backbone.family.images_first:
            raise AIMError(
                f"{aim.backbone.signature.model_type} puts the query image before the demos, so no prompt prefix "
                "is shared between queries; use aim.generate without a prefix cache"
            )
        demos = list(demos)
        if not mode_of(mode).demos and demos:
            raise AIMError("mode 'zero' takes no demos; pass demos=[] or use mode 'text' or 'aim'")
        self.aim = aim
        self.mode = mode
        use_prefix_attention(aim.model)  # queries after the cached prefix attend without an explicit mask
        if mode_of(mode).fused:  # read and projected once, here
            with torch.no_grad():
                demos = aim.fuse(demos, batch_size=batch_size)
        self.demos = demos
        # the cached prefix: its per-token inputs, (1, P) or (1, P, embed), and the model's KV cache over them
        self._prefix: dict[str, torch.Tensor] | None = None
        self._cache = None
        self._expected = self._expected_ids()  # (1, P0)
        self._warned = False

    @property
    def length(self) -> int:
        """Prompt positions served from the cache (0 until the first query)."""
        return 0 if self._prefix is None else self._prefix["input_ids"].shape[1]

    @property
    def expected_length(self) -> int:
        """Positions the demo prefix takes encoded on its own: what the cache will hold for a query that shares it."""
        return self._expected.shape[1]

    @torch.no_grad()
    def generate(self, image, text: str, max_new_tokens: int = 32, **kwargs) -> str:
        """Answer one query after the cached demos: same result as `aim.generate(image, text, demos, mode)`."""
        return self.generate_from(self.build_inputs(image, text), max_new_tokens, **kwargs)

    def build_inputs(self, image, text: str) -> dict[str, torch.Tensor]:
        """The query's full inputs after the cached demos (what `generate_from` takes)."""
        return self.aim.build_inputs(image, text, self.demos, self.mode)

    @torch.no_grad()
    def generate_from(self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 32, **kwargs) -> str:
        """Answer from `build_inputs`' output, computing only the positions past the cached prefix."""
        inputs = dict(inputs)
        # explicit M-RoPE positions: `generate` would reuse state (rope deltas) left by an earlier call
        if self.aim.backbone.rope_index is not None:
            inputs["position_ids"] = self.aim.backbone.positions(inputs)  # (3, 1, T)
        shared = self._shared_length(inputs)
        if self._prefix is None or shared < self.length:
            self._build(inputs, shared)
        if self._cache is None:
            return self.aim.generate_from(inputs, max_new_tokens, **kwargs)
        kwargs["cache"] = copy.deepcopy(self._cache)  # generate extends it in place
        return self.aim.generate_from(inputs, max_new_tokens, **kwargs)

    # -- internals ----------------------------------------------------------------------------------------------

    def _expected_ids(self) -> torch.Tensor:
        """Token ids of the shared prefix encoded on its own, (1, P0): where a query's demo part should end."""
        parts = [self.aim.encoder.demo_parts(d, self.mode) for d in self.demos]
        prefix = query_parts(self.aim.template, None, "", parts)[:-2]  # without query text and suffix
        return self.aim.encoder.encode([prefix]).inputs["input_ids"].to(self.aim.backbone.device)

    def _shared_length(self, inputs: dict[str, torch.Tensor]) -> int:
        """Leading positions where every per-token input of this query equals the cached (or expected) prefix."""
        reference = self._prefix if self._prefix is not None else {"input_ids": self._expected}
        n = min(reference["input_ids"].shape[1], inputs["input_ids"].shape[1] - 1)  # leave generate 1 token
        same = torch.ones(n, dtype=torch.bool, device=inputs["input_ids"].device)
        for key, cached in reference.items():
            same &= (inputs[key][:, :n] == cached[:, :n]).reshape(n, -1).all(-1)  # batch of 1
        differs = (~same).nonzero()
        return int(differs[0]) if len(differs) else n

    def _build(self, inputs: dict[str, torch.Tensor], length: int) -> None:
        """Run the model over the first `length` positions of `inputs` and keep their KV cache."""
        if length < self._expected.shape[1] - 1 and not self._warned:  # one token may merge with the image's
            self._warned = True
            logger.warning(
                "this query shares only %d of the %d demo-prefix tokens: the prefix cache saves little",
                length,
                self._expected.shape[1],
            )
        per_token = [k for k in inputs if is_per_token(inputs, k)]  # inputs_embeds included
        self._prefix = {k: inputs[k][:, :length].clone() for k in per_token}
        self._cache = self._forward(inputs, per_token, length) if length else None

    def _forward(self, inputs: dict[str, torch.Tensor], per_token: list[str], length: int):
        """The KV cache of the first `length` positions, read as embeddings with the query's own positions."""
        prefix = {k: inputs[k][:, :length] for k in per_token if k != "input_ids"}
        embeds = inputs.get("inputs_embeds")  # (1, T, embed) when fused vectors are in the prompt
        prefix["inputs_embeds"] = (
            embeds[:, :length]
            if embeds is not None
            else self.aim.backbone.embed(inputs["input_ids"][:, :length])
        )
        positions = inputs.get("position_ids")  # (3, 1, T) for M-RoPE; else plain 0..length-1
        device = self.aim.backbone.device
        prefix["position_ids"] = (
            positions[..., :length] if positions is not None else torch.arange(length, device=device)[None]
        )
        return self.aim.model(**prefix, use_cache=True, logits_to_keep=1).cache


__all__ = ["CACHED_MODES", "PrefixCache"]
