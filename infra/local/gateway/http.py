"""uvicorn's httptools protocol, each response's head and its first body bytes written together.

uvicorn writes a response's status line and headers when the application sends
``http.response.start`` and its body when it sends ``http.response.body``: two ``send`` calls on
the socket for every answer, two TCP segments, and a reader that may wake twice (profiled on the
served gateway, one get_job at a time: 2 ``socket.send`` per request, the second of the
process's largest costs after the wait in epoll). Supabase's API gateway (Kong, i.e. nginx)
writes a small answer's header and body buffers in one ``writev``. Here the head is held until
the first write after it (the body, possibly empty) and goes out with it as one write: the same
bytes in the same order, one system call. Nothing else changes: the ``100 Continue`` interim
answer (written before a response starts) is written at once, a chunked or streamed body's later
chunks are written as they come, and a connection closed with only the head sent (the application
failed after starting its answer) still gets the head before the close, and a HEAD request's
answer (no body write) gets its head once its body message is sent, as uvicorn sends them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class HeadWithBody:
    """The transport as one response cycle sees it: its head held for the next write."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        cycle = self._cycle
        if not self._head_seen and cycle.response_started and not cycle.response_complete:
            # uvicorn marks the response started, then writes its head: this is the head
            self._head_seen = True
            self._head = bytes(data)
            return
        head, self._head = self._head, None
        self._transport.write(data if head is None else head + data)

    def release(self) -> None:
        """Write a head still held (a HEAD request's answer has no body write)."""
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """``http="httptools"``, each response cycle writing through ``HeadWithBody``.

    Its access log is on only when ``uvicorn.access`` would write a line: uvicorn turns it on
    when that logger has a handler (its default logging config gives it one) and then works out
    each answer's line arguments (the client's address, the URL-quoted path) before the logger
    drops it at the ``warning`` level the local servers run at.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = self.access_log and self.access_logger.isEnabledFor(logging.INFO)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # None or the same cycle: an upgrade (the websocket protocol takes the connection)
        if cycle is not None and cycle is not previous:
            transport = HeadWithBody(self.transport, cycle)
            cycle.transport = transport  # type: ignore[assignment]
            cycle_send = cycle.send

            async def send(message: ASGISendEvent) -> None:
                await cycle_send(message)
                if message["type"] == "http.response.body":
                    transport.release()

            # the application is handed ``cycle.send`` when its task runs, after this
            cycle.send = send  # type: ignore[method-assign]
