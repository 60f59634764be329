"""Bounded load test of `aim-icl serve` on 127.0.0.1: N concurrent clients for a fixed time.

Reports throughput, p50/p99 latency, the share of 503s (queue full), 5xx count and the server's memory (RSS) after
warm-up and at the end. Without --model a tiny LLaVA is saved to a temporary directory and served.

Usage: python benchmarks/serve_load.py [--clients 8] [--seconds 20] [--shots 2] [--queue-size 4] [--model DIR]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--model", help="model directory (default: a tiny LLaVA)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny(Path(tmp))
        port = free_port()
        server = start_server(model, port, args.queue_size)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            body = {"messages": few_shot(args.shots), "max_tokens": args.max_tokens}
            for _ in range(3):  # warm-up: first reads fill the bank, first calls allocate
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
            rss_before = rss_mb(server.pid)
            results = run_clients(url, body, args.clients, args.seconds)
            rss_after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    print(report(results, args, rss_before, rss_after))


def save_tiny(directory: Path) -> str:
    from aim_icl.testing.tiny import build_tiny

    model, processor = build_tiny("llava")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def few_shot(shots: int) -> list[dict]:
    from aim_icl.testing.tiny import tiny_image

    def part(seed: int) -> dict:
        buffer = io.BytesIO()
        tiny_image(seed).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return {"type": "image_url", "image_url": {"url": url}}

    messages = []
    for i in range(shots):
        messages += [
            {"role": "user", "content": [part(i), {"type": "text", "text": "what is it?"}]},
            {"role": "assistant", "content": f"object {i}"},
        ]
    return [*messages, {"role": "user", "content": [part(99), {"type": "text", "text": "what is it?"}]}]


def start_server(model: str, port: int, queue_size: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "aim_icl.cli", "serve", "--model", model, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--queue-size", str(queue_size)]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_clients(url: str, body: dict, clients: int, seconds: float) -> list[tuple[int, float]]:
    """(status, latency) of every request the clients sent before the time ran out."""
    results: list[tuple[int, float]] = []
    lock, end = threading.Lock(), time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < end:
                start = time.perf_counter()
                status = http.post("/v1/chat/completions", json=body).status_code
                with lock:
                    results.append((status, time.perf_counter() - start))
                if status == 503:
                    time.sleep(
                        0.05
                    )  # a polite client backs off (Retry-After says 1 s; shorter keeps it busy)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def report(results, args, rss_before: float, rss_after: float) -> str:
    ok = sorted(t for s, t in results if s == 200)
    busy = sum(s == 503 for s, _ in results)
    errors = sum(s >= 500 and s != 503 for s, _ in results)
    p = (lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000) if ok else (lambda q: float("nan"))
    rows = [
        ("clients / seconds / shots", f"{args.clients} / {args.seconds:g} / {args.shots}"),
        ("requests (200 / 503 / other 5xx)", f"{len(ok)} / {busy} / {errors}"),
        ("throughput (answers/s)", f"{len(ok) / args.seconds:.2f}"),
        ("latency p50 / p99 (ms)", f"{p(0.5):.0f} / {p(0.99):.0f}"),
        ("mean latency (ms)", f"{statistics.fmean(ok) * 1000:.0f}" if ok else "nan"),
        ("503 share", f"{busy / max(len(results), 1):.1%}"),
        ("server RSS after warm-up / end (MB)", f"{rss_before:.0f} / {rss_after:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 180.0) -> None:
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
