"""A replica's metrics copied into Ray's metrics, so Prometheus sees every replica and their sum.

Behind Ray Serve's proxy, `GET /metrics` is answered by whichever replica the proxy picks: right for looking at
one replica, wrong for a scraper, whose counters would jump between replicas. Ray exports metrics from every node
(`ray start --metrics-export-port=PORT`) tagged with `application`, `deployment` and `replica`. Each replica copies
every sample of its own registry there every few seconds: the aim_* series are kept per replica, and
`sum by (application)` gives the application's. Ray prefixes the names (`ray_aim_requests_total`); every sample
(counter totals, histogram buckets, sums and counts) becomes a gauge holding its current value, which `rate()` and
`histogram_quantile()` read as usual.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

INTERVAL_S = 5.0


class MetricsMirror:
    """Copies a `prometheus_client` registry's samples into gauges made by `make_gauge(name, help, tag_keys)`."""

    def __init__(self, registry, make_gauge: Callable):
        self.registry, self.make_gauge = registry, make_gauge
        self.gauges: dict[tuple[str, tuple[str, ...]], object] = {}

    def copy(self) -> int:
        """Copy every sample now; returns how many were copied."""
        copied = 0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation timestamps, not measurements
                    continue
                keys = tuple(sorted(sample.labels))
                gauge = self.gauges.get((sample.name, keys))
                if gauge is None:
                    gauge = self.make_gauge(sample.name, family.documentation, keys)
                    self.gauges[(sample.name, keys)] = gauge
                gauge.set(sample.value, tags=dict(sample.labels))
                copied += 1
        return copied

    def start(self, interval_s: float = INTERVAL_S) -> threading.Event:
        """Copy every `interval_s` seconds on a daemon thread until the returned event is set."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.copy()
                except Exception:  # a metrics hiccup must never take the replica down
                    logger.exception("copying metrics to Ray failed")

        threading.Thread(target=loop, name="aim-metrics-mirror", daemon=True).start()
        return stop


def ray_gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    """A Ray Serve gauge: Ray adds the application, deployment and replica tags."""
    from ray.serve.metrics import Gauge

    return Gauge(name, description=description or name, tag_keys=tag_keys)
