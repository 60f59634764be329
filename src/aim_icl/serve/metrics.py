"""Server metrics through `prometheus_client`, in a registry per service (several apps may share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Requests, errors and latency by route; tokens by mode; bank hits; rows per decoding step and queue waits."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "aim_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
        )
        self.errors = Counter(
            "aim_errors", "HTTP responses with status 4xx or 5xx", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "aim_request_duration_seconds", "request latency by route", ["route"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "aim_prompt_tokens", "prompt tokens fed to the model, by mode", ["mode"], registry=registry
        )
        self.completion_tokens = Counter("aim_completion_tokens", "tokens generated", registry=registry)
        self.bank_hits = Counter("aim_bank_hits", "demos found in the bank", registry=registry)
        self.bank_misses = Counter("aim_bank_misses", "demos read and added to the bank", registry=registry)
        self.batch_rows = Histogram(
            "aim_batch_size", "rows per decoding step (a request asking n choices is n rows)", buckets=BATCH_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "aim_queue_wait_seconds", "time a request waited to join the generating rows", buckets=WAIT_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue_waiting = Gauge(
            "aim_queue_waiting", "requests waiting for the model worker", registry=registry
        )

    def watch_queue(self, waiting: Callable[[], int]) -> None:
        """Read the queue length at each scrape."""
        self.queue_waiting.set_function(waiting)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_answer(self, mode: str, prompt_tokens: int, completion_tokens: int, hits: int, misses: int):
        self.prompt_tokens.labels(mode).inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.bank_hits.inc(hits)
        self.bank_misses.inc(misses)

    def observe_step(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def observe_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
