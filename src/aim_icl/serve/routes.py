"""HTTP routes: OpenAI-compatible chat completions, named tasks, models, health and Prometheus metrics."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse

from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import fetch_image
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
from aim_icl.serve.service import Answer, Task, parse_chat, prepare_task

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
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state
    text = state.service.metrics.render(state.worker.waiting)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion | StreamingResponse:
    state, config = request.app.state, request.app.state.config
    service = state.service
    chat = await run_in_threadpool(
        parse_chat, body.messages, config.images, config.demo_template, config.max_demos
    )
    limit = _token_limit(body.token_limit(config.max_new_tokens), config.max_new_tokens_cap)
    answer = await state.run(lambda deadline: service.answer(chat, body.aim_mode, limit, deadline))
    completion = _completion(answer, service.model_name)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_sse(completion, usage), media_type="text/event-stream")
    return completion


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
    image = None if body.image is None else await run_in_threadpool(fetch_image, body.image, config.images)
    limit = _token_limit(body.max_tokens or config.max_new_tokens, config.max_new_tokens_cap)
    answer = await state.run(
        lambda deadline: state.service.predict(name, image, body.question, limit, deadline)
    )
    return Prediction(
        task=name,
        answer=answer.text,
        mode=answer.mode,
        usage=_usage(answer),
        aim=_info(answer),
        demo_keys=answer.demo_keys,
    )


def _token_limit(requested: int, cap: int) -> int:
    if requested > cap:
        raise RequestError(f"max_tokens {requested} is over this server's limit of {cap}")
    return requested


def _usage(answer: Answer) -> Usage:
    total = answer.prompt_tokens + answer.completion_tokens
    return Usage(
        prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens, total_tokens=total
    )


def _info(answer: Answer) -> AIMInfo:
    return AIMInfo(
        demos=answer.demos, bank_hits=answer.bank_hits, cached_prompt_tokens=answer.cached_prompt_tokens
    )


def _completion(answer: Answer, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AnswerMessage(content=answer.text))],
        usage=_usage(answer),
        aim_mode=answer.mode,
        aim=_info(answer),
    )


def _sse(completion: ChatCompletion, include_usage: bool) -> Iterator[str]:
    """The finished answer as OpenAI's chunk events: role, one chunk per word, finish, [usage], [DONE]."""
    base = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created}
    base |= {"model": completion.model, "aim_mode": completion.aim_mode}

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> str:
        return event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for piece in re.findall(r"\s*\S+", completion.choices[0].message.content):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if include_usage:
        yield event({**base, "choices": [], "usage": completion.usage.model_dump()})
    yield "data: [DONE]\n\n"


def _task_info(task: Task) -> TaskInfo:
    return TaskInfo(
        name=task.name,
        mode=task.mode,
        strategy=task.strategy,
        k=task.k,
        template=task.template,
        demo_keys=task.demo_keys,
        prefix_cache=task.cache is not None,
    )
