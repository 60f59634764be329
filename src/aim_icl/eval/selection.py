"""Which pool demos each query gets: the fixed demo pool, and the pluggable selections of `run_eval`
(`SELECTIONS`: `random`, `similarity`, `support`: each query's own demonstrations).

A selection builds, for one pool, a `QuerySelector`: a pure function of (query, k, seed), so a query's demos never
depend on which process evaluates it or on what ran before, and a sharded or resumed run selects exactly what a
single uninterrupted run selects. Selections are nested: a query's k demos are among its k + m demos under the same
seed (`random`, `support`: the first k; `similarity`: the k most similar, which come last, next to the query).
How the bank ranks its demos for `similarity` is `aim_icl.bank.select.SELECTORS`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from aim_icl.errors import AIMError
from aim_icl.eval.items import Item
from aim_icl.registry import Registry

if TYPE_CHECKING:  # a selection runs no model: importing it stays free of torch
    from aim_icl.eval.demos import PoolBank

QuerySelector = Callable[[Item, int, int], list[int]]  # (query, k, seed) -> indices into the pool
SELECTIONS: Registry[Callable[..., QuerySelector]] = Registry("demo selection")


def draw_pool(train: list[Item], size: int, seed: int) -> list[Item]:
    """A fixed-size demo pool: a seeded sample of the train split, in split order, shared by every trial and mode."""
    if size < 1:
        raise AIMError(f"--pool-size must be at least 1, got {size}")
    if len(train) <= size:
        return list(train)
    picked = np.sort(np.random.default_rng(seed).choice(len(train), size, replace=False))
    return [train[int(i)] for i in picked]


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@SELECTIONS.register("random")
def random_selection(pool: list[Item], **_) -> QuerySelector:
    """Uniform demos from the pool, seeded per (trial seed, query id), never the query itself."""

    def select(query: Item, k: int, seed: int) -> list[int]:
        order = np.random.default_rng([seed, stable_hash(query.id)]).permutation(len(pool))
        picked = [int(i) for i in order if pool[i].id != query.id][:k]
        if len(picked) < k:
            raise AIMError(f"{k} shots need {k} pool demos besides the query, but the pool has {len(pool)}")
        return picked

    return select


@SELECTIONS.register("similarity")
def similarity_selection(pool: list[Item], bank: PoolBank | None = None, **_) -> QuerySelector:
    """The pool demos whose images are nearest the query's (the bank's `similarity`), most similar last.

    Deterministic: every trial gets the same demos.
    """
    if bank is None:
        raise AIMError("--selection similarity needs --bank PATH (a bank file; created if missing)")
    index = {key: i for i, key in enumerate(bank.keys)}
    outside = set(bank.bank.keys()) - set(index)  # demos of the bank file that are not in this pool
    own: dict[str, set[str]] = {}
    for item, key in zip(pool, bank.keys):
        own.setdefault(item.id, set()).add(key)

    def select(query: Item, k: int, seed: int) -> list[int]:
        exclude = outside | own.get(query.id, set())
        picked = bank.bank.select(query.load_image(), k, strategy="similarity", seed=seed, exclude=exclude)
        return [index[demo.key] for demo in picked]

    return select


def support_pool(queries: list[Item], max_shots: int) -> list[Item]:
    """Every query's own demonstrations (`Item.support`) in one pool, so each is read once per run."""
    pool = [demo for query in queries for demo in query.support]
    short = next((q for q in queries if len(q.support) < max_shots), None)
    if short is not None:
        raise AIMError(
            f"{max_shots} shots need {max_shots} demos per query, but item {short.id!r} brings "
            f"{len(short.support)}; use fewer shots or another --selection"
        )
    ids = [demo.id for demo in pool]
    if len(set(ids)) != len(ids):
        raise AIMError("support demos need ids unique across the task (e.g. '<query id>/<n>')")
    return pool


@SELECTIONS.register("support")
def support_selection(pool: list[Item], **_) -> QuerySelector:
    """The query's own demonstrations, the first k in their given order (every trial the same)."""
    index = {item.id: i for i, item in enumerate(pool)}

    def select(query: Item, k: int, seed: int) -> list[int]:
        return [index[demo.id] for demo in query.support[:k]]

    return select
