"""The engine: rows joining and leaving the generating batch per step, their KV slots, cancellation, scheduling.

Greedy answers must not depend on what else generates: every row's tokens equal `aim.generate` alone, on the tiny
model of every named family, in every mode, whatever joins or leaves around it.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import NAMED_FAMILIES, make_demos, tiny_aim

from aim_icl.core.demo import Query
from aim_icl.serve import service as service_module
from aim_icl.serve.config import ServerConfig
from aim_icl.serve.decoder import Decoder
from aim_icl.serve.engine import Engine, QueueFull
from aim_icl.serve.events import Done, Failed, Finished, Started, Text
from aim_icl.serve.kv import RowSlots
from aim_icl.serve.sampling import Generation
from aim_icl.serve.service import GenerationJob, ModelService, PromptRequest
from aim_icl.testing.tiny import tiny_image

MODES = ("aim", "text", "icl", "zero")
# (question, image seed, demos, new tokens); joining at these decoding steps of the first row
QUERIES = [
    ("what is it?", 0, 1, 9),
    ("describe the picture", 1, 2, 5),
    ("what colour?", 2, 3, 12),
    ("where", 3, 1, 7),
]
JOINS = {0: [0, 1], 2: [2], 4: [3]}


def alone(aim, inputs: dict, tokens: int) -> list[int]:
    """The tokens `generate` gives one prompt alone, greedy, up to its end token."""
    with torch.no_grad():
        out = aim.model.generate(
            **inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=aim.encoder.pad_id
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    end = aim.model.generation_config.eos_token_id
    return new[: new.index(end) + 1] if end in new else new


def scheduled(aim, prompts: list[tuple[dict, int]], joins: dict[int, list[int]]) -> dict[int, list[int]]:
    """Greedy tokens of every prompt through one `Decoder`, prompt i joining at the step `joins` says and each row
    leaving as soon as it ends: each request's tokens."""
    decoder, rows, done, step = Decoder(aim, max_rows=8), [], {}, 0
    end = aim.model.generation_config.eos_token_id
    while step <= max(joins) or rows:
        for index in joins.get(step, []):
            slot, logits, _ = decoder.join([prompts[index][0]])
            assert slot == len(rows)
            rows.append((index, [int(logits[0].argmax())]))
        for slot in reversed(range(len(rows))):
            index, tokens = rows[slot]
            if len(tokens) >= prompts[index][1] or tokens[-1] == end:
                done[index] = tokens
                moved = decoder.leave(slot)
                rows[slot] = rows[moved]
                rows.pop()
        if rows:
            logits = decoder.step(torch.tensor([tokens[-1] for _, tokens in rows]))
            for slot, (_, tokens) in enumerate(rows):
                tokens.append(int(logits[slot].argmax()))
        step += 1
    return done


@pytest.mark.parametrize("family", NAMED_FAMILIES)
def test_rows_joining_and_leaving_mid_generation_give_the_tokens_they_get_alone(family):
    aim = tiny_aim(family)
    demos = make_demos(3, seed=1)
    for mode in MODES:
        prompts = [
            (aim.build_inputs(tiny_image(seed), text, [] if mode == "zero" else demos[:k], mode), tokens)
            for text, seed, k, tokens in QUERIES
        ]
        expected = {i: alone(aim, inputs, tokens) for i, (inputs, tokens) in enumerate(prompts)}
        assert scheduled(aim, prompts, JOINS) == expected, (family, mode)


def test_slots_move_rows_only_when_they_must_and_keep_their_columns():
    slots = RowSlots(num_layers=1, max_rows=4)
    layer = slots.layers[0]

    def write(first: int, count: int, length: int, value: float) -> None:
        slots.prefill(first, count, length)
        layer.update(torch.full((count, 1, length, 2), value), torch.full((count, 1, length, 2), -value))

    write(slots.open_rows(1, 5), 1, 5, 1.0)  # the first row: its prompt ends where decoding starts
    assert (slots.end, slots.starts) == (5, [0])
    for _ in range(3):
        slots.decode()
        layer.update(torch.full((1, 1, 1, 2), 9.0), torch.full((1, 1, 1, 2), 9.0))
        slots.advance()
    write(slots.open_rows(1, 4), 1, 4, 2.0)  # fits left of `end`: nothing moves
    assert (slots.end, slots.starts) == (8, [0, 4])
    write(slots.open_rows(1, 12), 1, 12, 3.0)  # longer than `end`: the rows move right once
    assert slots.end == 12 and slots.starts == [4, 8, 0]
    assert (
        layer.keys[0, 0, 4:12, 0].tolist() == [1.0] * 5 + [9.0] * 3
        and layer.keys[1, 0, 8:12, 0].tolist() == [2.0] * 4
    )
    assert slots.attention_mask("cpu").tolist()[1] == [0] * 8 + [1] * 5  # the second row's padding hidden
    assert slots.remove(0) == 2 and slots.starts == [0, 8]  # the last row moved into the freed slot
    assert layer.keys[0, 0, 0:12, 0].tolist() == [3.0] * 12
    for _ in range(60):  # past the first 64 columns: the buffers double, the rows keep their columns
        slots.decode()
        layer.update(torch.full((2, 1, 1, 2), 7.0), torch.full((2, 1, 1, 2), 7.0))
        slots.advance()
    assert slots.columns >= slots.end + 1 and layer.keys[1, 0, 8:12, 0].tolist() == [2.0] * 4


# -- the engine ----------------------------------------------------------------------------------------------


class Listener:
    """A job's events as the engine emits them (on its thread), and a way to wait for one."""

    def __init__(self):
        self.events, self.seen = [], threading.Condition()

    def __call__(self, event) -> None:
        with self.seen:
            self.events.append(event)
            self.seen.notify_all()

    def wait(self, condition, seconds: float = 60.0):
        with self.seen:
            assert self.seen.wait_for(lambda: condition(self.events), seconds), self.events

    def answer(self):
        self.wait(lambda events: bool(events) and isinstance(events[-1], (Done, Failed)))
        last = self.events[-1]
        assert isinstance(last, Done), last
        return last.answer


def job(service: ModelService, text: str, tokens: int, stream: bool = True, **generation) -> GenerationJob:
    request = PromptRequest(Query(tiny_image(5), text, []), "zero")
    made = GenerationJob(request, Generation(max_tokens=tokens, **generation), float("inf"), stream=stream)
    made.emit = Listener()
    return service.prepare(made)


@pytest.fixture
def engine():
    service = ModelService(tiny_aim("llava"), config=ServerConfig(max_batch_size=4, queue_size=4, max_n=4))
    engine = Engine(service, service.config)
    engine.started.result(60)
    yield engine
    engine.close()


def expected_text(aim, text: str, tokens: int) -> str:
    return aim.generate(tiny_image(5), text, [], "zero", max_new_tokens=tokens)


def test_a_request_joins_a_running_batch_and_a_finished_row_leaves_at_once(engine):
    aim, service = engine.service.aim, engine.service
    long, short = job(service, "what is it?", 40), job(service, "describe it", 3)
    engine.start(long)
    long.emit.wait(lambda events: sum(isinstance(e, Text) for e in events) >= 2)  # generating
    engine.start(short)
    short_answer = short.emit.answer()
    assert not any(isinstance(e, Done) for e in long.emit.events)  # joined, answered and left mid-way
    assert short_answer.text == expected_text(aim, "describe it", 3)
    assert long.emit.answer().text == expected_text(aim, "what is it?", 40)
    assert engine.rows == 0


def test_static_scheduling_waits_for_the_whole_batch():
    service = ModelService(tiny_aim("llava"), config=ServerConfig(max_batch_size=4, scheduler="static"))
    engine = Engine(service, service.config)
    try:
        long, short = job(service, "what is it?", 30), job(service, "describe it", 3)
        engine.start(long)
        long.emit.wait(lambda events: any(isinstance(e, Text) for e in events))
        engine.start(short)
        short.emit.answer()
        assert isinstance(long.emit.events[-1], Done)  # the short one started only after the long one ended
    finally:
        engine.close()


def test_a_cancelled_job_frees_its_row_at_the_next_step(engine):
    forwards = []
    hook = engine.service.aim.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        leaving = job(engine.service, "what is it?", 200)
        engine.start(leaving)
        leaving.emit.wait(lambda events: sum(isinstance(e, Text) for e in events) >= 2)
        leaving.cancelled, at = True, len(forwards)
        deadline = time.monotonic() + 30
        while engine.rows and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.rows == 0 and len(forwards) <= at + 1  # at most the step already under way
    finally:
        hook.remove()
    assert not any(isinstance(e, Done) for e in leaving.emit.events)


def test_choices_seeds_stop_strings_and_limits_per_row(engine):
    aim, service = engine.service.aim, engine.service
    sampled = job(service, "what is it?", 6, n=3, temperature=1.5, seed=3)
    again = job(service, "what is it?", 6, n=3, temperature=1.5, seed=3)
    greedy = job(service, "what is it?", 6, stream=False)
    for made in (sampled, again, greedy):
        engine.start(made)
    first, second, plain = (m.emit.answer() for m in (sampled, again, greedy))
    assert [c.text for c in first.choices] == [c.text for c in second.choices]  # same seed, same samples
    assert len(first.choices) == 3 and plain.text == expected_text(aim, "what is it?", 6)
    assert not any(isinstance(e, Text) for e in greedy.emit.events)  # not streaming: no pieces sent
    assert [e.reason for e in greedy.emit.events if isinstance(e, Finished)] == [
        plain.choices[0].finish_reason
    ]
    started = next(e for e in greedy.emit.events if isinstance(e, Started))
    assert started.prompt.tokens == plain.prompt.tokens > 0


def test_the_queue_is_bounded_and_a_bad_prompt_fails_alone(engine):
    release, started = threading.Event(), threading.Event()
    engine.submit(lambda: started.set() or release.wait(10))
    assert started.wait(10)
    jobs = [job(engine.service, "what is it?", 2) for _ in range(4)]
    broken = jobs[1]
    broken.request.encoded.inputs["input_ids"] = broken.request.encoded.inputs["input_ids"][
        :, :0
    ]  # no tokens
    for made in jobs:
        engine.start(made)
    with pytest.raises(QueueFull):
        engine.start(job(engine.service, "one more", 2))
    release.set()
    for made in jobs:
        made.emit.wait(lambda events: bool(events) and isinstance(events[-1], (Done, Failed)))
    assert isinstance(broken.emit.events[-1], Failed)
    assert all(isinstance(m.emit.events[-1], Done) for m in jobs if m is not broken)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_frees_its_row(stream):
    """Through the app: a client sends its request and leaves while the answer generates (ASGI's disconnect)."""
    import asyncio
    import json

    from aim_icl.serve.app import create_app

    service = ModelService(tiny_aim("llava"), config=ServerConfig(max_new_tokens_cap=200))
    app = create_app(service)
    tokens = len(service.aim.encoder.tokenizer(expected_text(service.aim, "hi", 200))["input_ids"])
    assert tokens > 50  # the answer runs long when nobody leaves
    body = json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png(5)}}, {"type": "text", "text": "hi"}]}],
        "max_tokens": 200, "stream": stream, "aim_mode": "zero"})  # fmt: skip
    forwards, generating = [], threading.Event()

    def forward(*_):  # slowed to 20 ms a token: the client's leaving is noticed within half a second
        forwards.append(1)
        generating.set()
        time.sleep(0.02)

    hook = service.aim.model.register_forward_hook(forward)

    async def scenario():
        received = iter([{"type": "http.request", "body": body.encode(), "more_body": False}])

        async def receive():  # as a server's: the body, then (at once) the client gone once generation began
            message = next(received, None)
            if message is not None:
                return message
            while not generating.is_set():
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
                 "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80),
                 "client": ("c", 1)}  # fmt: skip
        await asyncio.wait_for(app(scope, receive, send), 120)

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + 30
        while app.state.engine.rows and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.engine.rows == 0 and len(forwards) < 100  # freed long before its answer ended
        if not stream:  # a streamed answer had its 200 sent already
            assert 'status="499"' in service.metrics.render().decode()
    finally:
        hook.remove()
        app.state.engine.close()


def _png(seed: int) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    tiny_image(seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_task_queries_join_together_after_their_cached_prefix(engine):
    from aim_icl.serve.config import ImagePolicy
    from aim_icl.serve.schemas import TaskDemo, TaskRequest
    from aim_icl.serve.tasks import prepare_task

    service, aim = engine.service, engine.service.aim
    demos = [
        TaskDemo(image=_png(1), text="question: what is it? answer: red"),
        TaskDemo(image=_png(2), text="what? blue cat"),
    ]
    spec = prepare_task(TaskRequest(name="t", demos=demos), ImagePolicy(), 8)
    task = engine.submit(service.create_task, spec).result(60)
    release, started = threading.Event(), threading.Event()
    engine.submit(lambda: started.set() or release.wait(30))
    assert started.wait(30)
    jobs, forwards = [], []
    hook = aim.model.register_forward_hook(lambda *_: forwards.append(1))
    for seed in range(3):  # same shapes: one forward after the copied prefix
        made = service.predict_job("t", tiny_image(10 + seed), "what is it?", Generation(6), float("inf"))
        made.emit = Listener()
        engine.start(service.prepare(made))
        jobs.append(made)
    release.set()
    try:
        answers = [made.emit.answer() for made in jobs]
    finally:
        hook.remove()
    assert len(forwards) == 1 + 1 + 5  # the prefix read once, the three queries' own tokens at once, 5 steps
    for seed, answer in enumerate(answers):
        assert answer.prompt.cached_tokens > 0
        assert answer.text == aim.generate(
            tiny_image(10 + seed), "what is it?", task.demos, "aim", max_new_tokens=6
        )


@pytest.mark.parametrize("family", NAMED_FAMILIES)
def test_chats_share_the_template_head_read_once_and_answer_as_alone(family, monkeypatch):
    """Every chat starts with the chat template's head: it is read once and copied into each joining row (as task
    queries copy their demos), and the answers stay exactly `aim.generate`'s; a family whose query image comes
    first shares nothing. (The tiny templates' heads are short: every head is cached here, whatever its length.)"""
    monkeypatch.setattr(service_module, "MIN_HEAD", 1)
    aim = tiny_aim(family)
    service = ModelService(aim, config=ServerConfig(max_batch_size=4, queue_size=8))
    engine = Engine(service, service.config)
    demos = make_demos(2, seed=3)

    def ask(text: str, seed: int, shots: list, mode: str):
        request = PromptRequest(Query(tiny_image(seed), text, shots), mode)
        made = GenerationJob(request, Generation(max_tokens=5), float("inf"), stream=False)
        made.emit = Listener()
        engine.start(service.prepare(made))
        return made.emit.answer()

    try:
        for mode in ("zero", "text", "aim"):
            shots = [] if mode == "zero" else demos
            answers = [
                ask(text, 0, shots, mode) for text in ("what is it?", "what is it?", "describe the picture")
            ]
            for answer in answers:
                if aim.backbone.family.images_first:
                    assert answer.prompt.cached_tokens == 0
                else:
                    assert 0 < answer.prompt.cached_tokens < answer.prompt.tokens, mode
            assert answers[0].text == answers[1].text  # the head read with the prompt, then copied: the same
            if mode != "aim":  # (aim's demos come from the bank, stored as float16: not `generate`'s states)
                for answer, text in zip(answers[1:], ("what is it?", "describe the picture")):
                    assert answer.text == aim.generate(tiny_image(0), text, shots, mode, max_new_tokens=5)
    finally:
        engine.close()


def test_a_head_too_short_to_pay_is_read_with_the_prompt(engine):
    """llava's tiny template head is 3 tokens: under `MIN_HEAD` it is not cached, and nothing is copied."""
    made = job(engine.service, "what is it?", 3)
    engine.start(made)
    assert made.emit.answer().prompt.cached_tokens == 0
