"""Building a bank from a JSONL demo file: streamed, batched, resumable, optionally split over processes.

A demo file has one JSON object per line: `{"image": path, "text": ..., ...}`; image paths are relative to the
file's folder, and every other field (id, label, source, ...) is kept as the demo's metadata. A line whose image is
missing or unreadable, or that is not such an object, is skipped and reported; the rest are built.

Rerunning a build skips what is stored, so a build killed at any point completes on rerun. Under
`accelerate launch`, process r of n reads lines r, r+n, ... into its own shard file; the main process then merges
every shard into the bank (one transaction each) and removes it. Shards left by a killed run are merged first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aim_icl.bank.bank import DemoBank
from aim_icl.bank.store import BankStore
from aim_icl.core.demo import Demo, load_image
from aim_icl.core.placement import process_state
from aim_icl.errors import AIMError

logger = logging.getLogger(__name__)


@dataclass
class BuildReport:
    read: int = 0  # valid demos in this process's share of the file
    added: int = 0  # rows written (by this process)
    merged: int = 0  # rows merged in from shard files
    skipped: list[str] = field(default_factory=list)  # "line N: why" for each skipped line


def read_demo_file(path: str | Path, skipped: list[str], shard: tuple[int, int] = (0, 1)) -> Iterator[Demo]:
    """Demos of the JSONL file with their images loaded; lines r, r+n, ... for `shard=(r, n)`.

    Bad lines are appended to `skipped` as "line N: why" and logged, never raised.
    """
    path = Path(path)
    rank, world = shard
    try:
        lines = path.open(encoding="utf-8")
    except OSError as err:
        raise AIMError(f"cannot read demo file {path}: {err.strerror}") from None
    with lines:
        for number, line in enumerate(lines, start=1):
            if (number - 1) % world != rank or not line.strip():
                continue
            try:
                yield _parse(line, path.parent)
            except AIMError as err:
                skipped.append(f"line {number}: {err}")
                logger.warning("skipped %s line %d: %s", path.name, number, err)


def _parse(line: str, root: Path) -> Demo:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise AIMError("not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
        raise AIMError('expected an object with a non-empty "text"')
    if not isinstance(record.get("image"), str):
        raise AIMError('expected an "image" path')
    metadata = {k: v for k, v in record.items() if k not in ("image", "text")}
    return Demo(load_image(root / record["image"]), record["text"], metadata)


def count_lines(path: str | Path) -> int:
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def build_bank(
    aim,
    demo_file: str | Path,
    bank_path: str | Path,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> BuildReport:
    """Add every demo of `demo_file` to the bank at `bank_path`, splitting the work over accelerate processes.

    Returns the report summed over processes (complete on the main process).
    """
    from accelerate.utils import gather_object

    state = process_state(aim.backbone.device.type)
    rank, world = state.process_index, state.num_processes
    report = BuildReport()
    # bind the bank to the backbone, then take in what an earlier (killed) sharded run left
    if state.is_main_process:
        DemoBank(bank_path, aim, dtype).close()
        report.merged = merge_shards(bank_path)
    state.wait_for_everyone()
    main = DemoBank(bank_path, aim, dtype)
    bank = main if world == 1 else DemoBank(shard_path(bank_path, rank, world), aim, dtype)
    try:
        demos = read_demo_file(demo_file, report.skipped, (rank, world))
        total = -(-count_lines(demo_file) // world)
        with tqdm(total=total, desc=f"bank {rank}" if world > 1 else "bank", disable=not progress) as bar:
            for batch in _batches(demos, batch_size):
                keys = [bank.key(d) for d in batch]
                in_main = main.store.existing(keys)
                fresh = [(d, k) for d, k in zip(batch, keys) if k not in in_main]
                report.read += len(batch)
                report.added += bank.write([d for d, _ in fresh], [k for _, k in fresh], batch_size)
                bar.update(len(batch))
    finally:
        main.close()
        bank.close()
    state.wait_for_everyone()
    if world > 1:
        report = _summed(gather_object([report]))
    if state.is_main_process:
        report.merged += merge_shards(bank_path)
    return report


def shard_path(bank_path: str | Path, rank: int, world: int) -> Path:
    bank_path = Path(bank_path)
    return bank_path.with_name(f"{bank_path.name}.shard-{rank}-of-{world}")


def merge_shards(bank_path: str | Path) -> int:
    """Merge every shard file of this bank left by this or an earlier (killed) build, then remove it."""
    bank_path = Path(bank_path)
    shards = sorted(bank_path.parent.glob(f"{bank_path.name}.shard-*-of-*"))
    shards = [s for s in shards if not s.name.endswith(("-wal", "-shm"))]
    if not shards:
        return 0
    merged = 0
    with BankStore(bank_path) as store:
        for shard in shards:
            merged += store.merge(shard)
            remove_bank_file(shard)  # only after its rows are committed in the bank
    return merged


def remove_bank_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _summed(reports: list[BuildReport]) -> BuildReport:
    return BuildReport(
        read=sum(r.read for r in reports),
        added=sum(r.added for r in reports),
        merged=sum(r.merged for r in reports),
        skipped=sorted((s for r in reports for s in r.skipped), key=lambda s: int(s.split()[1].rstrip(":"))),
    )


def _batches(demos: Iterator[Demo], size: int) -> Iterator[list[Demo]]:
    batch: list[Demo] = []
    for demo in demos:
        batch.append(demo)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
