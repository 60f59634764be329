"""HTTP routes: OpenAI-compatible chat completions, named tasks, models, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from aim_icl.serve.chat import parse_chat
from aim_icl.serve.errors import RequestError
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
    TaskInfo,
    TaskRequest,
    Usage,
)
from aim_icl.serve.service import Answer, ModelService
from aim_icl.serve.streaming import QueueSink, stream_response
from aim_icl.serve.tasks import ServedTask, prepare_task

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    state = request.app.state
    return {"status": "ok", "model": state.service.model_name, "queue_waiting": state.worker.waiting}


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
    sink = QueueSink(asyncio.get_running_loop()) if body.stream else None
    job = await run_in_threadpool(
        service.prepare, service.chat_job(chat, body.aim_mode, generation, deadline, sink)
    )
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return await stream_response(state.worker, service, job, sink, body.aim_mode, usage)
    answer = await state.generate(job)
    return _completion(answer, service.model_name)


@router.post("/v1/tasks", status_code=201)
async def create_task(body: TaskRequest, request: Request) -> TaskInfo:
    state, config = request.app.state, request.app.state.config
    spec = await run_in_threadpool(prepare_task, body, config.images, config.max_demos)
    task = await state.run(lambda deadline: state.service.create_task(spec))
    return _task_info(task)


@router.get("/v1/tasks")
async def list_tasks(request: Request) -> dict:
    tasks = request.app.state.service.tasks
    return {"object": "list", "data": [_task_info(tasks.get(n)) for n in tasks.names()]}


@router.post("/v1/tasks/{name}/predict")
async def predict(name: str, body: PredictRequest, request: Request) -> Prediction:
    state, config = request.app.state, request.app.state.config
    limit = _token_limit(body.max_tokens or config.max_new_tokens, config.max_new_tokens_cap)
    deadline = time.monotonic() + config.timeout_s
    image = None if body.image is None else await run_in_threadpool(fetch_image, body.image, config.images)
    job = state.service.predict_job(name, image, body.question, Generation(limit), deadline)
    answer = await state.generate(await run_in_threadpool(state.service.prepare, job))
    return Prediction(
        task=name,
        answer=answer.text,
        mode=answer.mode,
        usage=_usage(answer),
        aim=_info(answer),
        demo_keys=answer.demo_keys,
    )


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
    return Usage.of(answer.prompt_tokens, answer.completion_tokens)


def _info(answer: Answer) -> AIMInfo:
    return AIMInfo(
        demos=answer.demos, bank_hits=answer.bank_hits, cached_prompt_tokens=answer.cached_prompt_tokens
    )


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
        aim_mode=answer.mode,
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
