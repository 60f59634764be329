"""Which demonstrations a query gets: pluggable selectors `(query_emb, pool_embs, k, rng) -> indices`.

A selector ranks pool rows for one query and returns the indices of its k picks, best first; the bank then
orders them for the prompt (most similar last by default, next to the query, as RICES does). `space` says which
embeddings a selector compares: the pooled image features, the text embeddings, or none (random).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from aim_icl.registry import Registry

FAISS_MIN_POOL = 100_000  # below this exact numpy search is as fast; above it faiss (if installed) takes over


@dataclass(frozen=True)
class Selector:
    """A registered selection rule; call it like its function."""

    fn: Callable[[torch.Tensor | None, torch.Tensor | None, int, np.random.Generator], list[int]]
    space: str | None  # "image", "text" or None (the query is not used)

    def __call__(self, query_emb, pool_embs, k: int, rng: np.random.Generator) -> list[int]:
        return self.fn(query_emb, pool_embs, k, rng)


SELECTORS: Registry[Selector] = Registry("demo selector")


def random_pick(query_emb, pool_embs, k: int, rng: np.random.Generator) -> list[int]:
    """k distinct rows drawn by `rng` (seeded by the caller, so reproducible); the query is ignored."""
    return rng.choice(len(pool_embs), size=k, replace=False).tolist()


class VectorIndex:
    """Pool vectors prepared once for cosine search: unit-length rows, plus a faiss index for large pools.

    Pools of `faiss_min_pool` rows or more use faiss's exact inner-product index when faiss is installed
    (multi-threaded; the same neighbours as the numpy path, which is the default and serves every smaller pool).
    """

    def __init__(self, vectors: torch.Tensor, faiss_min_pool: int = FAISS_MIN_POOL):
        self.unit = _unit(vectors)  # (N, d)
        self.faiss = None
        if len(self.unit) >= faiss_min_pool and importlib.util.find_spec("faiss") is not None:
            import faiss

            self.faiss = faiss.IndexFlatIP(self.unit.shape[1])
            self.faiss.add(self.unit)

    def __len__(self) -> int:
        return len(self.unit)

    def search(self, query: torch.Tensor, k: int) -> list[int]:
        """The k rows most similar to `query`, most similar first (ties: lower index first on the numpy path)."""
        query = _unit(query.reshape(1, -1))  # (1, d)
        if self.faiss is not None:
            return self.faiss.search(query, k)[1][0].tolist()  # (1, k) indices, most similar first
        scores = (self.unit @ query[0]).astype(np.float64)  # (N,)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        return top[np.lexsort((top, -scores[top]))].tolist()


def nearest(query_emb, pool_embs, k: int, rng=None) -> list[int]:
    """The k pool rows of highest cosine similarity to the query, most similar first (RICES's retrieval).

    `pool_embs`: (N, d) vectors, or a `VectorIndex` over them (what the bank passes, prepared once per pool).
    """
    index = pool_embs if isinstance(pool_embs, VectorIndex) else VectorIndex(pool_embs)
    return index.search(torch.as_tensor(query_emb), k)


def _unit(vectors: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length, float32 numpy (zero rows stay zero: similarity 0 to everything)."""
    vectors = torch.as_tensor(vectors).float()
    return (vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)).numpy()


SELECTORS.register("random", Selector(random_pick, space=None))
SELECTORS.register("similarity", Selector(nearest, space="image"))
SELECTORS.register("text_similarity", Selector(nearest, space="text"))
