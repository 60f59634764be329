"""Issue 21 against a real `aim-icl serve`: a few hundred generated odd requests get no 5xx and the server keeps
answering; the limits that live in the HTTP protocol (header size, header read time) and a client leaving mid-body.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import pytest
from conftest import serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aim_icl.testing.tiny import tiny_image

MAX_HEADER_BYTES = 4096
READ_TIMEOUT = 2
TASK = "fuzz"
ROUTES = (
    "/v1/chat/completions",
    "/v1/tasks",
    f"/v1/tasks/{TASK}/predict",
    "/v1/inspect",
    "/v1/world/episode",
)


@pytest.fixture(scope="module")
def server(saved_llava):
    arguments = [
        "--model", str(saved_llava.model), "--projector", str(saved_llava.projector),
        "--max-header-bytes", str(MAX_HEADER_BYTES), "--read-timeout", str(READ_TIMEOUT), "--max-demos", "3",
        "--max-new-tokens", "2", "--max-image-bytes", "100000", "--max-tasks", "20",
    ]  # fmt: skip
    with serving(*arguments) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/v1/tasks", json={"name": TASK, "demos": [{"text": "red"}]}).status_code == 201
        yield url, http


def still_answers(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    assert reply.status_code == 200, reply.text


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- odd values -------------------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "", "\udfff", "a\ud800b", "{question.x}", "{question:99999999}", "{question:{question}}", "{", "<image>",
        "..", ".", "x" * 5000, "data:image/png;base64,xx", "data:image/png;base64," + "A" * 400, "/etc/passwd",
        "http://example.com/a.png", data_url(tiny_image(1)), "\x00", "é" * 10, "user", "assistant", "aim", "icl",
    ]
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-38, 1e-46, 5e-324, 1e308, -0.0, 0.5, 2.0000001]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT, st.text(max_size=20))
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
SMALL_TOKENS = st.one_of(st.integers(-2, 4), JUNK)  # a valid request generates at most a few tokens


def maybe(value) -> st.SearchStrategy:
    return st.one_of(value, JUNK)


CONTENT = maybe(
    st.one_of(
        ODD_TEXT,
        st.lists(
            st.fixed_dictionaries(
                {"type": maybe(st.sampled_from(["text", "image_url"]))},
                optional={
                    "text": maybe(ODD_TEXT),
                    "image_url": maybe(st.fixed_dictionaries({"url": ODD_TEXT})),
                },
            ),
            max_size=3,
        ),
    )
)
MESSAGE = st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["user", "assistant", "system", "tool"]))}, optional={"content": CONTENT}
)
BODIES = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {"messages": maybe(st.lists(MESSAGE, min_size=1, max_size=4))},
        optional={
            "max_tokens": SMALL_TOKENS, "temperature": maybe(NUMBERS), "top_p": maybe(NUMBERS),
            "n": maybe(st.integers(-1, 3)), "seed": maybe(NUMBERS), "stop": maybe(st.lists(ODD_TEXT, max_size=5)),
            "stream": maybe(st.booleans()), "aim_mode": maybe(st.sampled_from(["aim", "icl", "text", "zero"])),
            "model": maybe(ODD_TEXT),
        },
    ),
    "/v1/tasks": st.fixed_dictionaries(
        {"name": maybe(ODD_TEXT)},
        optional={
            "demos": maybe(st.lists(st.fixed_dictionaries({"text": ODD_TEXT}, optional={"image": ODD_TEXT}), max_size=3)),
            "demo_keys": maybe(st.lists(ODD_TEXT, max_size=2)), "k": maybe(st.integers(-1, 4)),
            "strategy": maybe(st.sampled_from(["fixed", "random", "similarity"])),
            "mode": maybe(st.sampled_from(["aim", "icl", "text", "zero"])), "template": maybe(ODD_TEXT),
        },
    ),
    f"/v1/tasks/{TASK}/predict": st.fixed_dictionaries(
        {"question": maybe(ODD_TEXT)}, optional={"image": maybe(ODD_TEXT), "max_tokens": SMALL_TOKENS}
    ),
    "/v1/inspect": st.fixed_dictionaries(
        {}, optional={"text": maybe(ODD_TEXT), "user": maybe(ODD_TEXT), "assistant": maybe(ODD_TEXT),
                      "image": maybe(ODD_TEXT), "top": maybe(st.integers(-1, 12))},
    ),
    "/v1/world/episode": st.fixed_dictionaries(
        {}, optional={"task": maybe(ODD_TEXT), "seed": maybe(NUMBERS), "shots": maybe(st.integers(-1, 40))}
    ),
}  # fmt: skip
REQUESTS = st.one_of(
    *[st.tuples(st.just(route), maybe(body)) for route, body in BODIES.items()],
    st.tuples(st.sampled_from([*ROUTES, "/v1/tasks/../predict", "/v1/nope"]), JUNK),
)


def test_odd_requests_get_no_5xx_and_the_server_keeps_answering(server):
    url, http = server

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(REQUESTS)
    def no_5xx(request):
        route, body = request
        content = json.dumps(
            body
        ).encode()  # escaped to ASCII: lone surrogates, NaN and Infinity as JSON spells them
        response = http.post(route, content=content, headers={"Content-Type": "application/json"})
        assert response.status_code < 500, (route, body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"] == response.status_code and "\n" not in error["message"]
        elif response.headers["content-type"].startswith("text/event-stream"):
            assert '"error"' not in response.text, (route, body, response.text)

    no_5xx()
    still_answers(http)
    assert 'status="5' not in http.get("/metrics").text


# -- limits in the HTTP protocol ----------------------------------------------------------------------------------


def raw_exchange(url: str, head: bytes, wait: float = 0.0) -> bytes:
    """Send `head` on a fresh connection, wait, and read what the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT + 10) as sock:
        sock.sendall(head)
        time.sleep(wait)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_headers_over_the_limit_get_431(server):
    url, http = server
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    status, error = status_and_error(raw_exchange(url, head))
    assert status == 431 and f"over the limit of {MAX_HEADER_BYTES} bytes" in error["message"]
    still_answers(http)


def test_headers_sent_too_slowly_get_408(server):
    url, http = server
    started = time.monotonic()
    status, error = status_and_error(raw_exchange(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"))
    assert status == 408 and "not received within" in error["message"]
    assert time.monotonic() - started < READ_TIMEOUT + 5
    still_answers(http)


def test_a_body_sent_too_slowly_gets_408(server):
    url, _ = server
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    status, error = status_and_error(raw_exchange(url, head))
    assert status == 408 and "request body not received" in error["message"]


def test_a_client_leaving_mid_body_is_counted_499_not_500(server):
    url, http = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"messages"'
        )
        time.sleep(0.3)
    for _ in range(50):
        metrics = http.get("/metrics").text
        if 'status="499"' in metrics:
            break
        time.sleep(0.1)
    assert 'status="499"' in metrics  # counted before any route matched
    assert 'status="500"' not in metrics
    still_answers(http)
