"""The playground's server side in process, no browser: the page at `/` (open without the key, nothing from
elsewhere), world episodes drawn from a seed, and the fused-token readout (`aim-icl inspect`'s table)."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import httpx
import pytest
from PIL import Image

from aim_icl.core.demo import Demo
from aim_icl.core.readout import read_fused_tokens, readout_table
from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.service import ModelService
from aim_icl.world.checkpoint import load_shipped

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def world():
    return load_shipped()


@pytest.fixture
def app(world):
    app = create_app(ModelService(world), ServerConfig(api_key=KEY))
    yield app
    app.state.worker.close()


def call(app, *requests: tuple) -> list[httpx.Response]:
    """Each (method, path, json, headers) in turn, through the app in process."""

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return [await client.request(m, p, json=j, headers=h) for m, p, j, h in requests]

    return asyncio.run(scenario())


def image_of(url: str) -> Image.Image:
    header, _, data = url.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_the_page_needs_no_key_and_loads_nothing_from_elsewhere(app):
    page, models = call(app, ("GET", "/", None, {}), ("GET", "/v1/models", None, {}))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert models.status_code == 401  # the API still asks for the key
    assert not re.search(r"https?://", page.text)  # no CDN, no remote font or script
    assert not re.search(r"""(src|href)=["'](?!data:)""", page.text)  # no other file to fetch


def test_a_world_episode_is_drawn_from_its_seed(app):
    body = {"task": "fast_binding", "seed": 5, "shots": 4}
    first, again, other = call(
        app,
        ("POST", "/v1/world/episode", body, AUTH),
        ("POST", "/v1/world/episode", body, AUTH),
        ("POST", "/v1/world/episode", {**body, "seed": 6}, AUTH),
    )
    episode = first.json()
    assert episode == again.json() and episode != other.json()
    assert len(episode["demos"]) == 4 and episode["max_tokens"] == 3
    assert episode["answer"] in episode["candidates"] and len(episode["candidates"]) == 2
    assert {d["answer"] for d in episode["demos"]} == set(episode["candidates"])  # every name is shown
    assert {d["text"] for d in episode["demos"]} == {episode["query"]["text"]} == {"this is a"}
    assert image_of(episode["query"]["image"]).size == (32, 32)


def test_world_episode_errors_are_one_line_in_openais_shape(app):
    (no_key, bad_task, too_many) = call(
        app,
        ("POST", "/v1/world/episode", {}, {}),
        ("POST", "/v1/world/episode", {"task": "nope"}, AUTH),
        ("POST", "/v1/world/episode", {"shots": 33}, AUTH),
    )
    assert no_key.status_code == 401
    assert bad_task.status_code == 400 and bad_task.json()["error"]["message"].startswith(
        "task: Input should be"
    )
    assert too_many.status_code == 400 and "shots" in too_many.json()["error"]["message"]


def test_inspect_reads_a_chat_demo_as_aim_icl_inspect_does(app, world):
    episode = call(app, ("POST", "/v1/world/episode", {"seed": 1, "shots": 2}, AUTH))[0].json()
    demo = episode["demos"][0]
    body = {"image": demo["image"], "user": demo["text"], "assistant": demo["answer"], "top": 2}
    readout, as_text, missing = call(
        app,
        ("POST", "/v1/inspect", body, AUTH),
        (
            "POST",
            "/v1/inspect",
            {"image": demo["image"], "text": f"this is a {demo['answer']}", "top": 2},
            AUTH,
        ),
        ("POST", "/v1/inspect", {"image": demo["image"]}, AUTH),
    )
    text = f"{demo['text']} {demo['answer']}"  # the server's default chat demo template
    readings = read_fused_tokens(world, [Demo(image_of(demo["image"]).convert("RGB"), text)], top=2)[0]
    assert readout.json()["text"] == text
    assert readout.json()["table"] == readout_table(readings)
    assert [s["token"] for s in readout.json()["slots"]] == [r.token for r in readings]
    assert as_text.json() == readout.json()
    assert missing.status_code == 400 and "give the demo's text" in missing.json()["error"]["message"]
