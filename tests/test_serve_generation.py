"""Serving in process: requests sharing decoding steps, per-request sampling, stop strings, streaming as generated.

The embedded world model (loaded from the package, word-level tokenizer) answers: its greedy answers are fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import threading

import httpx
import pytest

from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.chat import Conversation
from aim_icl.serve.engine import Engine
from aim_icl.serve.events import Done, Finished, Started, Text
from aim_icl.serve.sampling import Generation
from aim_icl.serve.service import ModelService
from aim_icl.world.checkpoint import load_shipped
from aim_icl.world.scene import sample_scene

QUESTIONS = ("describe the image .", "what colour is it ?", "what is this ?", "where is it ?")
CHAT = "/v1/chat/completions"
SCENE = sample_scene(
    random.Random(0)
).render()  # greedy: "a small white ring on the top ." to the first question


@pytest.fixture(scope="module")
def world():
    return load_shipped()


@pytest.fixture
def app(world):
    app = create_app(ModelService(world), ServerConfig(max_batch_size=8, max_n=4, max_new_tokens_cap=16))
    yield app
    app.state.worker.close()


def ask(question: str, image: bool = True, **fields) -> dict:
    """A chat asking `question` about the scene (or with no image)."""
    buffer = io.BytesIO()
    SCENE.save(buffer, format="PNG")
    part = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()},
    }
    content = [part, {"type": "text", "text": question}] if image else question
    return {"model": "aim", "messages": [{"role": "user", "content": content}], "max_tokens": 6, **fields}


def expected(world, question: str, max_tokens: int = 6) -> str:
    return world.generate(SCENE, question, [], "aim", max_new_tokens=max_tokens)


def post_all(app, bodies: list[dict], hold: bool = False) -> list[httpx.Response]:
    """Send `bodies` at once; with `hold`, the worker is kept busy until all of them wait, so they form one batch."""
    release = threading.Event()
    if hold:
        started = threading.Event()
        app.state.worker.submit(lambda: started.set() or release.wait(10))
        assert started.wait(10)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            sent = [asyncio.create_task(client.post(CHAT, json=body)) for body in bodies]
            while hold and app.state.worker.waiting + sum(t.done() for t in sent) < len(
                bodies
            ):  # queued or refused
                await asyncio.sleep(0.01)
            release.set()
            return await asyncio.gather(*sent)

    return asyncio.run(scenario())


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["message"]["content"] for c in response.json()["choices"]]


def metric(app, name: str) -> float:
    text = app.state.service.metrics.render().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


# -- batching through the app -----------------------------------------------------------------------------------


def test_concurrent_requests_share_decoding_steps_and_get_their_own_greedy_answers(world, app):
    bodies = [ask(q, max_tokens=3 + i) for i, q in enumerate(QUESTIONS * 2)]
    responses = post_all(app, bodies, hold=True)
    answers = [expected(world, q, 3 + i) for i, q in enumerate(QUESTIONS * 2)]
    assert [texts(r)[0] for r in responses] == answers
    assert metric(app, "aim_queue_wait_seconds_count") == len(bodies)  # each joined the rows once
    steps = metric(app, "aim_batch_size_count")
    assert (
        metric(app, 'aim_batch_size_bucket{le="4.0"}') < steps
    )  # some steps ran more than four rows at once
    # every request's tokens but the first (read with its prompt) came from a shared step
    assert metric(app, "aim_batch_size_sum") == sum(
        r.json()["usage"]["completion_tokens"] - 1 for r in responses
    )


def test_a_request_that_fails_in_a_batch_fails_alone(app):
    broken = ask(
        "what is it ?", aim_mode="icl"
    )  # an icl demo without an image: refused when its prompt is built
    broken["messages"] = [
        {"role": "user", "content": "what colour is it ?"},
        {"role": "assistant", "content": "red ."},
        *broken["messages"],
    ]
    good, bad, other = post_all(app, [ask(QUESTIONS[0]), broken, ask(QUESTIONS[1])], hold=True)
    assert bad.status_code == 400 and "needs every demo to have an image" in bad.json()["error"]["message"]
    assert good.status_code == other.status_code == 200


# -- sampling ----------------------------------------------------------------------------------------------------


def test_seed_n_temperature_and_top_p_as_openai_defines_them(world, app):
    sampled = dict(image=False, temperature=1.0, n=3, seed=7)  # without its image the model is unsure
    first, again, other, nucleus, zero = post_all(
        app,
        [ask(QUESTIONS[0], **sampled), ask(QUESTIONS[0], **sampled), ask(QUESTIONS[0], **{**sampled, "seed": 8}),
         ask(QUESTIONS[0], temperature=2.0, top_p=1e-6), ask(QUESTIONS[0], temperature=0)],
    )  # fmt: skip
    assert len(texts(first)) == 3 and len(set(texts(first))) == 3  # three different samples
    assert texts(first) == texts(again)  # same seed, same answers
    assert texts(other) != texts(first)
    # top_p keeps only the most likely token, so even at temperature 2 the answer is the greedy one
    assert texts(nucleus) == texts(zero) == [expected(world, QUESTIONS[0])]
    assert [c["index"] for c in first.json()["choices"]] == [0, 1, 2]


def test_stop_strings_cut_the_answer_and_finish_reasons(world, app):
    assert expected(world, QUESTIONS[0], 12) == "a small white ring on the top ."  # then its end token
    cut, limited, ended = post_all(
        app,
        [
            ask(QUESTIONS[0], stop=["zzz", "ring"]),
            ask(QUESTIONS[0], max_tokens=2),
            ask(QUESTIONS[0], max_tokens=12),
        ],
    )
    assert texts(cut) == ["a small white"] and cut.json()["choices"][0]["finish_reason"] == "stop"
    assert texts(limited) == ["a small"] and limited.json()["choices"][0]["finish_reason"] == "length"
    assert texts(ended) == ["a small white ring on the top ."]
    assert ended.json()["choices"][0]["finish_reason"] == "stop"
    assert ended.json()["usage"]["completion_tokens"] == 9  # eight words and the end token


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"temperature": -0.5}, 400, "temperature"),
        ({"temperature": 2.5}, 400, "temperature"),
        ({"temperature": "nan"}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"n": 0}, 400, "n:"),
        ({"n": 5}, 400, "n:"),  # over this server's --max-n
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 17}, 400, "max_tokens"),  # over the cap
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "gpt-4o"}, 404, "serves 'aim'"),
    ],
)
def test_out_of_range_fields_get_an_error_naming_the_field(app, fields, status, named):
    (response,) = post_all(app, [ask(QUESTIONS[0], **fields)])
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]


# -- streaming ---------------------------------------------------------------------------------------------------


def test_streamed_text_is_sent_as_it_is_generated(world):
    forwards, events = [], []
    hook = world.model.register_forward_hook(lambda *_: forwards.append(1))  # one call per generated token
    service = ModelService(world)
    engine = Engine(service, service.config)
    chat = Conversation([], SCENE, QUESTIONS[0])
    job = service.prepare(service.chat_job(chat, "aim", Generation(max_tokens=6), float("inf"), stream=True))
    done = threading.Event()
    job.emit = lambda event: events.append((event, len(forwards))) or (isinstance(event, Done) and done.set())
    try:
        engine.start(job)
        assert done.wait(60)
    finally:
        hook.remove()
        engine.close()
    pieces = [(e.piece, at) for e, at in events if isinstance(e, Text)]
    read = next(at for e, at in events if isinstance(e, Started))  # forwards until the prompt was read
    assert read == 1  # one pass: the world model's 1-token template head is read with the prompt, not cached
    assert len(pieces) > 1 and pieces[0][1] == read  # the first piece left with the prompt's pass
    assert pieces[-1][1] == len(forwards) == read + 5  # then one pass per token
    answer = events[-1][0].answer
    assert "".join(p for p, _ in pieces) == answer.text == "a small white ring on the"
    assert [(e.reason, at) for e, at in events if isinstance(e, Finished)] == [("length", read + 5)]


def test_stream_chunks_add_up_to_the_answer_with_stop_strings_and_usage_last(app):
    async def stream():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            body = ask(QUESTIONS[0], stream=True, stop=" on", n=2, stream_options={"include_usage": True})
            async with client.stream("POST", CHAT, json=body) as response:
                return [line async for line in response.aiter_lines() if line.startswith("data: ")]

    lines = asyncio.run(stream())
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "a small white ring"
        assert len(mine) > 3 and mine[-1]["finish_reason"] == "stop"  # several pieces, then the finish
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2 * 5


# -- the verb ----------------------------------------------------------------------------------------------------


def test_serve_without_model_serves_the_world_model(world, monkeypatch):
    import uvicorn

    from aim_icl.commands import serve

    served, parser = {}, argparse.ArgumentParser()
    serve.add_arguments(parser)
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.update(config=server.config))
    assert serve.run(parser.parse_args(["--port", "8123", "--max-batch-size", "4"])) == 0
    app = served["config"].app
    assert served["config"].port == 8123 and app.state.config.max_batch_size == 4
    (response,) = post_all(app, [ask(QUESTIONS[2])])
    assert texts(response) == [expected(world, QUESTIONS[2])]
    app.state.worker.close()
