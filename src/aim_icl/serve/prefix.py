"""A task's fixed demos as a cached prompt prefix that joining rows copy into their KV slot.

`RowPrefix` is `core.prefix_cache.PrefixCache` (the demo prefix computed once, exactness checked per query, rebuilt
when a query shares less) handing out its cached keys and values instead of calling `generate`: the engine copies
them into the row's slot and prefills only the query's own positions, so task queries join the running batch like
any other row.
"""

from __future__ import annotations

import torch

from aim_icl.core.prefix_cache import PrefixCache


class RowPrefix(PrefixCache):
    def states_for(
        self, inputs: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int] | None:
        """For one query's full inputs: per layer the cached keys and values `(1, heads, P, dim)` of its leading
        positions, and P; None when nothing is shared (then the whole prompt is read)."""
        inputs = dict(inputs)
        if self.aim.backbone.rope_index is not None:  # the prefix is read with the query's own positions
            inputs["position_ids"] = self.aim.backbone.positions(inputs)
        shared = self._shared_length(inputs)
        if self._prefix is None or shared < self.length:
            self._build(inputs, shared)
        if self._cache is None:
            return None
        layers = self._cache.layers
        return [layer.keys for layer in layers], [layer.values for layer in layers], self.length
