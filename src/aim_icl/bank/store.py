"""The bank file: one SQLite database (WAL mode), one row per demonstration, one transaction per written batch.

A process killed at any point (SIGKILL included) leaves every committed batch whole and nothing of the batch it was
writing: SQLite's transactions give that, no hand-written journal. Tensors are raw bytes with dtype and shape
columns (no pickle), so a row can be checked and read without trusting the file.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aim_icl.bank.fingerprint import fingerprint_mismatch
from aim_icl.core.demo import DemoStates
from aim_icl.core.dtypes import STORED_DTYPES, dtype_name, torch_dtype
from aim_icl.errors import AIMError

FORMAT_VERSION = 1
# each tensor is stored as three columns: <name> (raw bytes), <name>_dtype, <name>_shape (JSON list)
TENSORS = ("token_ids", "hidden", "image_emb", "text_emb")
COLUMNS = ("key", "text", "metadata", *(f"{t}{s}" for t in TENSORS for s in ("", "_dtype", "_shape")))
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demos (key TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL, "
    + ", ".join(f"{t} BLOB, {t}_dtype TEXT, {t}_shape TEXT" for t in TENSORS)
    + ")",
)


@dataclass
class Row:
    """One stored demonstration: its states (content key included) and the vectors selection compares; on the CPU."""

    states: DemoStates  # hidden (n, hidden) in the bank's dtype, token_ids (n,) int64, text, metadata, key
    image_emb: torch.Tensor | None = None  # (embed,) float32: pooled vision-tower features
    text_emb: torch.Tensor | None = None  # (embed,) float32: mean input embedding of the text tokens

    @property
    def key(self) -> str:
        return self.states.key


class BankStore:
    """SQLite storage of rows plus the backbone fingerprint they were computed with."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any] | None = None):
        """Open (or, given a fingerprint, create) the bank at `path`.

        With a fingerprint, a bank bound to another backbone is refused; without one the bank must exist.
        """
        self.path = Path(path)
        if fingerprint is None and not self.path.is_file():
            raise AIMError(f"no bank at {self.path}; build one with `aim-icl bank build`")
        self.conn = _connect(self.path)
        self._init_schema()
        self.fingerprint = self._bind(fingerprint)

    # -- reading ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM demos").fetchone()[0]

    def version(self) -> int:
        """A number that changes whenever another connection (another process) commits to this bank."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def keys(self) -> list[str]:
        """All keys in sorted order: the pool order selection uses, the same whatever the build order."""
        return [k for (k,) in self.conn.execute("SELECT key FROM demos ORDER BY key")]

    def existing(self, keys: Iterable[str]) -> set[str]:
        keys, found = list(keys), set()
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            sql = f"SELECT key FROM demos WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(k for (k,) in self.conn.execute(sql, chunk))
        return found

    def get(self, key: str) -> Row | None:
        cursor = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM demos WHERE key = ?", (key,))
        record = cursor.fetchone()
        return None if record is None else _decode(record)

    def rows(self, limit: int | None = None) -> Iterator[Row]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM demos ORDER BY key"
        yield from (
            _decode(r) for r in self.conn.execute(sql + ("" if limit is None else f" LIMIT {int(limit)}"))
        )

    def embeddings(self, name: str) -> tuple[list[str], torch.Tensor | None]:
        """Keys (sorted) and their `image_emb` or `text_emb` rows, (N, embed) float32; missing rows are zero."""
        if name not in ("image_emb", "text_emb"):
            raise ValueError(name)
        sql = f"SELECT key, {name}, {name}_dtype, {name}_shape FROM demos ORDER BY key"
        keys, vectors = [], []
        for key, *packed in self.conn.execute(sql):
            keys.append(key)
            vectors.append(_unpack(key, *packed))
        known = [v for v in vectors if v is not None]
        if not known:
            return keys, None
        zero = torch.zeros_like(known[0])
        return keys, torch.stack([zero if v is None else v.float() for v in vectors])

    def summary(self) -> dict[str, Any]:
        """Counts and dtypes for `aim-icl bank info`."""
        count, tokens, with_image = self.conn.execute(
            "SELECT COUNT(*), SUM(LENGTH(token_ids) / 8), COUNT(image_emb) FROM demos"
        ).fetchone()
        dtypes = [d for (d,) in self.conn.execute("SELECT DISTINCT hidden_dtype FROM demos ORDER BY 1")]
        meta = dict(self.conn.execute("SELECT name, value FROM meta"))
        return {
            "demos": count,
            "text_tokens": tokens or 0,
            "with_image": with_image,
            "hidden_dtypes": dtypes,
            "created": meta.get("created"),
            "format_version": int(meta.get("format_version", FORMAT_VERSION)),
        }

    # -- writing ---------------------------------------------------------------------------------------------

    def insert(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction; keys already stored are kept as they are. Returns rows written."""
        records = [_encode(row) for row in rows]
        with self._transaction():
            before = self.conn.total_changes
            self.conn.executemany(insert_sql(), records)
            return self.conn.total_changes - before

    def merge(self, other: str | Path) -> int:
        """Copy every row of the bank at `other` that this bank lacks, in one transaction. Returns rows added."""
        with BankStore(other) as source:
            problem = fingerprint_mismatch(self.fingerprint, source.fingerprint)
        if problem:
            raise AIMError(f"cannot merge {other}: it was built with another backbone ({problem})")
        columns = ", ".join(COLUMNS)
        self.conn.execute("ATTACH DATABASE ? AS source", (str(other),))
        try:
            with self._transaction():
                before = self.conn.total_changes
                self.conn.execute(
                    f"INSERT OR IGNORE INTO demos ({columns}) SELECT {columns} FROM source.demos"
                )
                return self.conn.total_changes - before
        finally:
            self.conn.execute("DETACH DATABASE source")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> BankStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self.conn)

    def _init_schema(self) -> None:
        tables = {t for (t,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise AIMError(f"{self.path} is an SQLite database but not an aim-icl bank; pick another path")
        if {"meta", "demos"} <= tables:
            return
        with self._transaction():
            for statement in _SCHEMA:
                self.conn.execute(statement)

    def _bind(self, fingerprint: dict[str, Any] | None) -> dict[str, Any]:
        """The stored fingerprint; a new bank stores `fingerprint`, an existing one must match it."""
        if fingerprint is not None and not self._has_fingerprint():
            meta = {
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "format_version": str(FORMAT_VERSION),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            with self._transaction():  # first writer wins; later ones compare against it
                self.conn.executemany("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", meta.items())
        meta = dict(self.conn.execute("SELECT name, value FROM meta"))
        if "fingerprint" not in meta:
            raise AIMError(f"{self.path} holds no backbone fingerprint; it is not a finished aim-icl bank")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise AIMError(
                f"{self.path} was written by a newer aim-icl (format {meta['format_version']}); upgrade"
            )
        stored = json.loads(meta["fingerprint"])
        problem = None if fingerprint is None else fingerprint_mismatch(stored, fingerprint)
        if problem:
            raise AIMError(
                f"bank {self.path} was built with another backbone ({problem}); open it with the model it was "
                "built with, or use a new bank file"
            )
        return stored

    def _has_fingerprint(self) -> bool:
        return self.conn.execute("SELECT 1 FROM meta WHERE name = 'fingerprint'").fetchone() is not None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # some errors already rolled it back
            self.conn.execute("ROLLBACK")


def insert_sql() -> str:
    """Insert one row (`_encode`'s record); a key already stored is kept as it is."""
    return f"INSERT OR IGNORE INTO demos ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def _connect(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(  # explicit transactions only
            path, timeout=60, isolation_level=None, check_same_thread=check_same_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; a crash leaves no torn rows
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe against process kills
    except sqlite3.DatabaseError as err:
        raise AIMError(f"cannot open bank {path}: {err}; is it an aim-icl bank file?") from None
    return conn


def _encode(row: Row) -> tuple:
    states = row.states
    tensors = (states.token_ids, states.hidden, row.image_emb, row.text_emb)  # in TENSORS order
    packed = [_pack(t) for t in tensors]  # token_ids: int64, as `summary` counts them
    try:
        metadata = json.dumps(states.metadata, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise AIMError(f"metadata of demo {states.text[:40]!r} is not JSON-serialisable: {err}") from None
    return (states.key, states.text, metadata, *(value for triple in packed for value in triple))


def _decode(record: tuple) -> Row:
    key, text, metadata = record[:3]
    token_ids, hidden, image_emb, text_emb = (
        _unpack(key, *record[3 + 3 * i : 6 + 3 * i]) for i in range(len(TENSORS))
    )
    states = DemoStates(hidden, token_ids, text, json.loads(metadata), key)
    return Row(states, image_emb, text_emb)


def _pack(tensor: torch.Tensor | None) -> tuple[bytes | None, str | None, str | None]:
    if tensor is None:
        return None, None, None
    tensor = tensor.detach().cpu().contiguous()
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()  # via uint8: numpy has no bfloat16
    return raw, dtype_name(tensor.dtype), json.dumps(list(tensor.shape))


def _unpack(key: str, raw: bytes | None, dtype: str | None, shape: str | None) -> torch.Tensor | None:
    if raw is None:
        return None
    dims = json.loads(shape)
    stored = torch_dtype(dtype, STORED_DTYPES) if dtype in STORED_DTYPES else None
    if stored is None or len(raw) != math.prod(dims) * stored.itemsize:
        raise AIMError(
            f"bank row {key[:12]} is corrupt ({dtype}, shape {dims}, {len(raw)} bytes); rebuild it"
        )
    data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
    return data.view(stored).reshape(dims)
