"""The bounded queue, timeouts, body limit, bind rules and the flags made from ServerConfig, in process (no port, no
model load from disk)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading

import httpx
import pytest
from conftest import tiny_aim
from test_serve_http import bomb_url

from aim_icl.cli import build_parser, main
from aim_icl.commands import serve
from aim_icl.commands.serve import server_config
from aim_icl.errors import AIMError
from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.engine import Engine, QueueFull
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.service import ModelService

QUERY = {"messages": [{"role": "user", "content": "what is it?"}], "max_tokens": 2}


def _block(engine: Engine, release: threading.Event):
    """Occupy the model's thread until `release` is set; returns once the blocking call is running."""
    started = threading.Event()
    future = engine.submit(lambda *_: started.set() or release.wait())
    assert started.wait(30)
    return future


def test_the_engine_refuses_past_its_queue_and_skips_cancelled_calls():
    service = ModelService(tiny_aim("llava"), config=ServerConfig(queue_size=1))
    engine, release = Engine(service, service.config), threading.Event()
    running = _block(engine, release)
    waiting = engine.submit(lambda: "never")
    with pytest.raises(QueueFull):
        engine.submit(lambda: "refused")
    assert waiting.cancel()  # its client gave up while it waited
    release.set()
    assert running.result(5) is True
    assert engine.submit(lambda: "served").result(5) == "served"
    engine.close()


def test_full_queue_gives_503_with_retry_after_and_slow_requests_504():
    service = ModelService(
        tiny_aim("llava"), config=ServerConfig(queue_size=1, timeout_s=0.5, max_body_bytes=2000)
    )
    app = create_app(service)
    release = threading.Event()
    _block(app.state.worker, release)  # the model is busy

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = await client.post(
                "/v1/chat/completions", json=QUERY
            )  # waits, then times out: its place frees
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=QUERY))  # takes the place
            while app.state.worker.waiting < 1:
                await asyncio.sleep(0.01)
            busy = await client.post("/v1/chat/completions", json=QUERY)  # the queue is full
            big = await client.post("/v1/chat/completions", content=b"x" * 3000)
            assert (await waiting).status_code == 504
            release.set()
            await asyncio.sleep(0.2)
            served = await client.post("/v1/chat/completions", json=QUERY)
            return slow, busy, big, served

    slow, busy, big, served = asyncio.run(scenario())
    assert slow.status_code == 504 and "longer than" in slow.json()["error"]["message"]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert big.status_code == 413 and "over the limit" in big.json()["error"]["message"]
    assert served.status_code == 200, served.text
    # once the queue drains, a request is answered in full, as if nothing had happened
    prompt = service.aim.build_inputs(None, "what is it?", [], "aim")["input_ids"]
    answer = service.aim.generate(None, "what is it?", [], "aim", max_new_tokens=2)
    assert served.json()["usage"]["prompt_tokens"] == prompt.shape[1]
    assert served.json()["choices"][0]["message"]["content"] == answer
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


def test_every_server_setting_is_a_flag_with_the_dataclass_default(monkeypatch, capsys):
    monkeypatch.delenv("AIM_ICL_API_KEY", raising=False)
    parse = build_parser("serve").parse_args
    assert server_config(parse(["serve"])) == ServerConfig()  # one place holds the defaults
    flags = ["--queue-size", "3", "--max-batch-size", "2", "--scheduler", "static", "--timeout", "1.5"]
    flags += ["--max-image-aspect", "4", "--max-header-bytes", "999", "--allow-dir", "."]
    config = server_config(parse(["serve", *flags]))
    assert (config.queue_size, config.max_batch_size, config.scheduler, config.timeout_s) == (
        3,
        2,
        "static",
        1.5,
    )
    assert (config.images.max_aspect, config.max_header_bytes, len(config.images.allowed_dirs)) == (
        4.0,
        999,
        1,
    )
    verb = argparse.ArgumentParser()
    serve.add_arguments(verb)
    help_text = "".join(verb.format_help().split())  # argparse wraps lines, at hyphens too
    for field in dataclasses.fields(ServerConfig):  # each setting's help, as its field states it
        if field.name != "images":
            assert "".join(field.metadata["help"].split()) in help_text, field.name
    for flags, message in [
        (["--queue-size", "0"], "must be a positive number"),
        (["--scheduler", "x"], "invalid"),
    ]:
        with pytest.raises(SystemExit):
            parse(["serve", *flags])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "size", [(10000, 10000), (20000, 10000)]
)  # Pillow warns past 89M pixels, refuses past 179M
def test_a_decompression_bomb_is_refused_as_too_many_pixels(size):
    with pytest.raises(RequestError, match="over the limit of 16777216 pixels") as refused:
        fetch_image(bomb_url(*size), ImagePolicy(max_pixels=4096 * 4096))
    assert refused.value.kind == "too_large"  # 413, not "not a readable image" (400)
