"""The server as a real process on a free loopback port, driven through httpx and the official openai client."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import openai
import pytest
import torch
from conftest import serving
from PIL import Image

from aim_icl.testing.tiny import tiny_image

KEY = "test-key"
MAX_DEMOS = 3
MAX_IMAGE_BYTES = 20_000
QUESTION = "what is it?"


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def few_shot(k: int, seed: int = 0) -> list[dict]:
    """k example turns (image + question, then the answer) and a question about a new image."""
    messages = []
    for i in range(k):
        user = [{"type": "image_url", "image_url": {"url": data_url(tiny_image(seed + i))}}]
        messages += [
            {"role": "user", "content": [*user, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": ["red", "blue cat", "green bird"][i % 3]},
        ]
    query = [
        {"type": "image_url", "image_url": {"url": data_url(tiny_image(99))}},
        {"type": "text", "text": QUESTION},
    ]
    return [*messages, {"role": "user", "content": query}]


def bomb_url(width: int, height: int) -> str:
    """A tiny PNG whose header claims width x height pixels (Pillow refuses it as a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(raw[24:29])  # IHDR: size, then depth, colour, ...
    raw[16:29], raw[29:33] = header, struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return "data:image/png;base64," + base64.b64encode(bytes(raw)).decode()


@pytest.fixture(scope="module")
def server(saved_llava, tmp_path_factory):
    directory, projector, aim = saved_llava.model, saved_llava.projector, saved_llava.aim  # aim counts tokens
    allowed = tmp_path_factory.mktemp("allowed")
    tiny_image(5).save(allowed / "query.png")
    arguments = [
        "--model", str(directory), "--projector", str(projector), "--api-key", KEY, "--allow-dir", str(allowed),
        "--max-demos", str(MAX_DEMOS), "--max-image-bytes", str(MAX_IMAGE_BYTES), "--max-new-tokens", "4",
    ]  # fmt: skip
    with serving(*arguments) as url:
        yield url, aim, allowed


@pytest.fixture(scope="module")
def http(server):
    url = server[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)


def chat(http: httpx.Client, messages: list[dict], mode: str = "aim", **extra) -> dict:
    response = http.post(
        "/v1/chat/completions", json={"model": "aim", "messages": messages, "aim_mode": mode, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_aim_costs_zero_shot_plus_demo_text_and_icl_costs_the_images(server, http):
    aim = server[1]
    messages = few_shot(2, seed=10)
    by_mode = {mode: chat(http, messages, mode) for mode in ("zero", "aim", "icl")}
    assert {m: r["aim_mode"] for m, r in by_mode.items()} == {"zero": "zero", "aim": "aim", "icl": "icl"}
    # the default demo template: "{user} {assistant}"
    demo_texts = [f"{QUESTION} red", f"{QUESTION} blue cat"]
    text_tokens = sum(len(aim.encoder.text_ids(t)) for t in demo_texts)
    separators = 2  # one newline token after each demo
    zero = by_mode["zero"]["usage"]["prompt_tokens"]
    assert by_mode["aim"]["usage"]["prompt_tokens"] == zero + text_tokens + separators
    query = aim.build_inputs(tiny_image(0), QUESTION, [], "zero")["input_ids"]
    image_tokens = int(query.eq(aim.backbone.image_token_id).sum())  # what one image costs the prompt
    extra = by_mode["icl"]["usage"]["prompt_tokens"] - by_mode["aim"]["usage"]["prompt_tokens"]
    assert 2 * image_tokens <= extra <= 2 * (image_tokens + 2)  # plus the image marker's own text
    assert by_mode["aim"]["aim"]["demos"] == 2


def test_a_repeated_example_hits_the_bank(http):
    first = chat(http, few_shot(2, seed=20))
    again = chat(http, few_shot(3, seed=20))  # the same two examples plus a new one
    assert first["aim"]["bank_hits"] == 0
    assert again["aim"]["bank_hits"] == 2
    metrics = http.get("/metrics").text
    hits = next(line for line in metrics.splitlines() if line.startswith("aim_bank_hits_total"))
    assert float(hits.split()[-1]) >= 2


def test_openai_client_chat_and_stream(client, http):
    messages = few_shot(2, seed=30)
    reply = client.chat.completions.create(model="aim", messages=messages, max_tokens=4)
    assert reply.model_extra["aim_mode"] == "aim"
    assert reply.usage.prompt_tokens == chat(http, messages, max_tokens=4)["usage"]["prompt_tokens"]
    stream = client.chat.completions.create(
        model="aim", messages=messages, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: the same answer, streamed
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    icl = client.chat.completions.create(
        model="aim", messages=messages, max_tokens=4, extra_body={"aim_mode": "icl"}
    )
    assert icl.usage.prompt_tokens > reply.usage.prompt_tokens
    assert [m.id for m in client.models.list()] == ["aim"]
    with pytest.raises(openai.NotFoundError, match="serves 'aim'"):
        client.chat.completions.create(model="gpt-4o", messages=messages)


def test_openai_client_sampling_fields(client):
    messages = few_shot(1, seed=35)
    sampled = dict(model="aim", messages=messages, max_tokens=6, temperature=1.5, n=3, seed=11)
    first, again = (client.chat.completions.create(**sampled) for _ in range(2))
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="aim", messages=messages, temperature=-1)


def test_a_stop_string_the_model_writes_cuts_the_answer_before_it(client):
    messages = few_shot(1, seed=35)
    greedy = dict(model="aim", messages=messages, max_tokens=6)
    full = client.chat.completions.create(**greedy).choices[0]
    assert full.finish_reason == "length"  # six tokens and no end token: a stop below is the stop string's
    answer = full.message.content
    stop = answer.split()[-1]  # a word the model writes after others
    cut = answer[: answer.index(stop)].strip()
    assert cut and len(cut) < len(answer)
    stopped = client.chat.completions.create(**greedy, stop=[stop, "never written"]).choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (cut, "stop")
    stream = client.chat.completions.create(**greedy, stop=stop, stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.delta.content or "" for c in chunks) == cut  # no piece of the stop string was sent
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]


def test_task_create_and_predict_with_fixed_demos(server, http):
    aim = server[1]
    demos = [
        {"image": data_url(tiny_image(40 + i)), "text": f"Q: {QUESTION} A: {w}"}
        for i, w in enumerate(["red", "dog"])
    ]
    task = {"name": "colours", "demos": demos, "template": "Q: {question} A:", "mode": "aim"}
    created = http.post("/v1/tasks", json=task)
    assert created.status_code == 201, created.text
    assert created.json()["prefix_cache"] and len(created.json()["demo_keys"]) == 2
    query = data_url(tiny_image(41))
    first = http.post(
        "/v1/tasks/colours/predict", json={"image": query, "question": QUESTION, "max_tokens": 4}
    )
    second = http.post(
        "/v1/tasks/colours/predict", json={"image": query, "question": QUESTION, "max_tokens": 4}
    )
    assert first.status_code == 200, first.text
    # the demo prefix is served from the cache: the query computes no more than its zero-shot prompt's positions
    prompt, cached = second.json()["usage"]["prompt_tokens"], second.json()["aim"]["cached_prompt_tokens"]
    zero_shot = aim.build_inputs(tiny_image(41), f"Q: {QUESTION} A:", [], "zero")["input_ids"].shape[1]
    assert prompt - zero_shot <= cached < prompt
    expected = aim.generate(
        tiny_image(41), f"Q: {QUESTION} A:", [_demo(d) for d in demos], "aim", max_new_tokens=4
    )
    assert first.json()["answer"] == second.json()["answer"] == expected
    assert http.post("/v1/tasks", json=task).status_code == 409  # the name is taken


def test_task_selecting_demos_from_the_bank(http):
    created = http.post("/v1/tasks", json={"name": "picked", "strategy": "random", "k": 2, "mode": "text"})
    assert created.status_code == 201, created.text
    answer = http.post(
        "/v1/tasks/picked/predict", json={"image": data_url(tiny_image(3)), "question": QUESTION}
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["demo_keys"]) == 2


def _demo(d: dict):
    from aim_icl import Demo

    raw = base64.b64decode(d["image"].split(",", 1)[1])
    return Demo(Image.open(io.BytesIO(raw)).convert("RGB"), d["text"])


def _post(server, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{server[0]}{path}",
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
        timeout=60,
        **kwargs,
    )


def _with_query_image(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}],
        }
    ]


def _with_token(messages: list[dict], turn: int) -> list[dict]:
    """The chat with the model's image token written into one example turn's text (the user's, or the answer)."""
    message = messages[turn]
    if isinstance(message["content"], str):
        message["content"] += " <image>"
    else:
        message["content"][-1]["text"] += " <image>"
    return messages


@pytest.fixture(scope="module")
def before_bad_requests(http) -> dict:
    """A chat's answer choice before any bad request (asked twice: the second reads its demo from the bank)."""
    chat(http, few_shot(1), max_tokens=4)
    return chat(http, few_shot(1), max_tokens=4)["choices"][0]


BIG = Image.fromarray(torch.randint(0, 256, (200, 200, 3), dtype=torch.uint8).numpy())  # noise PNG ~120 kB


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("malformed_json", 400, "not valid JSON"),
        ("not_an_image", 400, "not a readable image"),
        ("oversize_image", 413, "larger than the limit"),
        ("decompression_bomb", 413, "over the limit of"),
        ("too_many_demos", 413, "too many demonstrations"),
        ("outside_allowed", 403, "outside the directories"),
        ("wrong_key", 401, "wrong API key"),
        ("missing_key", 401, "missing API key"),
        ("unknown_task", 404, "unknown task"),
        ("image_token_in_demo", 400, "holds the image token"),
        ("image_token_in_answer", 400, "holds the image token"),
    ],
)
def test_bad_requests_get_a_clean_4xx_and_the_server_keeps_serving(
    server, http, before_bad_requests, tmp_path, case, status, message
):
    chat_path = "/v1/chat/completions"
    bad_bytes = "data:image/png;base64," + base64.b64encode(b"this is not an image").decode()
    outside = tmp_path / "x.png"
    tiny_image(1).save(outside)
    requests = {
        "malformed_json": lambda: _post(server, chat_path, content=b'{"messages": [', headers={"Content-Type": "application/json"}),
        "not_an_image": lambda: _post(server, chat_path, json={"messages": _with_query_image(bad_bytes)}),
        "oversize_image": lambda: _post(server, chat_path, json={"messages": _with_query_image(data_url(BIG))}),
        "decompression_bomb": lambda: _post(server, chat_path, json={"messages": _with_query_image(bomb_url(20000, 10000))}),
        "too_many_demos": lambda: _post(server, chat_path, json={"messages": few_shot(MAX_DEMOS + 1)}),
        "outside_allowed": lambda: _post(server, chat_path, json={"messages": _with_query_image(str(outside))}),
        "wrong_key": lambda: _post(server, chat_path, headers={"Authorization": "Bearer nope"}, json={"messages": few_shot(0)}),
        "missing_key": lambda: httpx.post(f"{server[0]}{chat_path}", json={"messages": few_shot(0)}),
        "unknown_task": lambda: _post(server, "/v1/tasks/nope/predict", json={"question": "x"}),
        "image_token_in_demo": lambda: _post(server, chat_path, json={"messages": _with_token(few_shot(1), 0), "aim_mode": "text"}),
        "image_token_in_answer": lambda: _post(server, chat_path, json={"messages": _with_token(few_shot(1), 1)}),
    }  # fmt: skip
    response = requests[case]()
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert chat(http, few_shot(1), max_tokens=4)["choices"][0] == before_bad_requests  # serving as before


def test_allowed_local_path_and_openai_client_errors(server, client):
    allowed = server[2]
    by_path, by_value = (
        client.chat.completions.create(model="aim", messages=_with_query_image(url), max_tokens=4)
        for url in (str(allowed / "query.png"), data_url(Image.open(allowed / "query.png")))
    )
    assert by_path.usage == by_value.usage  # the path's file is the query image
    assert by_path.choices[0].message.content == by_value.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="last message must be the user"):
        client.chat.completions.create(model="aim", messages=[{"role": "assistant", "content": "hi"}])


def test_metrics_in_prometheus_text(http):
    text = http.get("/metrics").text
    assert "# TYPE aim_requests_total counter" in text
    assert 'aim_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'aim_request_duration_seconds_bucket{le="+Inf",route="/v1/chat/completions"}' in text
    assert 'aim_prompt_tokens_total{mode="aim"}' in text
    assert "# TYPE aim_batch_size histogram" in text and "# TYPE aim_queue_wait_seconds histogram" in text
    assert httpx.get(http.base_url.join("/health")).json()["status"] == "ok"  # no key needed for health
