"""Predictions appended as they are made, one JSON line each, one file per process; a rerun skips finished work.

`predictions.jsonl` (or `predictions.rank<r>.jsonl` under `accelerate launch`) holds one record per
(mode, shots, trial, query id); `stats*.jsonl` one record per stretch of work on a cell (wall time, peak memory).
Reading takes every process's files, so a resumed run may use another number of processes. A line cut short by
an interruption is skipped on reading and never overwritten.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aim_icl.errors import AIMError

logger = logging.getLogger(__name__)

Key = tuple[str, int, int, str]  # (mode, shots, trial, query id)


def record_key(record: dict) -> Key:
    return (record["mode"], int(record["shots"]), int(record["trial"]), str(record["id"]))


class PredictionStore:
    """Per-process append-only record files in `directory` (or in memory when `directory` is None)."""

    def __init__(self, directory: Path | None, rank: int = 0, world_size: int = 1):
        if directory is None and world_size > 1:
            raise AIMError("a sharded run needs an output directory to gather predictions in")
        self.directory = None if directory is None else Path(directory)
        self.rank = rank
        self.suffix = ".jsonl" if world_size == 1 else f".rank{rank}.jsonl"
        self._memory: dict[str, list[dict]] = {"predictions": [], "stats": []}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        # a query that failed (an unreadable image) is not done: a rerun tries it again
        self.done: set[Key] = {record_key(r) for r in self.read("predictions") if "error" not in r}

    def add(self, record: dict) -> None:
        self._append("predictions", record)
        if "error" not in record:
            self.done.add(record_key(record))

    def add_stats(self, record: dict) -> None:
        self._append("stats", {**record, "rank": self.rank})

    def read(self, kind: str) -> list[dict]:
        """Every process's records of `kind` ('predictions' or 'stats'); duplicates of a prediction keep the first
        answer (a failure counts only while nothing answered that query)."""
        if self.directory is None:
            return list(self._memory[kind])
        records = [r for path in sorted(self.directory.glob(f"{kind}*.jsonl")) for r in _read_lines(path)]
        if kind != "predictions":
            return records
        unique: dict[Key, dict] = {}
        for record in records:
            kept = unique.setdefault(record_key(record), record)
            if "error" in kept and "error" not in record:  # failed, then answered by a rerun
                unique[record_key(record)] = record
        return list(unique.values())

    def _append(self, kind: str, record: dict) -> None:
        if self.directory is None:
            self._memory[kind].append(record)
            return
        path = self.directory / f"{kind}{self.suffix}"
        with path.open("ab") as f:
            if f.tell() and not _ends_with_newline(path):
                f.write(b"\n")  # close a line an interruption cut short, so the new record stands alone
            f.write(json.dumps(record).encode("utf-8") + b"\n")
            f.flush()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _read_lines(path: Path) -> list[dict]:
    records, broken = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            broken += 1
    if broken:
        logger.warning("%s: skipped %d incomplete line(s) left by an interrupted run", path, broken)
    return records
