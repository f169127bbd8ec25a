"""infra.local.gateway.http.HttpProtocol: uvicorn's httptools protocol writing a response's head
with its first body bytes in one write, the same bytes in the same order as uvicorn sends them.

A real uvicorn server on a loopback socket and a raw client; the server's transport is wrapped
to record what each write hands the kernel (one entry per write).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import uvicorn

from infra.local.gateway.http import HttpProtocol

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Recorded:
    """A transport recording each write, then making it."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answers by path: /json a body with its length, /stream two chunks, /fail fails after
    starting its answer, anything else echoes the request's body."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        return
    answer = b'{"ok":true}' if path in ("/json", "/fail") else body
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/fail":
        raise RuntimeError("the application failed after starting its answer")
    await send({"type": "http.response.body", "body": answer})


@contextmanager
def _served(
    protocols: list[HttpProtocol] | None = None, log_level: str = "critical"
) -> Iterator[tuple[int, list[bytes]]]:
    writes: list[bytes] = []

    class Recording(HttpProtocol):
        def connection_made(self, transport: Any) -> None:  # uvloop's or asyncio's
            super().connection_made(_Recorded(transport, writes))  # type: ignore[arg-type]
            if protocols is not None:
                protocols.append(self)

    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        _app, http=Recording, lifespan="off", log_level=log_level, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield sock.getsockname()[1], writes
    finally:
        server.should_exit = True
        thread.join(10)


def _exchange(port: int, request: bytes, *, until: bytes) -> bytes:
    """Send ``request`` and read until ``until`` ends what came back (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        received = b""
        while not received.endswith(until):
            chunk = client.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(extra) + b"\r\n" + body


def _content(writes: list[bytes]) -> list[bytes]:
    return [w for w in writes if w]  # uvicorn may write an empty body: nothing is sent


def test_an_answer_with_a_body_is_one_write_of_its_head_and_body() -> None:
    with _served() as (port, writes):
        received = _exchange(port, _post("/json", b""), until=b'{"ok":true}')
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b'content-length: 11\r\n\r\n{"ok":true}')
    assert _content(writes) == [received]


def test_two_answers_on_one_connection_are_one_write_each_in_order() -> None:
    with _served() as (port, writes):
        received = _exchange(
            port, _post("/echo", b"first") + _post("/echo", b"second"), until=b"second"
        )
    first, second = _content(writes)
    assert first.endswith(b"\r\n\r\nfirst") and second.endswith(b"\r\n\r\nsecond")
    assert received == first + second


def test_a_head_request_gets_its_head_though_no_body_is_written() -> None:
    with _served() as (port, writes):
        received = _exchange(port, b"HEAD /json HTTP/1.1\r\nhost: t\r\n\r\n", until=b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 11" in received
    assert _content(writes) == [received]


def test_a_continue_goes_at_once_and_the_answer_after_it() -> None:
    request = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n"
    request += b"expect: 100-continue\r\n\r\n"
    with _served() as (port, writes), socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(10)
        client.sendall(request)
        assert client.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"body")
        received = b""
        while not received.endswith(b"body"):
            received += client.recv(65536)
    assert _content(writes) == [b"HTTP/1.1 100 Continue\r\n\r\n", received]


def test_a_streamed_body_sends_its_head_with_the_first_chunk_and_the_rest_as_it_comes() -> None:
    with _served() as (port, writes):
        received = _exchange(port, _post("/stream", b""), until=b"0\r\n\r\n")
    head_and_first, rest = _content(writes)
    assert head_and_first.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\none\r\n")
    assert rest == b"3\r\ntwo\r\n0\r\n\r\n"
    assert received == head_and_first + rest


def test_an_application_failing_after_its_head_still_sends_the_head_then_closes() -> None:
    with _served() as (port, writes):
        received = _exchange(port, _post("/fail", b""), until=b"never")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\n")
    assert _content(writes) == [received]


@contextmanager
def _access_logger() -> Iterator[list[logging.LogRecord]]:
    """``uvicorn.access`` with a handler (as uvicorn's default logging config gives it one),
    recording its lines (the server's ``log_level`` sets its level)."""
    records: list[logging.LogRecord] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("uvicorn.access")
    handler, before = Handler(), logger.level
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def test_the_access_log_still_writes_each_answers_line_when_its_logger_takes_info() -> None:
    with _access_logger() as records, _served(log_level="info") as (port, _):
        _exchange(port, _post("/json", b""), until=b'{"ok":true}')
    (record,) = records
    assert record.args is not None and tuple(record.args)[1:] == ("POST", "/json", "1.1", 200)


def test_the_access_log_is_off_when_its_logger_drops_info_lines() -> None:
    protocols: list[HttpProtocol] = []
    with _access_logger() as records, _served(protocols, "warning") as (port, _):
        received = _exchange(port, _post("/json", b""), until=b'{"ok":true}')
    assert received.endswith(b'{"ok":true}') and records == []
    assert [p.access_log for p in protocols] == [False]
