"""Server counters and their Prometheus text exposition (format 0.0.4), without a client library."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Thread-safe counters: requests and errors by route and status, latency histogram, tokens, bank hits."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (route, status) -> count
        self.latency: dict[str, list[int]] = {}  # route -> count per bucket (+Inf last)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.prompt_tokens: dict[str, int] = defaultdict(int)  # mode -> tokens fed to the model
        self.completion_tokens = 0
        self.bank_hits = 0
        self.bank_misses = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, str(status))] += 1
            buckets = self.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
            buckets[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)] += 1
            self.latency_sum[route] += seconds

    def observe_answer(self, mode: str, prompt_tokens: int, completion_tokens: int, hits: int, misses: int):
        with self._lock:
            self.prompt_tokens[mode] += prompt_tokens
            self.completion_tokens += completion_tokens
            self.bank_hits += hits
            self.bank_misses += misses

    def render(self, queue_waiting: int) -> str:
        """The Prometheus text format of every counter."""
        with self._lock:
            lines = _counter("aim_requests_total", "HTTP requests by route and status", self._by_status())
            errors = {k: v for k, v in self._by_status().items() if k[1][1] >= "4"}
            lines += _counter("aim_errors_total", "HTTP responses with status 4xx or 5xx", errors)
            lines += self._histogram()
            tokens = {(("mode", m),): n for m, n in self.prompt_tokens.items()}
            lines += _counter("aim_prompt_tokens_total", "prompt tokens fed to the model, by mode", tokens)
            lines += _counter("aim_completion_tokens_total", "tokens generated", {(): self.completion_tokens})
            lines += _counter("aim_bank_hits_total", "demos found in the bank", {(): self.bank_hits})
            lines += _counter(
                "aim_bank_misses_total", "demos read and added to the bank", {(): self.bank_misses}
            )
        lines += [
            "# HELP aim_queue_waiting requests waiting for the model worker",
            "# TYPE aim_queue_waiting gauge",
        ]
        lines.append(f"aim_queue_waiting {queue_waiting}")
        return "\n".join(lines) + "\n"

    def _by_status(self) -> dict[tuple, int]:
        return {(("route", r), ("status", s)): n for (r, s), n in sorted(self.requests.items())}

    def _histogram(self) -> list[str]:
        name = "aim_request_duration_seconds"
        lines = [f"# HELP {name} request latency by route", f"# TYPE {name} histogram"]
        for route, buckets in sorted(self.latency.items()):
            total = 0
            for bound, count in zip([*LATENCY_BUCKETS, "+Inf"], buckets):
                total += count
                lines.append(f'{name}_bucket{{route="{route}",le="{bound}"}} {total}')
            lines.append(f'{name}_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
            lines.append(f'{name}_count{{route="{route}"}} {total}')
        return lines


def _counter(name: str, help_text: str, values: dict[tuple, int]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for labels, value in values.items():
        rendered = ",".join(f'{k}="{v}"' for k, v in labels)
        lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")
    return lines
