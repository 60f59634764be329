"""The HTTP/1.1 protocol `aim-icl serve` runs under uvicorn: uvicorn's h11 protocol with a deadline on a request's
headers and its refusals in the server's error shape.

uvicorn arms no timer while a request's headers arrive: a client sending one header byte a minute (slowloris)
holds its connection for ever. Here a request's head must be complete within `header_timeout_s` of the connection
opening or the previous answer, or the client gets 408 and the connection closes (silently when it sent nothing).
A head over `max_header_bytes` gets 431 before h11 parses it (h11's own limit only counts a head still incomplete,
so one sent in a single packet passed), and an unparsable one a JSON 400 (uvicorn's is plain text).
"""

from __future__ import annotations

import asyncio
import functools
import json
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from aim_icl.serve.errors import error_body


class LimitedH11Protocol(H11Protocol):
    def __init__(self, *args, header_timeout_s: float, max_header_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_header_bytes = header_timeout_s, max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's head, on a kept-alive connection

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # still reading a head: measure it before h11 takes it
            buffered = self.conn.trailing_data[0] + data
            end = buffered.find(b"\r\n\r\n")
            if (len(buffered) if end < 0 else end) > self.max_header_bytes:
                return self._refuse(
                    431, f"request headers are over the limit of {self.max_header_bytes} bytes"
                )
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole head arrived (or the connection failed)
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "the request is not valid HTTP/1.1")

    def _arm(self) -> None:
        self._disarm()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")
        else:  # an idle connection: closed as uvicorn closes kept-alive ones
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer with the error shape outside h11 (its state may be broken) and close the connection."""
        body = json.dumps(error_body(status, message)).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def protocol(header_timeout_s: float, max_header_bytes: int):
    """The protocol factory to pass as uvicorn's `http`."""
    return functools.partial(
        LimitedH11Protocol, header_timeout_s=header_timeout_s, max_header_bytes=max_header_bytes
    )
