"""Token streaming as OpenAI's server-sent chunk events, fed from the model worker while it generates.

The worker thread reports a job's events (prompt built, text pieces, choice ends, the answer) into an asyncio queue
(`QueueSink`); the response turns each into a `chat.completion.chunk` as it arrives. The request waits for the first
event before answering, so a request the worker rejects (bad demos, unknown task) still gets its 4xx status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future

from fastapi.responses import StreamingResponse

from aim_icl.serve.schemas import Usage
from aim_icl.serve.service import GenerationJob, ModelService
from aim_icl.serve.worker import ModelWorker


class QueueSink:
    """A `StreamSink` that hands the worker thread's events to the event loop: ("start",), ("text", i, piece),
    ("end", i, reason), ("done", future)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.events = loop, asyncio.Queue()

    def start(self) -> None:
        self._put(("start",))

    def text(self, choice: int, piece: str) -> None:
        self._put(("text", choice, piece))

    def end(self, choice: int, reason: str) -> None:
        self._put(("end", choice, reason))

    def done(self, future: Future) -> None:
        self._put(("done", future))

    async def next(self, deadline: float) -> tuple:
        """The next event; TimeoutError past `deadline`."""
        return await asyncio.wait_for(self.events.get(), max(deadline - time.monotonic(), 0.0))

    def _put(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


async def stream_response(
    worker: ModelWorker, service: ModelService, job: GenerationJob, sink: QueueSink, mode: str, usage: bool
) -> StreamingResponse:
    """Queue `job` and, once its prompt is built, stream its answer; its error (4xx/5xx) if it fails before."""
    future = worker.submit_batched(service.generate, job)
    future.add_done_callback(sink.done)
    try:
        first = await sink.next(job.deadline)
    except TimeoutError:
        job.abandoned = True
        raise
    if first[0] == "done":
        first[1].result()  # raises the request's error
    header = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
    }
    header |= {"model": service.model_name, "aim_mode": mode}
    events = _events(job, sink, header, usage)
    return StreamingResponse(events, media_type="text/event-stream")


async def _events(job: GenerationJob, sink: QueueSink, header: dict, usage: bool) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        return _data({**header, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})

    try:
        for index in range(job.generation.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        while True:
            try:
                event = await sink.next(job.deadline)
            except TimeoutError:
                yield _error("the answer took longer than the request's time limit", 504)
                return
            if event[0] == "text":
                yield chunk(event[1], {"content": event[2]})
            elif event[0] == "end":
                yield chunk(event[1], {}, event[2])
            elif event[0] == "done":
                break
        error = event[1].exception()
        if error is not None:
            yield _error(f"generation failed: {error}", 500)
            return
        if usage:
            answer = event[1].result()
            counts = Usage.of(answer.prompt_tokens, answer.completion_tokens).model_dump()
            yield _data({**header, "choices": [], "usage": counts})
        yield "data: [DONE]\n\n"
    finally:
        job.abandoned = True  # the client left (or the answer is complete): stop generating for it


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _error(message: str, status: int) -> str:
    """OpenAI's error shape inside a stream (its client raises it); the HTTP status was sent with the first chunk."""
    return _data({"error": {"message": message, "type": "server_error", "code": status}})
