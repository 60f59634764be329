"""`DemoBank`: every demonstration read through the frozen backbone once, stored, and selected per query."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from aim_icl.bank.fingerprint import backbone_fingerprint, content_key
from aim_icl.bank.layered import LayeredStore
from aim_icl.bank.select import SELECTORS, VectorIndex
from aim_icl.bank.store import BankStore, Row
from aim_icl.core.demo import Demo, DemoStates, load_image
from aim_icl.core.dtypes import FLOAT_DTYPES, dtype_name
from aim_icl.core.vision import image_embeddings
from aim_icl.errors import AIMError


class DemoBank:
    """A persistent store of demonstrations as the backbone read them (pre-projector hidden states).

    `DemoBank(path, aim)` creates the bank file or opens it; a bank built with another backbone is refused.
    Hidden states are kept in `dtype` (float16 by default; bfloat16 or float32 on request) and the projector is
    applied when a prompt is built, so the bank stays valid when the projector is retrained.
    """

    def __init__(
        self, path: str | Path, aim, dtype: torch.dtype = torch.float16, over: str | Path | None = None
    ):
        """`over`: a shared bank this one layers over, read only (`bank.layered`); what is added goes to `path`."""
        if dtype_name(dtype) not in FLOAT_DTYPES:
            raise AIMError(f"bank dtype must be one of {', '.join(FLOAT_DTYPES)}, not {dtype}")
        self.aim = aim
        self.dtype = dtype
        fingerprint = backbone_fingerprint(aim)
        self.store = BankStore(path, fingerprint) if over is None else LayeredStore(path, fingerprint, over)
        self._pools: dict[str | None, tuple] = {}  # space -> (sorted keys, what its selector compares)
        self._pools_version = self.store.version()  # the pools are stale once another process commits

    @property
    def path(self) -> Path:
        return self.store.path

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.store.existing([key]))

    def keys(self) -> list[str]:
        return self.store.keys()

    def key(self, demo: Demo) -> str:
        return content_key(demo.image, demo.text, self.aim.template)

    def get(self, key: str) -> DemoStates | None:
        """The stored demo (its `key` set), ready for `aim.generate(demos=...)`; None when not stored."""
        row = self.store.get(key)
        return None if row is None else row.states

    # -- adding ----------------------------------------------------------------------------------------------

    def add(self, demos: Sequence[Demo], batch_size: int = 8, progress: bool = True) -> list[str]:
        """Read and store the demos not stored yet, one transaction per batch; returns every demo's key."""
        demos = list(demos)
        keys: list[str] = []
        with tqdm(total=len(demos), desc="bank", unit="demo", disable=not progress) as bar:
            for start in range(0, len(demos), batch_size):
                batch = [_loaded(d) for d in demos[start : start + batch_size]]
                batch_keys = [self.key(d) for d in batch]
                self.write(batch, batch_keys, batch_size)
                keys += batch_keys
                bar.update(len(batch))
        return keys

    def write(self, demos: Sequence[Demo], keys: Sequence[str], batch_size: int = 8) -> int:
        """Read the demos whose key is not stored yet and store them in one transaction; returns rows written."""
        stored = self.store.existing(keys)
        todo = {k: d for k, d in zip(keys, demos) if k not in stored}  # also drops repeats within the batch
        if not todo:
            return 0
        written = self.store.insert(self._read(list(todo.values()), list(todo), batch_size))
        self._pools.clear()
        return written

    def rows_for(self, demos: Sequence[Demo], batch_size: int = 8) -> tuple[list[str], list[Row]]:
        """Every demo's key, and the rows of those not stored yet, read but not stored: the caller stores them
        with what it writes in the same transaction (`bank.tasks.TaskTable.save`, or `insert`)."""
        demos = [_loaded(d) for d in demos]
        keys = [self.key(d) for d in demos]
        stored = self.store.existing(keys)
        todo = {k: d for k, d in zip(keys, demos) if k not in stored}  # also drops repeats
        return keys, self._read(list(todo.values()), list(todo), batch_size) if todo else []

    def insert(self, rows: Sequence[Row]) -> int:
        """Store rows `rows_for` read, in one transaction; returns rows written."""
        written = self.store.insert(rows)
        self._pools.clear()
        return written

    def states(self, demos: Sequence[Demo], batch_size: int = 8) -> list[DemoStates]:
        """The demos' stored states, reading and storing those not stored yet (what a training cache wants)."""
        keys = self.add(demos, batch_size=batch_size, progress=False)
        return [self.get(key) for key in keys]

    def _read(self, demos: list[Demo], keys: list[str], batch_size: int) -> list[Row]:
        """Everything a row holds, for demos whose images are already loaded."""
        aim = self.aim
        states = aim.encode(demos, batch_size=batch_size)
        with_image = [i for i, d in enumerate(demos) if d.image is not None]
        pooled = image_embeddings(
            aim.model, aim.encoder.processor, [demos[i].image for i in with_image], batch_size
        )
        image_embs = dict(zip(with_image, pooled))
        return [
            Row(
                DemoStates(
                    s.hidden.to("cpu", self.dtype), s.token_ids.long(), demo.text, dict(demo.metadata), key
                ),
                image_emb=image_embs.get(i),
                text_emb=self._text_embedding(s.token_ids),
            )
            for i, (key, demo, s) in enumerate(zip(keys, demos, states))
        ]

    @torch.no_grad()
    def _text_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Mean input embedding of the tokens, (embed,) float32: a bag-of-words vector from the model itself."""
        embeds = self.aim.backbone.embed(token_ids.to(self.aim.backbone.device))  # (n, embed)
        return embeds.float().mean(0).cpu()

    # -- selecting -------------------------------------------------------------------------------------------

    def select(
        self,
        query_image,
        k: int,
        strategy: str = "random",
        seed: int = 0,
        exclude: Collection[str] = (),
        query_text: str | None = None,
        most_similar_last: bool = True,
    ) -> list[DemoStates]:
        """k stored demos for this query, ready for `aim.generate(..., demos=...)` in `aim` or `text` mode.

        `strategy`: a name in `SELECTORS` (`random`, `similarity` on the image, `text_similarity` on
        `query_text`). `query_image` may also be its row of `core.vision.image_embeddings`. `exclude`: keys never to pick (e.g. the query's own demo). `seed` makes `random`
        reproducible: the pool is in key order, so the same bank content gives the same picks.
        """
        selector = SELECTORS.get(strategy)
        keys, pool = self._pool(selector.space)
        excluded = set(exclude).intersection(keys)
        if k > len(keys) - len(excluded):
            raise AIMError(
                f"cannot select {k} demos: the bank has {len(keys) - len(excluded)} to choose from"
            )
        if k <= 0:
            return []
        query = self._query_embedding(selector.space, query_image, query_text)
        # rank k + |excluded| over the whole pool and drop the excluded: no per-query copy of the pool
        ranked = selector(query, pool, k + len(excluded), np.random.default_rng(seed))
        chosen = [keys[i] for i in ranked if keys[i] not in excluded][:k]
        if most_similar_last:
            chosen.reverse()
        return [self.get(key) for key in chosen]

    def _pool(self, space: str | None) -> tuple[list[str], VectorIndex | torch.Tensor]:
        """Sorted keys and what a selector compares (an index over the space's embeddings, or (N, 0) for none).

        Cached until this bank writes or another process commits to the file.
        """
        version = self.store.version()
        if version != self._pools_version:
            self._pools.clear()
            self._pools_version = version
        if space not in self._pools:
            if space is None:
                keys = self.store.keys()
                embs = torch.zeros(len(keys), 0)
            else:
                keys, embs = self.store.embeddings(f"{space}_emb")
                if embs is None:
                    raise AIMError(f"no demo in this bank has an {space} embedding; pick another strategy")
                embs = VectorIndex(embs)
            self._pools[space] = (keys, embs)
        return self._pools[space]

    def _query_embedding(self, space: str | None, query_image, query_text: str | None) -> torch.Tensor | None:
        if space == "image":
            if query_image is None:
                raise AIMError("similarity selection needs the query image")
            if isinstance(query_image, torch.Tensor):  # already embedded, e.g. a batch of queries at once
                return query_image
            return image_embeddings(self.aim.model, self.aim.encoder.processor, [query_image])[0]
        if space == "text":
            if not query_text:
                raise AIMError("text_similarity selection needs query_text")
            return self._text_embedding(self.aim.encoder.text_ids(query_text))
        return None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> DemoBank:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _loaded(demo: Demo) -> Demo:
    """The demo with its image opened and converted once (keys and reading then share the pixels)."""
    if not isinstance(demo, Demo):
        raise AIMError(f"a bank stores Demo objects, not {type(demo).__name__}")
    image = None if demo.image is None else load_image(demo.image)
    return Demo(image, demo.text, demo.metadata)
