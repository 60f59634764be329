"""One lmms-eval task's demonstrations: the pool of fewshot documents, each query's picks, the demos' states.

The pool and the selections are the evaluation harness's (`aim_icl.eval.selection`), so a query gets the demos
`aim-icl eval` gives it: `random` (seeded per query, never the query itself) from a seeded draw of `pool_size`
documents; `similarity` / `text_similarity` (the bank ranks the whole pool by image or text embedding, most
similar last); `support` (the first k of the fewshot documents the query's `support_ids` column names: the world
tasks, where each query brings its own demonstrations). In `aim` mode each demo is read through the model once per
run, and once ever with a bank file: `read` counts the demos read through the model (`source.cache.reused` the
others).
"""

from __future__ import annotations

from collections.abc import Hashable

from aim_icl.bank.cache import MEMORY, StatesCache
from aim_icl.core.demo import Demo, DemoStates, load_image
from aim_icl.core.prompt import laid_out
from aim_icl.errors import AIMError
from aim_icl.eval.demos import PoolBank, open_pool_bank
from aim_icl.eval.items import Item
from aim_icl.eval.selection import SELECTIONS, QuerySelector, draw_pool
from aim_icl.integrations.lmms_eval.docs import SUPPORT_COLUMN, TaskView
from aim_icl.integrations.lmms_eval.options import BANK_SELECTIONS, Options

DEMO_BATCH = 256  # demos read per forward pass at least (the harness's `runner.DEMO_BATCH`)


class TaskDemos:
    """The demos of one task's queries from `query_split`; `picks(query, k)` are indices into `pool`."""

    def __init__(
        self, view: TaskView, aim, options: Options, query_split: str, batch_size: int, workers: int, state
    ):
        self.view, self.query_split = view, query_split
        self.split = view.fewshot_split(options.fewshot_split, query_split)
        columns = view.columns(query_split)
        self.selection = options.selection or ("support" if SUPPORT_COLUMN in columns else "random")
        if self.selection == "support":  # every document: the queries' own demos are found by id
            indices = list(range(view.size(self.split)))
            self._where = {doc_id: i for i, doc_id in enumerate(view.ids(self.split))}
        else:
            indices = draw_pool(list(range(view.size(self.split))), options.pool_size, options.seed)
        self.pool = [view.item(self.split, i) for i in indices]
        bank, self.pool_read = _open_bank(options, aim, view, self.pool, self.selection, state)
        self.bank = bank
        self.source = PoolStates(aim, view, self.pool, bank, max(DEMO_BATCH, batch_size), workers)
        self.select: QuerySelector = _selector(self.selection, self.pool, bank)

    def query(self, index: int) -> Item:
        """Document `index` of the query split as an item (with its own demos for `support`)."""
        support = ()
        if self.selection == "support":
            ids = self.view.support_ids(self.query_split, index)
            missing = [i for i in ids if i not in self._where]
            if missing:
                raise AIMError(
                    f"task {self.view.name}: document {index} names demo {missing[0]!r}, which split "
                    f"{self.split} does not hold"
                )
            support = tuple(self.pool[self._where[i]] for i in ids)
        return self.view.item(self.query_split, index, support)

    def picks(self, query: Item, k: int, seed: int) -> list[int]:
        if k == 0:
            return []
        if self.selection == "support" and len(query.support) < k:
            raise AIMError(
                f"task {self.view.name}: {k} shots need {k} demos per query, but document {query.id} brings "
                f"{len(query.support)}; use num_fewshot={len(query.support)} or fewer"
            )
        return self.select(query, k, seed)

    @property
    def read(self) -> int:
        """Demos read through the model: picked and missing from the cache, or stored to rank the pool."""
        return self.pool_read + self.source.cache.read

    def close(self) -> None:
        if self.bank is not None:
            self.bank.bank.close()


class PoolStates:
    """Pool demos as the prompt lays them out (`layouts`) and their states (`states`), read through the model
    where a `StatesCache` (in memory, or the bank's) lacks them. Bank keys are made when a demo is first picked:
    only the demos a run uses are read, hashed or stored."""

    def __init__(
        self, aim, view: TaskView, pool: list[Item], bank: PoolBank | None, batch_size: int, workers: int
    ):
        self.view, self.pool = view, pool
        store = MEMORY if bank is None else bank.bank
        self.cache = StatesCache(aim, store, batch_size=batch_size, remember=True, workers=workers)
        self._bank = None if bank is None else bank.bank
        self._keys: dict[int, Hashable] = dict(enumerate(bank.keys)) if bank is not None else {}
        self._index: dict[Hashable, int] = {key: i for i, key in self._keys.items()}

    def layouts(self, indices: list[int], mode: str) -> list[Demo]:
        """The demos' texts, and in `icl` mode their images, loaded (a prepared batch is sent to a worker)."""
        demos = laid_out([self.demo(i) for i in indices], mode)
        return [Demo(load_image(d.image), d.text) if d.image is not None else d for d in demos]

    def states(self, indices: list[int]) -> list[DemoStates]:
        return self.cache.states_by_key(
            [self.key(i) for i in indices], lambda key: self.demo(self._index[key])
        )

    def demo(self, index: int) -> Demo:
        return self.view.harness_task.demo(self.pool[index])

    def key(self, index: int) -> Hashable:
        if index not in self._keys:
            demo = self.demo(index)
            key = index if self._bank is None else self._bank.key(Demo(load_image(demo.image), demo.text))
            self._keys[index], self._index[key] = key, index
        return self._keys[index]


def _open_bank(options: Options, aim, view: TaskView, pool: list[Item], selection: str, state):
    """The bank file (None without one) and how many pool demos were read to fill it: every one for the
    selections that rank the pool by what the bank stores, none otherwise (keys are made as demos are picked)."""
    if options.bank is None:
        return None, 0
    from aim_icl.bank import DemoBank

    bank = DemoBank(options.bank, aim)
    if selection not in BANK_SELECTIONS:
        return PoolBank(bank, []), 0
    stored = len(bank)
    bank.close()
    pool_bank = open_pool_bank(options.bank, aim, view.harness_task, pool, state)
    return pool_bank, len(pool_bank.bank) - stored


def _selector(selection: str, pool: list[Item], bank: PoolBank | None) -> QuerySelector:
    if selection == "text_similarity":
        return text_similarity_selection(pool, bank)
    return SELECTIONS.get(selection)(pool=pool, bank=bank)


def text_similarity_selection(pool: list[Item], bank: PoolBank) -> QuerySelector:
    """The pool demos whose texts are nearest the query's text (the bank's `text_similarity`), most similar last;
    never the query itself (when the pool is the queries' own split)."""
    index = {key: i for i, key in enumerate(bank.keys)}
    outside = set(bank.bank.keys()) - set(index)  # demos of the bank file that are not in this pool
    own = {item.id: key for item, key in zip(pool, bank.keys)}

    def select(query: Item, k: int, seed: int) -> list[int]:
        exclude = outside | ({own[query.id]} if query.id in own else set())
        text = query.fields["text"]
        picked = bank.bank.select(None, k, "text_similarity", seed, exclude, query_text=text)
        return [index[demo.key] for demo in picked]

    return select
