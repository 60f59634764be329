"""Named tasks stored in a bank file: a task's definition and the demo rows it names, in one transaction.

A served task is a definition (mode, strategy, k, template, the content keys of its demos; `icl` demos with their
images) over demos the bank holds. `TaskTable.save` writes the demo rows a new task brings and the task's row in one
`BEGIN IMMEDIATE` transaction, as the bank writes its batches: a process killed at any point (SIGKILL included)
leaves the task whole with its demos, or not at all. Several processes may open one file (server replicas): each
write holds SQLite's lock, and `changed()` tells a reader that another one committed since it last looked.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aim_icl.bank.store import Row, _connect, _encode, _Transaction, insert_sql
from aim_icl.errors import AIMError

_SCHEMA = "CREATE TABLE IF NOT EXISTS tasks (name TEXT PRIMARY KEY, definition TEXT NOT NULL, created TEXT NOT NULL)"


class TaskExists(AIMError):
    """A task of that name is stored already."""


class TaskTable:
    """The `tasks` table of the bank file at `path` (which must exist: a task's demos live in it).

    Its connection may be used from any thread, one call at a time (a lock guards it).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise AIMError(f"no bank at {self.path} to store tasks in")
        self._lock = threading.Lock()
        self.conn = _connect(self.path, check_same_thread=False)
        with self._lock, _Transaction(self.conn):
            self.conn.execute(_SCHEMA)
        self._seen = self._version()

    def all(self) -> dict[str, dict[str, Any]]:
        """Every stored task: name -> definition, in name order."""
        with self._lock:
            self._seen = self._version()
            rows = self.conn.execute("SELECT name, definition FROM tasks ORDER BY name").fetchall()
        return {name: json.loads(definition) for name, definition in rows}

    def changed(self) -> bool:
        """Whether another connection committed to the file since `all()` last read it."""
        with self._lock:
            return self._version() != self._seen

    def save(self, name: str, definition: dict[str, Any], rows: Sequence[Row] = ()) -> None:
        """Store a new task with the demo rows it brings (rows already stored are kept); TaskExists if taken."""
        records = [_encode(row) for row in rows]
        try:
            with self._lock, _Transaction(self.conn):
                self.conn.executemany(insert_sql(), records)
                self.conn.execute(
                    "INSERT INTO tasks (name, definition, created) VALUES (?, ?, ?)",
                    (name, json.dumps(definition, sort_keys=True), time.strftime("%Y-%m-%d %H:%M:%S")),
                )
        except sqlite3.IntegrityError:
            raise TaskExists(f"task {name!r} already exists; pick another name") from None

    def delete(self, name: str) -> bool:
        """Remove a task (its demos stay in the bank); whether it was stored."""
        with self._lock, _Transaction(self.conn):
            return self.conn.execute("DELETE FROM tasks WHERE name = ?", (name,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]
