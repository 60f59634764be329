"""The playground: a page at `/` that compares the four modes side by side, and the two endpoints it needs that the
public API lacks.

- `GET /`: the page (`static/playground.html`, one file, shipped in the package; it loads nothing from elsewhere and
  talks to `/v1/chat/completions`, `/v1/tasks` and the two endpoints below).
- `POST /v1/world/episode`: a fresh in-context episode of the embedded world drawn from a seed (a fast-binding or
  caption-style item of `aim_icl.world.tasks`): demo scenes and their texts, the query scene, the right answer.
  No model is needed; the scenes are pictures any model can be shown, but only the world model knows their words.
- `POST /v1/inspect`: the fused-token readout of demos (what `aim-icl inspect` prints): each slot's own token and
  the vocabulary tokens nearest to the fused vector the projector wrote there. Runs on the model worker.
"""

from __future__ import annotations

import base64
import io
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from aim_icl.serve.images import fetch_image
from aim_icl.serve.schemas import Body

router = APIRouter()

WorldTask = Literal["fast_binding", "fast_binding_4way", "caption_style"]
MAX_EPISODE_SHOTS = 32
MAX_TOP = 10


class EpisodeRequest(Body):
    task: WorldTask = "fast_binding"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    shots: int = Field(4, ge=1, le=MAX_EPISODE_SHOTS)


class EpisodeTurn(BaseModel):
    image: str  # PNG data URL
    text: str  # the user turn's text
    answer: str | None = None  # the assistant's answer (demos only)


class Episode(BaseModel):
    """A chat-ready episode: each demo is a user turn (image + text) and the assistant's answer."""

    task: WorldTask
    seed: int
    demos: list[EpisodeTurn]
    query: EpisodeTurn
    answer: str  # the right answer to the query
    candidates: list[str]  # the item's closed answer set
    max_tokens: int  # enough for the longest answer


class InspectRequest(Body):
    """One demo: its image (data URL or an allowed path; None for text only) and its text, given as `text` or as a
    chat example (`user` and `assistant`, joined by the server's demo template as a chat demo is)."""

    image: str | None = None
    text: str | None = None
    user: str | None = None
    assistant: str | None = None
    top: int = Field(3, ge=1, le=MAX_TOP)

    @model_validator(mode="after")
    def _one_text(self) -> InspectRequest:
        if not self.text and self.assistant is None:
            raise ValueError("give the demo's text, or user and assistant as in a chat example")
        return self


class Slot(BaseModel):
    token: str  # the demo text's own token at this slot
    nearest: list[str]  # vocabulary tokens nearest to the fused vector, nearest first
    distances: list[float]


class Readout(BaseModel):
    text: str  # the demo text that was read
    slots: list[Slot]
    table: str  # the same as `aim-icl inspect` prints it


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    html = resources.files("aim_icl.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.post("/v1/world/episode")
async def world_episode(body: EpisodeRequest) -> Episode:
    return await run_in_threadpool(draw_episode, body.task, body.seed, body.shots)


@router.post("/v1/inspect")
async def inspect(body: InspectRequest, request: Request) -> Readout:
    state, config = request.app.state, request.app.state.config
    image = None if body.image is None else await run_in_threadpool(fetch_image, body.image, config.images)
    text = body.text or config.demo_template.format(user=body.user or "", assistant=body.assistant).strip()
    aim = state.service.aim
    readings = await state.run(lambda deadline: _read(aim, image, text, body.top))
    slots = [Slot(token=r.token, nearest=list(r.nearest), distances=list(r.distances)) for r in readings]
    return Readout(text=text, slots=slots, table=_table(readings))


def draw_episode(task: str, seed: int, shots: int) -> Episode:
    """The first item of world task `task` drawn from `seed` with `shots` demos (the same item `aim-icl eval`
    scores first for that seed)."""
    from aim_icl.world.tasks import WORLD_TASKS

    built = WORLD_TASKS[task](seed, n_items=1, max_shots=shots)
    item = built.test[0]
    prompt = built.query_text(item)
    demos = [
        EpisodeTurn(image=_data_url(d.load_image()), text=prompt, answer=d.demo_answer) for d in item.support
    ]
    return Episode(
        task=task,
        seed=seed,
        demos=demos,
        query=EpisodeTurn(image=_data_url(item.load_image()), text=prompt),
        answer=item.demo_answer,
        candidates=list(built.candidates_for(item)),
        max_tokens=built.max_new_tokens,
    )


def _read(aim, image, text: str, top: int):
    from aim_icl.core.demo import Demo
    from aim_icl.core.readout import read_fused_tokens

    return read_fused_tokens(aim, [Demo(image, text)], top)[0]


def _table(readings) -> str:
    from aim_icl.core.readout import readout_table

    return readout_table(readings)


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
