"""What a training run reports: a progress bar, metric lines in a JSONL log (and accelerate's trackers), a summary."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsLog:
    """Appends one JSON object per line (a resumed run appends after a `{"event": "resume"}` line)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Throughput:
    """Samples per second since the last `rate()` call."""

    def __init__(self):
        self.start, self.samples = time.perf_counter(), 0

    def add(self, samples: int) -> None:
        self.samples += samples

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.start, 1e-9)
        self.start, self.samples = now, 0
        return rate


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True
    )


@dataclass
class TrainSummary:
    steps: int
    samples: int  # training samples seen by all processes
    documents: int  # documents that gave samples
    seconds: float  # training time, summed over resumed segments
    skipped: dict[str, int] = field(default_factory=dict)
    demos_read: int = 0  # demos read through the backbone
    demos_reused: int = 0  # demos whose hidden states came from the cache
    output: str = ""

    def lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return [
            f"trained {self.steps} steps on {self.samples} samples from {self.documents} documents "
            f"in {self.seconds:.1f} s ({self.samples / max(self.seconds, 1e-9):.1f} samples/s)",
            f"skipped: {skipped}" + (f" ({reasons})" if reasons else ""),
            f"demos read through the backbone: {self.demos_read}, from the cache: {self.demos_reused}",
            f"projector saved to {self.output}",
        ]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
