"""The app factory: routes + error handlers + API key + request limits + the engine (one model thread scheduling
generation per step, behind a bounded queue). `create_app(service)` builds everything from a service made with its
`ServerConfig` and assumes nothing about the process it runs in (a Ray Serve deployment wraps the same app)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from aim_icl.errors import AIMError
from aim_icl.serve.config import ServerConfig
from aim_icl.serve.engine import Engine, QueueFull
from aim_icl.serve.errors import STATUS, RequestError, error_body
from aim_icl.serve.playground import router as playground_router
from aim_icl.serve.routes import router
from aim_icl.serve.service import ModelService

__all__ = [
    "ServerConfig",
    "create_app",
]  # ServerConfig lives in `serve.config` (no FastAPI): importable here too

logger = logging.getLogger(__name__)

CLIENT_GONE = 499  # the status counted for a request whose client left before its answer (as nginx)
OPEN_PATHS = ("/health", "/")  # answered without the API key (readiness probes; the playground page, no data)


def create_app(service: ModelService, config: ServerConfig | None = None) -> FastAPI:
    """The app serving `service` under its config; `config` serves the same service (model, bank, tasks) under
    another one."""
    if config is not None and config != service.config:
        service = service.with_config(config)
    config = service.config
    engine = Engine(service, config)
    service.metrics.watch_queue(lambda: engine.waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.wrap_future(engine.started)  # a bank or task table that cannot be read stops the start
        yield
        try:
            engine.submit(service.close)  # the bank's connection belongs to the engine's thread
        except QueueFull:
            logger.warning("the queue was full at shutdown: the bank is closed with the process")
        engine.close()

    app = FastAPI(title="aim-icl", lifespan=lifespan)
    app.state.service, app.state.config, app.state.engine = service, config, engine
    app.state.worker = engine  # the name tests and tools used for the model's thread
    app.state.run = _runner(engine, config.timeout_s)
    app.include_router(router)
    app.include_router(playground_router)  # GET /: the playground page
    _add_error_handlers(app, config)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.read_timeout_s)
    if config.api_key:
        app.middleware("http")(_auth(config.api_key))
    app.middleware("http")(_observe(service))  # outermost: counts refusals too
    return app


class ErrorJSON(JSONResponse):
    """JSON escaped to ASCII: a message quoting what a client sent (a lone surrogate included) always encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error_response(
    status: int, message: str, headers: dict | None = None, param: str | None = None
) -> JSONResponse:
    """OpenAI's error shape (`errors.error_body`), which its clients raise with the message."""
    return ErrorJSON(error_body(status, message, param), status_code=status, headers=headers)


def _runner(engine: Engine, timeout_s: float) -> Callable:
    async def run(fn: Callable[[float], Any]) -> Any:
        """Run `fn(deadline)` on the model's thread between steps; 503 when the queue is full, 504 past the
        deadline."""
        deadline = time.monotonic() + timeout_s
        future = engine.submit(fn, deadline)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)  # cancels it if still waiting

    return run


def _add_error_handlers(app: FastAPI, config: ServerConfig) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # no route, wrong method, unreadable body
        return error_response(exc.status_code, _http_message(request, exc), exc.headers)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return error_response(STATUS.get(exc.kind, 400), str(exc))

    @app.exception_handler(AIMError)
    async def aim_error(request: Request, exc: AIMError):
        return error_response(400, str(exc))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull):
        message = f"the server is busy ({config.queue_size} requests waiting); retry shortly"
        return error_response(503, message, {"Retry-After": "1"})

    @app.exception_handler(TimeoutError)
    async def timeout(request: Request, exc: TimeoutError):
        return error_response(504, f"the request took longer than {config.timeout_s:g} s")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The deepest problem as one line (in a union, the branch that got furthest), and the body field it is in
    (OpenAI's `param`)."""
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    problem = first.get("msg", "").removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{where or 'body'}: {problem}{more}", where or None


def _http_message(request: Request, exc: HTTPException) -> str:
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return f"{where}: no such route; the API is under /v1 (GET /v1/models, POST /v1/chat/completions)"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        return f"{where}: method not allowed here; use {allowed}"
    if exc.status_code == 400:
        return f"{where}: the request body cannot be read ({exc.detail}); send UTF-8 JSON"
    return f"{where}: {exc.detail}"


def _auth(api_key: str) -> Callable:
    expected = f"Bearer {api_key}".encode()

    async def check_key(request: Request, call_next):
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                reason = "wrong API key" if given else "missing API key"
                return error_response(
                    401, f"{reason}: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
                )
        return await call_next(request)

    return check_key


def _observe(service: ModelService) -> Callable:
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except ClientDisconnect:  # it left while sending its body: nobody to answer, nothing went wrong here
            response = Response(status_code=CLIENT_GONE)
        except Exception:
            logger.exception("unhandled error on %s", request.url.path)
            response = error_response(500, "internal error; see the server log")
        route = getattr(request.scope.get("route"), "path", "unmatched")
        service.metrics.observe_request(route, response.status_code, time.perf_counter() - start)
        return response

    return observe


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, declared (Content-Length) or streamed (chunked), and bodies
    not received within `timeout_s` with 408 (a slow client holds no connection for long)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body, more, deadline = bytearray(), True, time.monotonic() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                message = f"request body not received within {self.timeout_s:g} s; send it at once"
                return await error_response(408, message, {"Connection": "close"})(scope, receive, send)
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"request body is over the limit of {self.max_bytes} bytes")
        await response(scope, receive, send)
