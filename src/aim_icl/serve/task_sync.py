"""Named tasks across server replicas: a task created on one replica is created on every other one too.

A task lives in its replica's memory (demos read into its bank, a prefix cache), and a load balancer sends the
next request anywhere. So each replica publishes the body of every `POST /v1/tasks` it answered with 201 to a
`TaskBoard` (one small Ray actor per application), and before answering any `/v1/tasks` request it replays the
bodies it has not seen through its own `POST /v1/tasks`: the same validation, limits and code path as a client's
request, no second copy of the route. A replica started later (autoscaling, replacement) catches up the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx

logger = logging.getLogger(__name__)

TASKS_PATH = "/v1/tasks"


class TaskBoard:
    """The task requests every replica answered with 201, in order (a Ray actor: one per application)."""

    def __init__(self):
        self.bodies: list[bytes] = []

    def publish(self, body: bytes) -> int:
        self.bodies.append(body)
        return len(self.bodies)

    def since(self, start: int) -> list[bytes]:
        return self.bodies[start:]


class TaskSync:
    """ASGI middleware keeping this replica's tasks in step with the board (see the module docstring).

    `board` is the `TaskBoard` actor handle, `known(name)` tells whether this replica has a task, `headers` are
    sent with replays (the API key).
    """

    def __init__(self, app, board, known: Callable[[str], bool], headers: dict[str, str] | None = None):
        self.app, self.board, self.known, self.headers = app, board, known, headers or {}
        self.seen = 0
        self._lock = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(TASKS_PATH):
            return await self.app(scope, receive, send)
        await self.catch_up(scope["app"])
        if scope["method"] != "POST" or scope["path"].rstrip("/") != TASKS_PATH:
            return await self.app(scope, receive, send)
        body, status = bytearray(), 0

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def watching_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, recording_receive, watching_send)
        if status == 201:  # the next catch_up meets it again and skips it: the name is known here
            await self.board.publish.remote(bytes(body))

    async def catch_up(self, root) -> None:
        """Create here every task published since this replica last looked (`root`: the app, which routes read)."""
        async with self._lock:  # one catch-up at a time, so a task is replayed once
            bodies = await self.board.since.remote(self.seen)
            for body in bodies:
                self.seen += 1
                name = _task_name(body)
                if name is None or self.known(name):
                    continue
                status, detail = await self._replay(body, root)
                if status != 201:
                    logger.warning(
                        "task %r from another replica was refused here (%s): %s", name, status, detail
                    )

    async def _replay(self, body: bytes, root) -> tuple[int, str]:
        async def below(
            scope, receive, send
        ):  # the app below this middleware (no recursion), as routes expect it
            await self.app({**scope, "app": root}, receive, send)

        transport = httpx.ASGITransport(app=below)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            headers = {**self.headers, "content-type": "application/json"}
            response = await client.post(TASKS_PATH, content=body, headers=headers)
        return response.status_code, response.text[:200]


def _task_name(body: bytes) -> str | None:
    try:
        name = json.loads(body).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
