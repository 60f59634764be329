"""HTTP routes: OpenAI-compatible chat completions, named tasks, models, health and Prometheus metrics.

Every answer goes through one stream of its job's events (`streaming.events`): a streaming chat sends them as they
come, anything else collects them into its answer."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from aim_icl.serve.chat import parse_chat
from aim_icl.serve.errors import RequestError
from aim_icl.serve.events import Answer
from aim_icl.serve.images import fetch_image
from aim_icl.serve.metrics import CONTENT_TYPE
from aim_icl.serve.sampling import Generation
from aim_icl.serve.schemas import (
    AIMInfo,
    AnswerMessage,
    ChatCompletion,
    ChatRequest,
    Choice,
    Prediction,
    PredictRequest,
    TaskDeleted,
    TaskInfo,
    TaskList,
    TaskRequest,
    Usage,
)
from aim_icl.serve.service import ModelService
from aim_icl.serve.streaming import collect, events, stream_response
from aim_icl.serve.tasks import ServedTask, prepare_task

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    state = request.app.state
    engine = state.engine
    return {
        "status": "ok",
        "model": state.service.model_name,
        "queue_waiting": engine.waiting,
        "rows": engine.rows,
    }


@router.get("/v1/models")
async def models(request: Request) -> dict:
    name = request.app.state.service.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "aim-icl"}]}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion | StreamingResponse:
    state, config = request.app.state, request.app.state.config
    service = state.service
    _check_model(body.model, service.model_name)
    generation = _generation(body, config, service)
    chat = await run_in_threadpool(
        parse_chat, body.messages, config.images, config.demo_template, config.max_demos
    )
    deadline = time.monotonic() + config.timeout_s
    job = service.chat_job(chat, body.aim_mode, generation, deadline, stream=body.stream)
    stream = events(state.engine, await run_in_threadpool(service.prepare, job))
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        fields = {"model": service.model_name, "aim_mode": body.aim_mode}
        return await stream_response(stream, fields, body.n, usage)
    return _completion(await collect(stream, _left(request)), service.model_name)


@router.post("/v1/tasks", status_code=201)
async def create_task(body: TaskRequest, request: Request) -> TaskInfo:
    state, config = request.app.state, request.app.state.config
    spec = await run_in_threadpool(prepare_task, body, config.images, config.max_demos)
    task = await state.run(lambda deadline: state.service.create_task(spec))
    return _task_info(task)


@router.get("/v1/tasks")
async def list_tasks(request: Request) -> TaskList:
    service = await _synced(request)
    tasks = service.tasks
    storage = (
        tasks.path.name
        if tasks.persistent
        else "memory: lost when the server stops (serve --bank FILE keeps them)"
    )
    return TaskList(data=[_task_info(t) for t in tasks.all()], persistent=tasks.persistent, storage=storage)


@router.get("/v1/tasks/{name}")
async def get_task(name: str, request: Request) -> TaskInfo:
    return _task_info((await _synced(request)).task(name))


@router.delete("/v1/tasks/{name}")
async def delete_task(name: str, request: Request) -> TaskDeleted:
    state = request.app.state
    await state.run(lambda deadline: state.service.delete_task(name))
    return TaskDeleted(name=name)


@router.post("/v1/tasks/{name}/predict")
async def predict(name: str, body: PredictRequest, request: Request) -> Prediction:
    state, config = request.app.state, request.app.state.config
    service = await _synced(request)
    limit = _token_limit(body.max_tokens or config.max_new_tokens, config.max_new_tokens_cap)
    deadline = time.monotonic() + config.timeout_s
    image = None if body.image is None else await run_in_threadpool(fetch_image, body.image, config.images)
    job = service.predict_job(name, image, body.question, Generation(limit), deadline)
    answer = await collect(
        events(state.engine, await run_in_threadpool(service.prepare, job)), _left(request)
    )
    return Prediction(
        task=name,
        answer=answer.text,
        mode=answer.prompt.mode,
        usage=_usage(answer),
        aim=_info(answer),
        demo_keys=answer.prompt.demo_keys,
    )


def _left(request: Request):
    """A coroutine function that returns when the request's client has left (the server's next message once the
    body is read is the disconnect; `Request.is_disconnected` cannot see it through a `BaseHTTPMiddleware`)."""

    async def left() -> None:
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # no way to tell: wait for the answer
            await asyncio.Event().wait()

    return left


async def _synced(request: Request) -> ModelService:
    """The service, its tasks first brought in step with the task table when another process changed it."""
    state = request.app.state
    if await run_in_threadpool(state.service.tasks.stale):
        await state.run(lambda deadline: state.service.sync_tasks())
    return state.service


def _check_model(model: str | None, served: str) -> None:
    """OpenAI-compatible servers answer an unknown model with 404 (clients raise NotFoundError)."""
    if model is not None and model != served:
        raise RequestError(
            f"model {model!r} is not served here; this server serves {served!r} (GET /v1/models)", "not_found"
        )


def _generation(body: ChatRequest, config, service: ModelService) -> Generation:
    if body.n > config.max_n:
        raise RequestError(f"n: {body.n} choices is over this server's limit of {config.max_n}")
    limit = _token_limit(body.token_limit(config.max_new_tokens), config.max_new_tokens_cap)
    temperature, top_p = service.sampling_defaults()
    return Generation(
        max_tokens=limit,
        temperature=temperature if body.temperature is None else body.temperature,
        top_p=top_p if body.top_p is None else body.top_p,
        seed=body.seed,
        n=body.n,
        stop=tuple(body.stop),
    )


def _token_limit(requested: int, cap: int) -> int:
    if requested > cap:
        raise RequestError(f"max_tokens: {requested} is over this server's limit of {cap}")
    return requested


def _usage(answer: Answer) -> Usage:
    return Usage.of(answer.prompt.tokens, answer.completion_tokens)


def _info(answer: Answer) -> AIMInfo:
    prompt = answer.prompt
    return AIMInfo(demos=prompt.demos, bank_hits=prompt.bank_hits, cached_prompt_tokens=prompt.cached_tokens)


def _completion(answer: Answer, model: str) -> ChatCompletion:
    choices = [
        Choice(index=i, message=AnswerMessage(content=c.text), finish_reason=c.finish_reason)
        for i, c in enumerate(answer.choices)
    ]
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=_usage(answer),
        aim_mode=answer.prompt.mode,
        aim=_info(answer),
    )


def _task_info(task: ServedTask) -> TaskInfo:
    return TaskInfo(
        name=task.name,
        mode=task.mode,
        strategy=task.strategy,
        k=task.k,
        template=task.template,
        demo_keys=task.demo_keys,
        prefix_cache=task.cache is not None,
    )
