"""The KV cache of the rows generating together: one buffer per layer with a slot per row, rows joining and leaving
between decoding steps at the cost of the rows involved.

Each layer keeps keys and values as `(slots, kv_heads, capacity, head_dim)` buffers. Active rows are slots
`0 .. n-1`; they share a write column `end`, where every decoding step writes each row's new token, and each row's
tokens are contiguous, ending at `end` (left padding, as a left-padded `generate` batch). A decoding step reads the
window `[lo, end]`, `lo` the first column of the oldest row still generating, through a 2-D attention mask that
hides each row's padding: transformers builds the causal mask from it as for any left-padded batch.

- A row joins by prefilling its prompt straight into its free slot, columns `[end - T, end)`: nothing of the other
  rows is read or copied (only when a prompt is longer than the window's left margin are the rows moved right once,
  with room to spare). A prompt whose leading positions are already cached (`PrefixCache`) copies them in and
  prefills the rest.
- A row leaves by moving the last active slot's columns into its slot (one row's copy) and narrowing the window.
- The buffers grow by doubling (rows up to the batch bound, columns as answers grow), and dead columns left of the
  window are reclaimed when they are half the buffer: both amortised over the steps.

Against `DynamicCache` (which concatenates every layer's whole cache on every step) this writes one column per step;
against concatenating a joining row's cache into the batch's (as TGI's first router did) a join copies nothing.
Sliding-window layers keep every column too; the sliding mask transformers builds from the same sizes hides the old
ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

MIN_COLUMNS = 64


@dataclass(frozen=True)
class _Pass:
    """What the next forward pass reads and writes: slots `first .. last-1`, `new` columns after `past` ones."""

    first: int
    last: int
    new: int
    past: int
    decode: bool = False


class RowSlots(Cache):
    """KV memory of up to `max_rows` generating rows; a forward pass reads and writes it as the engine says:
    `prefill(rows, length, past)` for rows joining, `decode()` for a step of every active row."""

    def __init__(self, num_layers: int, max_rows: int):
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])
        self.max_rows = max_rows
        self.n = 0  # active rows: slots 0 .. n-1
        self.end = 0  # the column the next decoding step writes
        self.starts: list[int] = []  # each active row's first real column
        self.rows_allocated = 0
        self.columns = 0  # capacity of the buffers
        self.reserve = 0  # the longest prompt seen: where a compacted window ends at least
        self._pass: _Pass | None = None  # what the next forward reads and writes

    # -- what a forward pass reads (Cache interface) ---------------------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._current().past

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._current().past + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self._current().past

    @property
    def lo(self) -> int:
        return min(self.starts) if self.starts else self.end

    # -- passes -----------------------------------------------------------------------------------------------------

    def open_rows(self, count: int, length: int) -> int:
        """Make room for `count` new rows whose prompts take `length` columns ending at `end`; returns the first
        new slot. Moves the active rows right only when `length` does not fit left of `end`."""
        if self.n + count > self.max_rows:
            raise ValueError(f"{self.n + count} rows over the slot limit of {self.max_rows}")
        self.reserve = max(self.reserve, length)
        if self.n == 0:
            self.end = self.reserve  # room for any prompt as long as those seen, without moving anything
        elif self.end < length:  # rare: room made once for prompts as long as any seen
            self._shift(self.reserve - self.end)
        self._ensure(self.n + count, self.end + 1)
        first = self.n
        self.n += count
        self.starts += [self.end - length] * count
        return first

    def copy_row(self, slot: int) -> int:
        """A new slot with `slot`'s columns copied in (the same prompt for another choice); returns it."""
        new = self.open_rows(1, self.end - self.starts[slot])
        columns = slice(self.starts[slot], self.end)
        for layer in self.layers:
            if layer.allocated:
                layer.keys[new, :, columns] = layer.keys[slot, :, columns]
                layer.values[new, :, columns] = layer.values[slot, :, columns]
        return new

    def prefill(self, first: int, count: int, new: int, past: int = 0) -> None:
        """The next forward writes `new` columns ending at `end` for slots `first .. first+count-1`, after `past`
        columns already written there (a cached prefix); it attends to those `past + new` columns."""
        self._pass = _Pass(first, first + count, new, past)

    def write_prefix(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor], end: int) -> None:
        """Copy cached prefix states (per layer `(1, heads, P, dim)`) into `slot`, ending before column `end`
        (a sliding-window layer's shorter cache ends there too: the sliding mask never reads further back)."""
        for layer, k, v in zip(self.layers, keys, values):
            if not layer.allocated:
                layer.allocate(k, self.rows_allocated, self.columns)
            layer.keys[slot, :, end - k.shape[2] : end] = k[0]
            layer.values[slot, :, end - v.shape[2] : end] = v[0]

    def decode(self) -> None:
        """The next forward is one decoding step of every active row: it writes column `end`."""
        if self.end + 1 > self.columns:
            self._reclaim()
        self._ensure(self.n, self.end + 1)
        self._pass = _Pass(0, self.n, 1, self.end - self.lo, decode=True)

    def advance(self) -> None:
        """After a decoding step: the next one writes the following column."""
        self.end += 1
        self._pass = None

    def attention_mask(self, device) -> torch.Tensor:
        """(n, end + 1 - lo) for the next decoding step: each row's padding hidden."""
        columns = torch.arange(self.lo, self.end + 1, device=device)
        return (columns[None] >= torch.tensor(self.starts, device=device)[:, None]).long()

    def padded(self) -> bool:
        return len(set(self.starts)) > 1

    def remove(self, slot: int) -> int:
        """Free `slot`: the last active row moves into it (returns its old slot, which the caller moves too)."""
        last = self.n - 1
        if slot != last:
            columns = slice(self.starts[last], self.end)
            for layer in self.layers:
                if layer.allocated:
                    layer.keys[slot, :, columns] = layer.keys[last, :, columns]
                    layer.values[slot, :, columns] = layer.values[last, :, columns]
            self.starts[slot] = self.starts[last]
        self.starts.pop()
        self.n -= 1
        if self.n == 0:
            self.end = 0
        return last

    # -- storage ----------------------------------------------------------------------------------------------------

    def _current(self) -> _Pass:
        if self._pass is None:
            raise RuntimeError("RowSlots: call prefill() or decode() before a forward pass")
        return self._pass

    def _ensure(self, rows: int, columns: int) -> None:
        """Buffers with at least `rows` slots and `columns` columns (doubled when they grow)."""
        if rows <= self.rows_allocated and columns <= self.columns:
            return
        self.rows_allocated = min(self.max_rows, max(rows, 2 * self.rows_allocated, 1))
        self.columns = max(columns, 2 * self.columns, MIN_COLUMNS)
        for layer in self.layers:
            if layer.allocated:
                layer.grow(self.rows_allocated, self.columns, self.n, self.lo, self.end)

    def _reclaim(self) -> None:
        """When the columns left of the window are half the buffer, move the window over them."""
        by = max(self.end - self.lo, self.reserve) - self.end
        if self.lo >= self.columns // 2 and by < 0:
            self._shift(by)

    def _shift(self, by: int) -> None:
        """Move every active row's columns `by` to the right (left when negative)."""
        if by == 0:
            return
        lo, end = self.lo, self.end
        if by > 0:
            self._ensure(self.n, end + by + 1)
        for layer in self.layers:
            if layer.allocated:
                for buffer in (layer.keys, layer.values):
                    buffer[: self.n, :, lo + by : end + by] = buffer[: self.n, :, lo:end].clone()
        self.starts = [s + by for s in self.starts]
        self.end += by


class SlotLayer(CacheLayerMixin):
    """One layer's buffers; `update` writes the pass's new columns and returns the columns it attends to."""

    is_sliding = False

    def __init__(self, owner: RowSlots):
        super().__init__()
        self.owner = owner
        self.allocated = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states, self.owner.rows_allocated, self.owner.columns)

    def allocate(self, like: torch.Tensor, rows: int, columns: int) -> None:
        shape = (rows, like.shape[1], columns, like.shape[3])
        self.keys = like.new_zeros(shape)
        self.values = like.new_zeros(shape)
        self.allocated = self.is_initialized = True

    def grow(self, rows: int, columns: int, n: int, lo: int, end: int) -> None:
        keys, values = self.keys, self.values
        self.allocate(keys, rows, columns)
        self.keys[:n, :, lo:end] = keys[:n, :, lo:end]
        self.values[:n, :, lo:end] = values[:n, :, lo:end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.allocated:
            self.lazy_initialization(key_states, value_states)
        owner = self.owner
        step = owner._current()
        if step.decode:  # each active row's new token at column `end`; attend from the oldest row's first
            self.keys[: step.last, :, owner.end] = key_states[:, :, 0]
            self.values[: step.last, :, owner.end] = value_states[:, :, 0]
            window = slice(owner.lo, owner.end + 1)
        else:  # joining rows: their new columns end at `end`, after `past` columns already there
            rows, columns = slice(step.first, step.last), slice(owner.end - step.new, owner.end)
            self.keys[rows, :, columns] = key_states
            self.values[rows, :, columns] = value_states
            window = slice(owner.end - step.new - step.past, owner.end)
        return self.keys[step.first : step.last, :, window], self.values[step.first : step.last, :, window]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_max_length(self) -> int:
        return -1
