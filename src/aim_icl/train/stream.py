"""The stream of training samples one process sees, with a position that a resumed run restarts from exactly.

Each epoch reads the data files in an order shuffled by (seed, epoch), each file's records in order. A record
belongs to process `(file index + record index) % world_size` (the same in every epoch, so per-process caches
stay warm); other processes pass over it without parsing it. A record's samples depend only on (seed, epoch, file,
record), never on where the run started, so fast-forwarding to a saved `Position` sees exactly the same samples.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aim_icl.core.demo import Demo, Query
from aim_icl.errors import AIMError
from aim_icl.train.documents import Document, SkipItem, Skips
from aim_icl.train.images import open_image
from aim_icl.train.readers import CorpusReader, ReaderOptions
from aim_icl.train.samples import SampleRules, TextBudget, document_samples

logger = logging.getLogger(__name__)


@dataclass
class Position:
    """The next sample to take: sample `sample` of record `record` of the `file`-th file in `epoch`'s order."""

    epoch: int = 0
    file: int = 0
    record: int = 0
    sample: int = 0


class SampleStream:
    """Endless samples for process `rank` of `world`, cycling epochs; `position` and `skips` are its state."""

    def __init__(
        self,
        files: list[str],
        reader: CorpusReader,
        options: ReaderOptions,
        rules: SampleRules,
        budget: TextBudget | Callable[[str], str],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.files, self.reader, self.options, self.rules, self.budget = files, reader, options, rules, budget
        self.seed, self.rank, self.world = seed, rank, world
        self.position = Position()
        self.skips = Skips()
        self.documents = 0  # distinct documents this process drew samples from (later epochs repeat them)
        self.first_skip: str | None = None  # "file:record reason: detail" of the first item skipped

    def check_readable(self) -> None:
        """Raise now, with counts and reasons, if the corpus gives this process no sample at all (a wrong
        --format, a forgotten --image-root). Reads up to the first sample and advances the stream: call it on a
        throwaway one (with the `whole_text` budget it needs no tokenizer, so no model)."""
        next(iter(self))

    def __iter__(self) -> Iterator[tuple[Query, Position]]:
        """(sample, position after it); starts at `self.position`."""
        start = self.position
        for epoch in itertools.count(start.epoch):
            produced = 0
            order = self.epoch_order(epoch)
            for f in range(start.file if epoch == start.epoch else 0, len(order)):
                resume = start.record if (epoch, f) == (start.epoch, start.file) else 0
                for record, samples in self._file_samples(epoch, order[f], resume):
                    first = (
                        start.sample if (epoch, f, record) == (start.epoch, start.file, start.record) else 0
                    )
                    for j in range(first, len(samples)):
                        produced += 1
                        if epoch == 0 and j == 0:  # a document counts once: at its first sample, first epoch
                            self.documents += 1
                        yield samples[j], Position(epoch, f, record, j + 1)
            whole_epoch = epoch > start.epoch or start == Position(epoch)
            if not produced and whole_epoch:
                raise self.unreadable("no training sample", self.skips)

    def epoch_order(self, epoch: int) -> list[int]:
        """Indices into `files`, in the order this epoch reads them."""
        order = list(range(len(self.files)))
        if self.rules.shuffle_files:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def documents_of(self, epoch: int = 0, rank_only: bool = True) -> Iterator[Document]:
        """Parsed documents in stream order (e.g. to fit the projector's copy map on the first few).

        What they skip is not counted in `skips`: training reads the same documents again. A corpus without a
        single readable pair is an error giving the counts and reasons.
        """
        skips, pairs = Skips(), 0
        for file_index in self.epoch_order(epoch):
            for record, raw in self._records(file_index, 0, rank_only, skips):
                doc = self._document(file_index, record, raw, skips)
                if doc is not None:
                    pairs += len(doc.pairs)
                    yield doc
        if not pairs:
            raise self.unreadable("no readable image-text pair", skips)

    def unreadable(self, what: str, skips: Skips) -> AIMError:
        """The error for a corpus that gives nothing: what was skipped, why, the first example, what to check."""
        root = self.options.image_root or "not given: relative image paths start at the current directory"
        first = f"; first: {self.first_skip}" if self.first_skip else ""
        reader = getattr(self.reader, "name", type(self.reader).__name__)
        return AIMError(
            f"{what} in the corpus (process {self.rank}: {skips.summary()}{first}); check --format {reader}, "
            f"--image-root ({root}) and that documents hold more than {self.rules.min_shots} pair(s)"
        )

    def _file_samples(self, epoch: int, file_index: int, first: int) -> Iterator[tuple[int, list[Query]]]:
        for record, raw in self._records(file_index, first, True, self.skips):
            doc = self._document(file_index, record, raw, self.skips)
            if doc is None:
                continue
            rng = random.Random(f"{self.seed}/{epoch}/{file_index}/{record}")
            samples = document_samples(doc, rng, self.rules)
            if samples:
                yield record, samples
            else:
                self._skip(self.skips, SkipItem("too few pairs", f"{len(doc.pairs)} readable"), doc.where)

    def _records(
        self, file_index: int, first: int, rank_only: bool, skips: Skips
    ) -> Iterator[tuple[int, object]]:
        """(record index, raw record) of one file from `first` on; a file that breaks is counted, not fatal."""
        path = self.files[file_index]
        try:
            for record, raw in enumerate(self.reader.records(path, skips)):
                if record >= first and (not rank_only or (file_index + record) % self.world == self.rank):
                    yield record, raw
        except (OSError, EOFError, ValueError) as err:  # unreadable, truncated or corrupt file
            skips["bad file"] += 1
            logger.warning("skipping the rest of %s: %s", path, err)

    def _document(self, file_index: int, record: int, raw, skips: Skips) -> Document | None:
        where = f"{self.files[file_index]}:{record}"
        try:
            raw_pairs = self.reader.parse(raw, self.options, skips)
        except SkipItem as skip:
            self._skip(skips, skip, where)
            return None
        pairs = []
        for image, text in raw_pairs:
            text = self.budget(text)
            if not text:
                self._skip(skips, SkipItem("empty text"), where)
                continue
            try:
                pairs.append(Demo(open_image(image, self.options.image_root), text))
            except SkipItem as skip:
                self._skip(skips, skip, where)
        return Document(where, pairs)

    def _skip(self, skips: Skips, skip: SkipItem, where: str) -> None:
        skips[skip.reason] += 1
        if self.first_skip is None:  # the first example, for the error when nothing is readable at all
            self.first_skip = f"{where} {skip}"


def whole_text(text: str) -> str:
    """A text budget that keeps every token (whitespace collapsed, as `TextBudget` does)."""
    return " ".join(text.split())
