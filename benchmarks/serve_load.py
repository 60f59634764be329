"""Load test of `aim-icl serve` on 127.0.0.1: answers/s and latency by concurrency, for each max batch size.

For every `--batch-sizes` value one server is started (default: the embedded world model, no download) and warmed
up. Each concurrency level (1, 4, 16 and 32 clients) then drives the servers in alternation, `--rounds` times, so
a burst of load elsewhere on a shared machine hits every server alike. Each client sends the same few-shot chat
(world scenes, `--shots` demos) in a bounded loop: `--requests` requests per round, within `--seconds` per level.
The table gives answers/s, p50/p99 latency, 503s (queue full), other 5xx, the rows per batch the worker ran (from
the server's /metrics) and the server's CPU time per answer (what an answer costs, whatever else the machine
runs); the last lines compare max batch sizes at each concurrency and give the servers' memory (RSS).

The clients run in this process and share the machine with the servers: on a 2-core machine they take part of
the CPU a server would use, so absolute rates are lower than remote clients would see; compare the ratios.

Usage: python benchmarks/serve_load.py [--batch-sizes 1 16] [--clients 1 4 16 32] [--requests 8] [--rounds 3]
       [--seconds 45]
       [--shots 2] [--max-tokens 8] [--model DIR [--projector DIR]]
       [--replicas N]   (N Ray Serve replicas of one CPU each, with one --batch-sizes value; default: the
                         single-process server)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil

QUESTION_PART = {"type": "text", "text": "caption :"}  # the world's caption prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="--max-batch-size values")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32], help="concurrency levels")
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per client and round (bounded loop)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations between the servers per level")
    parser.add_argument(
        "--seconds", type=float, default=45.0, help="time limit per concurrency level and server"
    )
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--model", help="model directory (default: the embedded world model)")
    parser.add_argument("--projector", help="projector directory for --model")
    parser.add_argument("--replicas", type=int, help="serve on Ray Serve with N replicas (1 CPU each)")
    args = parser.parse_args()
    if args.replicas and len(args.batch_sizes) > 1:
        parser.error("with --replicas give one --batch-sizes value (one Ray cluster at a time)")
    body = {"messages": few_shot(args.shots), "max_tokens": args.max_tokens}
    servers = {}  # max batch size -> (process, url); all up at once, so the compared runs sit side by side in time
    try:
        for batch_size in args.batch_sizes:
            port = free_port()
            servers[batch_size] = (
                start_server(args, port, batch_size, max(args.clients) + 1),
                f"http://127.0.0.1:{port}",
            )
        memory = {b: warm_up(process, url, body) for b, (process, url) in servers.items()}
        rows = []
        for clients in args.clients:
            runs = {b: Run() for b in servers}
            for _ in range(args.rounds):  # alternate the servers, so a burst of load elsewhere hits both
                for batch_size, (process, url) in servers.items():
                    runs[batch_size].add(
                        process, url, body, clients, args.requests, args.seconds / args.rounds
                    )
            rows += [(b, clients, run) for b, run in runs.items()]
        memory = {b: (memory[b], rss_mb(process.pid)) for b, (process, _) in servers.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(120)  # a Ray cluster takes a while to stop
    print(report(rows, memory, args))


def warm_up(server: subprocess.Popen, url: str, body: dict) -> float:
    """Wait for the server, send a few requests (first reads fill the bank, first calls allocate); its RSS then."""
    wait_healthy(url, server)
    for _ in range(3):
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
    return rss_mb(server.pid)


def few_shot(shots: int) -> list[dict]:
    """`shots` world scenes captioned in one style as example turns, then a new scene to caption."""
    from aim_icl.world.corpora import styled_caption
    from aim_icl.world.formats import CAPTION_STYLES
    from aim_icl.world.scene import sample_scene

    rng = random.Random(0)
    style = next(iter(CAPTION_STYLES.values()))

    def turn(scene) -> dict:
        buffer = io.BytesIO()
        scene.render().save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, QUESTION_PART]}

    messages = []
    for _ in range(shots):
        scene = sample_scene(rng)
        messages += [turn(scene), {"role": "assistant", "content": styled_caption(style, scene)}]
    return [*messages, turn(sample_scene(rng))]


def start_server(args, port: int, batch_size: int, queue_size: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "aim_icl.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--max-batch-size", str(batch_size), "--queue-size", str(queue_size)]
    command += ["--model", args.model] if args.model else []
    command += ["--projector", args.projector] if args.projector else []
    command += ["--replicas", str(args.replicas), "--num-cpus", "1"] if args.replicas else []
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})


@dataclass
class Run:
    """One server at one concurrency level, over its rounds: requests, wall time, batches, server CPU time."""

    results: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    batches: float = 0.0
    batch_rows: float = 0.0
    cpu_seconds: float = 0.0

    def add(self, process: subprocess.Popen, url: str, body: dict, clients: int, requests: int, limit: float):
        batches, cpu = batch_counts(url), cpu_seconds(process.pid)
        results, seconds = run_clients(url, body, clients, requests, limit)
        self.results += results
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds(process.pid) - cpu
        after = batch_counts(url)
        self.batches += after[0] - batches[0]
        self.batch_rows += after[1] - batches[1]


def run_clients(
    url: str, body: dict, clients: int, requests: int, seconds: float
) -> tuple[list[tuple[int, float]], float]:
    """(status, latency) of every request; and the wall time the clients took."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    end = time.monotonic() + seconds

    payload = json.dumps(body).encode()  # encoded once: the clients' own CPU time competes with the server's
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(requests):
                if time.monotonic() > end:
                    return
                sent = time.perf_counter()
                status = http.post("/v1/chat/completions", content=payload, headers=headers).status_code
                with lock:
                    results.append((status, time.perf_counter() - sent))
                if status == 503:
                    time.sleep(
                        0.05
                    )  # a polite client backs off (Retry-After says 1 s; shorter keeps it busy)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def batch_counts(url: str) -> tuple[float, float]:
    """(batches, rows) the server's model worker has run, from its /metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return float(values.get("aim_batch_size_count", 0)), float(values.get("aim_batch_size_sum", 0))


def report(rows, memory, args) -> str:
    header = (
        f"{'max batch':>9}  {'clients':>7}  {'answers':>7}  {'answers/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'503':>4}  {'5xx':>4}  {'rows/batch':>10}  {'cpu ms/ans':>11}"
    )
    lines = [
        f"server: {f'{args.replicas} Ray Serve replica(s)' if args.replicas else 'single process'}, "
        f"model: {args.model or 'embedded world model'}, {args.shots} shots, max_tokens {args.max_tokens}",
        header,
        "-" * len(header),
    ]
    rates = {}
    for batch_size, clients, run in rows:
        ok = sorted(t for s, t in run.results if s == 200)
        busy = sum(s == 503 for s, _ in run.results)
        errors = sum(s >= 500 and s != 503 for s, _ in run.results)
        rates[batch_size, clients] = len(ok) / run.seconds
        p50, p99 = (_quantile(ok, q) * 1000 for q in (0.5, 0.99))
        lines.append(
            f"{batch_size:>9}  {clients:>7}  {len(ok):>7}  {rates[batch_size, clients]:>9.1f}  {p50:>7.0f}  "
            f"{p99:>7.0f}  {busy:>4}  {errors:>4}  {run.batch_rows / max(run.batches, 1):>10.1f}  "
            f"{1000 * run.cpu_seconds / max(len(ok), 1):>11.1f}"
        )
    base = args.batch_sizes[0]
    for batch_size in args.batch_sizes[1:]:
        ratios = ", ".join(f"{c} clients {rates[batch_size, c] / rates[base, c]:.2f}x" for c in args.clients)
        lines.append(f"answers/s, max batch {batch_size} vs {base}: {ratios}")
    for batch_size, (before, after) in memory.items():
        lines.append(
            f"server RSS, max batch {batch_size}: {before:.0f} MB after warm-up, {after:.0f} MB at the end"
        )
    return "\n".join(lines)


def _quantile(sorted_values: list[float], q: float) -> float:
    return (
        sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
        if sorted_values
        else float("nan")
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server's processes so far: what an answer costs, whatever else runs."""
    total = 0.0
    for process in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss_mb(pid: int) -> float:
    """The server's process and its descendants (a local Ray cluster's processes are the driver's children)."""
    total = 0
    for process in _tree(pid):
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            total += process.memory_info().rss
    return total / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 300.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit("the server did not become healthy")


if __name__ == "__main__":
    main()
