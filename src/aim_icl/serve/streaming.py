"""A job's events on the request's event loop: the one stream every answer goes through, and OpenAI's chunks.

`events(engine, job)` queues a prepared job and yields its events (`serve.events`) as the engine reports them;
the job's error is raised where it comes, and past the job's deadline TimeoutError. However the stream ends
(answered, failed, timed out, or the client gone: the consumer stops iterating or is cancelled), the job is
cancelled on the way out, and the engine frees its rows at its next step. A non-streaming request `collect`s the
stream into its answer; a streaming one waits for the first event (so a request the engine refuses still gets its
4xx status) and sends the rest as `chat.completion.chunk` server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress

from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from aim_icl.serve.events import Answer, Done, Event, Failed, Finished, Text
from aim_icl.serve.schemas import Usage

FIRST = asyncio.FIRST_COMPLETED


async def events(engine, job) -> AsyncIterator[Event]:
    """Queue `job` on `engine` (QueueFull when it is full) and yield its events up to `Done`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event: Event) -> None:  # on the engine's thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            job.cancelled = True

    job.emit = emit
    engine.start(job)
    try:
        while True:
            event = await asyncio.wait_for(queue.get(), max(job.deadline - time.monotonic(), 0.0))
            if isinstance(event, Failed):
                raise event.error
            yield event
            if isinstance(event, Done):
                return
    finally:
        job.cancelled = True  # answered, failed, timed out or gone: no more steps for it


async def collect(stream: AsyncIterator[Event], client_gone: Callable[[], Awaitable] | None = None) -> Answer:
    """The answer at the end of a job's stream. `client_gone()` returns when the client has left: then
    ClientDisconnect, and the job's rows are freed."""
    watcher = None if client_gone is None else asyncio.ensure_future(client_gone())
    try:
        async with aclosing(stream):
            while True:
                event = await _next(stream, watcher)
                if isinstance(event, Done):
                    return event.answer
    finally:
        if watcher is not None:
            watcher.cancel()


async def _next(stream: AsyncIterator[Event], watcher: asyncio.Future | None) -> Event:
    step = asyncio.ensure_future(anext(stream))
    try:
        if watcher is not None and step not in (await asyncio.wait({step, watcher}, return_when=FIRST))[0]:
            step.cancel()  # the stream's own `finally` cancels the job
            with suppress(asyncio.CancelledError):
                await step
            raise ClientDisconnect()
        return await step
    except StopAsyncIteration:
        raise RuntimeError("the engine ended a job without an answer") from None


async def stream_response(
    stream: AsyncIterator[Event], fields: dict, choices: int, usage: bool
) -> StreamingResponse:
    """Wait for the job's first event (its errors raise here, before any status is sent), then stream the rest as
    chunks carrying `fields` (model, aim_mode)."""
    await anext(stream)  # Started
    header = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
    }
    return StreamingResponse(_chunks(stream, header | fields, choices, usage), media_type="text/event-stream")


async def _chunks(
    stream: AsyncIterator[Event], header: dict, choices: int, usage: bool
) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        return _data({**header, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})

    async with aclosing(stream):
        for index in range(choices):
            yield chunk(index, {"role": "assistant", "content": ""})
        try:
            async for event in stream:
                if isinstance(event, Text):
                    yield chunk(event.choice, {"content": event.piece})
                elif isinstance(event, Finished):
                    yield chunk(event.choice, {}, event.reason)
                elif isinstance(event, Done):
                    answer = event.answer
        except TimeoutError:
            yield _error("the answer took longer than the request's time limit", 504)
            return
        except Exception as err:  # the status went with the first chunk: the error goes in the stream
            yield _error(f"generation failed: {err}", 500)
            return
    if usage:
        counts = Usage.of(answer.prompt.tokens, answer.completion_tokens).model_dump()
        yield _data({**header, "choices": [], "usage": counts})
    yield "data: [DONE]\n\n"


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _error(message: str, status: int) -> str:
    """OpenAI's error shape inside a stream (its client raises it); the HTTP status was sent with the first chunk."""
    return _data({"error": {"message": message, "type": "server_error", "code": status}})
