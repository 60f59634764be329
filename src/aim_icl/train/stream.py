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
from collections.abc import Iterator
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
        budget: TextBudget,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.files, self.reader, self.options, self.rules, self.budget = files, reader, options, rules, budget
        self.seed, self.rank, self.world = seed, rank, world
        self.position = Position()
        self.skips = Skips()
        self.documents = 0  # documents this process parsed into at least one sample

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
                        yield samples[j], Position(epoch, f, record, j + 1)
            whole_epoch = epoch > start.epoch or start == Position(epoch)
            if not produced and whole_epoch:
                raise AIMError(
                    f"the corpus gives process {self.rank} no training sample ({self.skips.summary()}); "
                    f"check --format, --image-root and that documents hold more than {self.rules.min_shots} pairs"
                )

    def epoch_order(self, epoch: int) -> list[int]:
        """Indices into `files`, in the order this epoch reads them."""
        order = list(range(len(self.files)))
        if self.rules.shuffle_files:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def documents_of(self, epoch: int = 0, rank_only: bool = True) -> Iterator[Document]:
        """Parsed documents in stream order (e.g. to fit the projector's copy map on the first few).

        What they skip is not counted in `skips`: training reads the same documents again.
        """
        skips = Skips()
        for file_index in self.epoch_order(epoch):
            for record, raw in self._records(file_index, 0, rank_only, skips):
                doc = self._document(file_index, record, raw, skips)
                if doc is not None:
                    yield doc

    def _file_samples(self, epoch: int, file_index: int, first: int) -> Iterator[tuple[int, list[Query]]]:
        for record, raw in self._records(file_index, first, True, self.skips):
            doc = self._document(file_index, record, raw, self.skips)
            if doc is None:
                continue
            rng = random.Random(f"{self.seed}/{epoch}/{file_index}/{record}")
            samples = document_samples(doc, rng, self.rules)
            if samples:
                self.documents += 1
                yield record, samples
            else:
                self.skips["too few pairs"] += 1

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
            skips[skip.reason] += 1
            return None
        pairs = []
        for image, text in raw_pairs:
            text = self.budget(text)
            if not text:
                skips["empty text"] += 1
                continue
            try:
                pairs.append(Demo(open_image(image, self.options.image_root), text))
            except SkipItem as skip:
                skips[skip.reason] += 1
        return Document(where, pairs)
