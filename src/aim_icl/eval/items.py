"""What a task's data is made of: `Item` (one example) and `DataPaths` (where a task's files are).

The bottom of the evaluation package: loaders (`loaders.py`, `hf.py`) produce items, tasks (`task.py`) hold them;
this module imports none of them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from aim_icl.core.demo import load_image
from aim_icl.errors import AIMError


@dataclass
class Item:
    """One example: its image, the fields its prompt template reads, and its reference answers."""

    id: str
    image: Any  # path, PIL image, bytes, or a zero-argument callable returning one (lazily read rows)
    fields: Mapping[str, str] = field(default_factory=dict)  # e.g. {"question": "what colour is it?"}
    answers: tuple[str, ...] = ()  # human answers, reference captions, or the one label
    support: tuple[Item, ...] = ()  # the query's own demonstrations, in order (selection "support")
    candidates: tuple[str, ...] = ()  # the query's own closed answer set (overrides the task's)

    def load_image(self) -> Image.Image | None:
        image = self.image() if callable(self.image) else self.image
        return None if image is None else load_image(image)

    @property
    def demo_answer(self) -> str:
        """The answer a demonstration shows: the most common reference (the first among equals)."""
        if not self.answers:
            raise AIMError(f"item {self.id!r} has no answer, so it cannot serve as a demonstration")
        counts = Counter(self.answers)
        return max(self.answers, key=lambda a: counts[a])  # max keeps the first of equal counts


@dataclass
class DataPaths:
    """Where a task's files are: a data directory, an image root (default: the data directory), file overrides.

    `files` maps a loader's file names (e.g. `val_questions`) to paths, absolute or relative to `data_dir`.
    """

    data_dir: Path | None = None
    image_root: Path | None = None
    files: Mapping[str, str] = field(default_factory=dict)

    def file(self, name: str, *defaults: str) -> Path:
        """The file called `name`: the override if given, else the first default that exists."""
        base = Path(self.data_dir or ".")
        candidates = [self.files[name]] if name in self.files else list(defaults)
        paths = [base / c for c in candidates]
        for path in paths:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in paths)
        raise AIMError(f"{name} file not found (tried {tried}); pass --data-dir or --file {name}=PATH")

    def images(self, *fallbacks: Path) -> list[Path]:
        """Directories to look for relative image paths in: the image root if given, else the fallbacks."""
        if self.image_root is not None:
            return [Path(self.image_root)]
        return list(fallbacks) or [Path(self.data_dir or ".")]


Loader = Callable[[DataPaths, str], list[Item]]  # (paths, split) -> the split's items


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AIMError(f"{path} is not valid JSON ({err}); is the download complete?") from None
