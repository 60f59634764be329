"""Issue 21, in process: no input reaches a 500, and what the server accepts it can answer.

Each bad input is one 4xx in OpenAI's error shape with a one-line message; in-range odd values are answered. The
fuzz test and the limits that live in the HTTP protocol (headers) run against a real server in
test_serve_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging

import httpx
import pytest
import torch
from conftest import tiny_aim
from PIL import Image
from test_serve_http import bomb_url

from aim_icl import AIM
from aim_icl.serve.app import BodyLimit, ServerConfig, create_app
from aim_icl.serve.errors import RequestError
from aim_icl.serve.sampling import GREEDY_BELOW, RowSampler, RowSampling, _draw
from aim_icl.serve.service import ModelService
from aim_icl.serve.templates import check_template
from aim_icl.testing.tiny import build_tiny, tiny_image

CHAT = "/v1/chat/completions"


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text, image: str | None = None) -> dict:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {"role": "user", "content": parts}


def ask(text="what is it?", **fields) -> dict:
    return {"messages": [user(text)], "max_tokens": 2, **fields}


@pytest.fixture(scope="module")
def app():
    app = create_app(ModelService(tiny_aim("llava")), ServerConfig(max_tasks=3, max_bank_demos=4))
    yield app
    app.state.worker.close()


def send(app, *requests: tuple[str, str, object]) -> list[httpx.Response]:
    """(method, path, body) requests in order; a body that is not bytes goes as JSON escaped to ASCII (lone
    surrogates included, as a client's JSON encoder writes them)."""

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            responses = []
            for method, path, body in requests:
                content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
                headers = {"Content-Type": "application/json"}
                responses.append(await client.request(method, path, content=content, headers=headers))
            return responses

    return asyncio.run(scenario())


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert message in error["message"] and "\n" not in error["message"]


IMAGE = data_url(tiny_image(1))
BAD = [
    # (case, method, path, body, status, message)
    ("surrogate_in_chat", "POST", CHAT, ask("what \udfff"), 400, "lone surrogate"),
    ("surrogate_in_demo", "POST", "/v1/tasks", {"name": "s", "demos": [{"text": "a \ud800"}]}, 400, "demos.0.text"),
    ("surrogate_in_stop", "POST", CHAT, ask(stop=["\udfff"]), 400, "lone surrogate"),
    ("surrogate_in_question", "POST", "/v1/tasks/none/predict", {"question": "\udfff"}, 400, "lone surrogate"),
    ("surrogate_in_inspect", "POST", "/v1/inspect", {"text": "a \udfff"}, 400, "lone surrogate"),
    ("template_attribute", "POST", "/v1/tasks", {"name": "t", "template": "{question.nope}"}, 400, "{question.nope}"),
    ("template_index", "POST", "/v1/tasks", {"name": "t", "template": "{question[0]}"}, 400, "{question[0]}"),
    ("template_width", "POST", "/v1/tasks", {"name": "t", "template": "{question:99999999}"}, 400, "{question:99999999}"),
    ("template_nested", "POST", "/v1/tasks", {"name": "t", "template": "{question:{question}}"}, 400, "is not allowed"),
    ("template_conversion", "POST", "/v1/tasks", {"name": "t", "template": "{question!r}"}, 400, "{question!r}"),
    ("template_positional", "POST", "/v1/tasks", {"name": "t", "template": "{} {question}"}, 400, "field {}"),
    ("template_lone_brace", "POST", "/v1/tasks", {"name": "t", "template": "{question} {"}, 400, "literal brace"),
    ("template_without_question", "POST", "/v1/tasks", {"name": "t", "template": "Q:"}, 400, "must hold {question}"),
    ("task_named_dot", "POST", "/v1/tasks", {"name": "."}, 400, "name: String should match"),
    ("task_named_dotdot", "POST", "/v1/tasks", {"name": ".."}, 400, "name: String should match"),
    ("task_named_option", "POST", "/v1/tasks", {"name": "-x"}, 400, "name: String should match"),
    ("icl_demo_with_image_token", "POST", "/v1/tasks", {"name": "icl", "mode": "icl", "demos": [{"image": IMAGE, "text": "a <image> b"}]}, 400, "holds the image token"),
    ("image_in_assistant_turn", "POST", CHAT, {"messages": [user("q", IMAGE), user("a", IMAGE) | {"role": "assistant"}, user("q")]}, 400, "only user turns may hold images, not assistant"),
    ("image_in_system_turn", "POST", CHAT, {"messages": [user("be brief", IMAGE) | {"role": "system"}, user("q")]}, 400, "not system"),
    ("thin_image", "POST", CHAT, {"messages": [user("q", data_url(Image.new("RGB", (1, 100_000))))]}, 400, "1x100000: its sides differ"),
    ("long_header_image", "POST", CHAT, {"messages": [user("q", bomb_url(1, 16_000_000))]}, 400, "limit of 50:1"),
    ("long_stop", "POST", CHAT, ask(stop="x" * 300), 400, "1 to 256 characters"),
    ("unknown_route", "POST", "/v2/nothing", {}, 404, "no such route"),
    ("wrong_method", "GET", "/v1/chat/completions", None, 405, "use POST"),
    ("invalid_json", "POST", CHAT, b'{"messages": [', 400, "not valid JSON"),
    ("undecodable_body", "POST", CHAT, b'\xff\xfe{"a', 400, "cannot be read"),
    ("wrong_type", "POST", CHAT, {"messages": "hi"}, 400, "messages: Input should be a valid list"),
    ("huge_number", "POST", CHAT, ask(max_tokens=10**30), 400, "max_tokens"),
    ("negative_number", "POST", CHAT, ask(n=-1), 400, "n: Input should be greater than or equal to 1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "status", "message"), BAD, ids=[c[0] for c in BAD]
)
def test_a_bad_input_is_one_4xx_line_in_openai_shape(app, case, method, path, body, status, message):
    (response,) = send(app, (method, path, body))
    assert_error(response, status, message)


def test_validation_errors_name_the_field_as_param(app):
    (response,) = send(app, ("POST", CHAT, ask(temperature="hot")))
    assert_error(response, 400, "temperature")
    assert response.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize("fields", [{"temperature": 1e-38}, {"temperature": 1.0, "top_p": 1e-46}])
def test_extreme_in_range_sampling_values_give_the_greedy_answer_plain_and_streamed(app, fields):
    """Both leave only the top token: the answer is temperature 0's, word for word (a sample would differ)."""
    greedy, plain, streamed = send(
        app,
        ("POST", CHAT, ask(max_tokens=6, temperature=0)),
        ("POST", CHAT, ask(max_tokens=6, **fields)),
        ("POST", CHAT, ask(max_tokens=6, stream=True, **fields)),
    )
    assert greedy.status_code == plain.status_code == streamed.status_code == 200, plain.text
    expected = greedy.json()["choices"][0]
    assert expected["message"]["content"]  # a non-empty answer to compare
    assert plain.json()["choices"][0] == expected
    assert '"error"' not in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")
    assert streamed_text(streamed) == expected["message"]["content"]


def streamed_text(response: httpx.Response) -> str:
    """The answer a streamed chat completion sent, its pieces joined."""
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_sampling_is_greedy_below_the_epsilon_and_top_p_keeps_the_top_token():
    scores = torch.tensor([[1.0, 3.0, 2.0]])
    sampler = RowSampler([RowSampling(GREEDY_BELOW / 2, 1.0, seed=0)])
    assert torch.equal(sampler(None, scores.clone()), scores)  # untouched: generate takes the argmax
    generator = torch.Generator().manual_seed(0)
    for temperature, top_p in [(GREEDY_BELOW, 1.0), (1.0, 1e-46), (2.0, 1e-30), (1e-3, 1.0)]:
        draws = {
            _draw(scores[0] * 1e3, RowSampling(temperature, top_p, 0), generator).item() for _ in range(5)
        }
        assert draws == {1}


def test_a_server_holds_at_most_max_tasks(app):
    responses = send(app, *[("POST", "/v1/tasks", {"name": f"limit-{i}", "mode": "zero"}) for i in range(4)])
    assert [r.status_code for r in responses[:3]] == [201] * 3
    assert_error(responses[-1], 429, "limit of 3 tasks")


def test_a_full_bank_answers_new_demos_without_storing_them_and_refuses_uploads():
    service = ModelService(tiny_aim("llava"))
    app = create_app(service, ServerConfig(max_bank_demos=2))
    demos = [user("q", data_url(tiny_image(10 + i))) for i in range(3)]
    turns = [m for d in demos for m in (d, {"role": "assistant", "content": "red"})]
    try:
        chat, task = send(
            app,
            ("POST", CHAT, {"messages": [*turns, user("q")], "max_tokens": 2}),
            ("POST", "/v1/tasks", {"name": "upload", "demos": [{"text": f"demo {i}"} for i in range(3)]}),
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["aim"]["demos"] == 3
        stored = app.state.worker.submit(lambda *_: len(service.bank)).result(10)  # the bank's own thread
        assert stored == 0  # three would not fit in two: none stored, all fused as they are
        assert_error(task, 429, "at most 2")
    finally:
        app.state.worker.close()


def test_generation_stops_at_the_models_context():
    model, processor = build_tiny("llava", text_config={"max_position_embeddings": 64})
    app = create_app(ModelService(AIM(model, processor)), ServerConfig())
    try:
        fits, full = send(
            app,
            ("POST", CHAT, ask(max_tokens=500, aim_mode="zero")),
            ("POST", CHAT, ask("red " * 59, max_tokens=1, aim_mode="zero")),
        )
        assert fits.status_code == 200, fits.text
        usage = fits.json()["usage"]
        assert usage["total_tokens"] <= 64  # capped at context - prompt, not the 500 asked
        ran_to_the_context = usage["completion_tokens"] == 64 - usage["prompt_tokens"]
        assert fits.json()["choices"][0]["finish_reason"] == ("length" if ran_to_the_context else "stop")
        assert_error(full, 400, "fill the model's context of 64")
    finally:
        app.state.worker.close()


def test_a_client_leaving_mid_body_is_no_500_and_no_traceback(app, caplog):
    sent, bodies = [], iter([b'{"messages": [', None])

    async def receive_then_leave():
        body = next(bodies)
        if body is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": True}

    async def send_(message):
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
        "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
        "server": ("test", 80), "client": ("test", 1), "root_path": "",
    }  # fmt: skip
    with caplog.at_level(logging.ERROR):
        asyncio.run(app(scope, receive_then_leave, send_))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = app.state.service.metrics.render().decode()
    assert 'status="499"' in metrics and 'status="500"' not in metrics


def test_a_body_sent_too_slowly_gets_408():
    async def never_called(scope, receive, send):
        raise AssertionError("the app ran without its body")

    sent = []

    async def slow_receive():
        await asyncio.sleep(5)

    async def send_(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimit(never_called, max_bytes=100, timeout_s=0.2)(scope, slow_receive, send_))
    assert sent[0]["status"] == 408
    assert b"not received within 0.2 s" in sent[1]["body"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{question.x}", "{question.x}"),
        ("{question:>{question}}", "{question:>{question}}"),
        ("{}", "field {}"),
    ],
)
def test_check_template_refuses_all_but_bare_allowed_fields(template, message):
    with pytest.raises(RequestError, match=message.replace("{", r"\{").replace("[", r"\[")):
        check_template(template, ("question",))
    check_template("Q: {question} {{literal}} A:", ("question",), required=("question",))
