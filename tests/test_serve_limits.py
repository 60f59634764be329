"""The bounded queue, timeouts, body limit and bind rules, in process (no port, no model load from disk)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from aim_icl.cli import build_parser, main
from aim_icl.commands.serve import server_config
from aim_icl.errors import AIMError
from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.service import ModelService
from aim_icl.serve.worker import ModelWorker, QueueFull
from tests.conftest import tiny_aim
from tests.test_serve_http import bomb_url

QUERY = {"messages": [{"role": "user", "content": "what is it?"}], "max_tokens": 2}


def _block(worker: ModelWorker, release: threading.Event):
    """Occupy the worker until `release` is set; returns once the blocking call is running."""
    started = threading.Event()
    future = worker.submit(lambda *_: started.set() or release.wait())
    assert started.wait(5)
    return future


def test_worker_refuses_past_its_queue_and_skips_cancelled_calls():
    worker, release = ModelWorker(max_waiting=1), threading.Event()
    running = _block(worker, release)
    waiting = worker.submit(lambda: "never")
    with pytest.raises(QueueFull):
        worker.submit(lambda: "refused")
    assert waiting.cancel()  # its client gave up while it waited
    release.set()
    assert running.result(5) is True
    assert worker.submit(lambda: "served").result(5) == "served"
    worker.close()


def test_full_queue_gives_503_with_retry_after_and_slow_requests_504():
    service = ModelService(tiny_aim("llava"))
    app = create_app(service, ServerConfig(queue_size=1, timeout_s=0.5, max_body_bytes=2000))
    release = threading.Event()
    _block(app.state.worker, release)  # the model is busy

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = await client.post("/v1/chat/completions", json=QUERY)  # waits, then times out
            busy = await client.post("/v1/chat/completions", json=QUERY)  # the queue is still full
            big = await client.post("/v1/chat/completions", content=b"x" * 3000)
            release.set()
            await asyncio.sleep(0.2)
            served = await client.post("/v1/chat/completions", json=QUERY)
            return slow, busy, big, served

    slow, busy, big, served = asyncio.run(scenario())
    assert slow.status_code == 504 and "longer than" in slow.json()["error"]["message"]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert big.status_code == 413 and "over the limit" in big.json()["error"]["message"]
    assert served.status_code == 200, served.text
    assert served.json()["usage"]["prompt_tokens"] > 0
    app.state.worker.close()


def test_non_loopback_bind_needs_an_api_key(capsys):
    args = build_parser().parse_args(["serve", "--model", "m", "--host", "0.0.0.0"])
    args.api_key = None  # whatever the environment holds
    with pytest.raises(AIMError, match="not a loopback address"):
        server_config(args)
    args.api_key = "k"
    assert server_config(args).api_key == "k"
    loopback = build_parser().parse_args(["serve", "--model", "m", "--host", "::1"])
    assert server_config(loopback).images.allowed_dirs == ()
    assert main(["serve", "--model", "m", "--allow-dir", "/no/such/dir"]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "size", [(10000, 10000), (20000, 10000)]
)  # Pillow warns past 89M pixels, refuses past 179M
def test_a_decompression_bomb_is_refused_as_too_many_pixels(size):
    with pytest.raises(RequestError, match="over the limit of 16777216 pixels") as refused:
        fetch_image(bomb_url(*size), ImagePolicy(max_pixels=4096 * 4096))
    assert refused.value.kind == "too_large"  # 413, not "not a readable image" (400)
