"""A bank file written by one process, layered over a shared bank it only reads: how server replicas share a bank.

Every replica of `aim-icl serve --replicas N` opens the shared bank read-only and writes the demos it reads (from
chat turns and task uploads) to its own shard file, `<bank>.replica-<id>`. No file ever has two writers, so this
holds on any number of nodes and on network filesystems, where SQLite's locking cannot be trusted; a replica killed
mid-write loses at most its own uncommitted transaction (SQLite rolls it back), never the bank the others read.
Shards are merged into the bank by content key (`INSERT OR IGNORE`: a demo two replicas both read is stored once)
when the server starts and stops, or by hand with `aim-icl bank merge`. A replica holds an advisory lock on
`<shard>.lock` while it lives (the kernel drops it when the process dies, SIGKILL included), so a merge never
takes a shard that is still being written.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from aim_icl.bank.fingerprint import fingerprint_mismatch
from aim_icl.bank.store import BankStore, Row
from aim_icl.errors import AIMError

SHARD_INFIX = ".replica-"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")


class LayeredStore(BankStore):
    """This process's own bank file (read and written) over a shared bank (read only): reads see both.

    A key stored in both is read from the shared bank; rows the shared bank already holds are not written again.
    `summary`, `merge` and `path` are about the own file.
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], shared: str | Path):
        super().__init__(path, fingerprint)
        self.shared = BankStore(shared)
        self.shared.conn.execute("PRAGMA query_only = ON")  # SQLite itself refuses writes through it
        problem = fingerprint_mismatch(self.fingerprint, self.shared.fingerprint)
        if problem:
            self.close()
            raise AIMError(f"shared bank {shared} was built with another backbone ({problem})")

    def __len__(self) -> int:
        return len(self.keys())

    def version(self) -> tuple[int, int]:  # type: ignore[override]
        return super().version(), self.shared.version()

    def keys(self) -> list[str]:
        return sorted(set(self.shared.keys()).union(super().keys()))

    def existing(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        return self.shared.existing(keys) | super().existing(keys)

    def get(self, key: str) -> Row | None:
        return self.shared.get(key) or super().get(key)

    def rows(self, limit: int | None = None) -> Iterator[Row]:
        merged = heapq.merge(self.shared.rows(), super().rows(), key=lambda r: r.key)  # both in key order
        unique = (next(group) for _, group in itertools.groupby(merged, key=lambda r: r.key))
        yield from itertools.islice(unique, limit)

    def embeddings(self, name: str) -> tuple[list[str], torch.Tensor | None]:
        found: dict[str, torch.Tensor | None] = {}
        for keys, vectors in (super().embeddings(name), self.shared.embeddings(name)):  # shared last: it wins
            found.update((k, None if vectors is None else vectors[i]) for i, k in enumerate(keys))
        keys = sorted(found)
        known = [v for v in found.values() if v is not None]
        if not known:
            return keys, None
        zero = torch.zeros_like(known[0])
        return keys, torch.stack([zero if found[k] is None else found[k] for k in keys])

    def insert(self, rows: Sequence[Row]) -> int:
        in_shared = self.shared.existing(r.key for r in rows)
        return super().insert([r for r in rows if r.key not in in_shared])

    def close(self) -> None:
        if hasattr(self, "shared"):
            self.shared.close()
        super().close()


def shard_path(bank: str | Path, owner: str) -> Path:
    """The shard file that the process named `owner` (e.g. a Ray Serve replica id) writes for `bank`."""
    bank = Path(bank)
    return bank.with_name(f"{bank.name}{SHARD_INFIX}{owner}")


def claim_shard(shard: str | Path) -> IO:
    """Lock `shard` for this process's lifetime (keep the returned file open); a merge leaves it alone meanwhile."""
    handle = open(f"{shard}.lock", "a+")  # noqa: SIM115 -- held open on purpose: the lock lives as long as it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AIMError(f"bank shard {shard} is in use by another process") from None
    return handle


def shards_of(bank: str | Path) -> list[Path]:
    bank = Path(bank)
    found = bank.parent.glob(f"{bank.name}{SHARD_INFIX}*")
    return sorted(p for p in found if not p.name.endswith(_SQLITE_SIDE_FILES))


def merge_replica_shards(bank: str | Path) -> int:
    """Merge every shard of `bank` whose writer is gone into the bank, then remove it; returns demos added.

    Shards still locked by a live process are skipped. The bank is created with the first shard's backbone
    fingerprint when it does not exist yet.
    """
    bank, added = Path(bank), 0
    for shard in shards_of(bank):
        try:
            lock = claim_shard(shard)
        except AIMError:
            continue  # its replica is alive and may still write to it
        with lock:
            if not _bound(shard):  # its replica died before storing anything, even the fingerprint
                _remove(shard)
                continue
            fingerprint = None
            if not bank.is_file():
                with BankStore(shard) as first:
                    fingerprint = first.fingerprint
            with BankStore(bank, fingerprint) as store:
                added += store.merge(shard)
            _remove(shard)  # only after its rows are committed in the bank
    return added


def _bound(shard: Path) -> bool:
    """Whether the shard got as far as its backbone fingerprint (a replica stores it before any row)."""
    conn = sqlite3.connect(shard)  # the caller holds the shard's lock: no one else has it open
    try:
        return conn.execute("SELECT 1 FROM meta WHERE name = 'fingerprint'").fetchone() is not None
    except sqlite3.DatabaseError:  # no meta table yet, or not even an SQLite header
        return False
    finally:
        conn.close()


def _remove(shard: Path) -> None:
    for suffix in ("", *_SQLITE_SIDE_FILES):
        Path(f"{shard}{suffix}").unlink(missing_ok=True)
