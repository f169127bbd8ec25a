"""The local function host: every function served as Cloud Functions gen2 serves it, behind
one front at the cloudfunctions.net URL scheme.

In production each function is its own Cloud Run service: its own instances, each running
``functions-framework --target=<entry point>`` (functions_framework._http.gunicorn: gunicorn,
``WORKERS`` worker processes, default 1, each with a gthread pool of ``THREADS`` threads,
default 4 per CPU, and keep-alive), and Google's front end routes
``https://REGION-PROJECT.cloudfunctions.net/<name>/<rest>`` to it with the path ``/<rest>``.

Here the same: one ``python -m functions_framework`` process per function on a private port
(so the processor's AI work never shares an interpreter with the API, and each function
imports only what it uses), and a small asyncio front on ``--port`` that keeps client
connections alive, strips ``/<name>`` and forwards each request over a pooled keep-alive
connection to that function's server. ``GET /`` lists the functions once all of them answer.
The front's event loop is uvloop (a dev dependency): the same asyncio code at about half the
CPU per proxied request of the standard loop (0.07 vs 0.12 ms, measured on this machine). The
usual exchange runs in protocol callbacks rather than stream coroutines, the head forwarded as
it came but for its start line and hop-by-hop fields (``Front``; ``scripts/bench_front.py``).

    python -m infra.local.host [--host 127.0.0.1] [--port 8080]

The host is one process group (the supervisor, this module, and its function servers), so
the stack can kill it all at once, as a crashed instance dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

# the table deploy.sh deploys (standard library only, as this module)
from shared.functions import BY_NAME, FUNCTIONS, Function

REPO_ROOT = Path(__file__).resolve().parents[2]
#: gunicorn's gthread worker closes a kept-alive connection after 2 s idle (its default
#: ``keepalive``); the front drops its own idle upstream connections before that, so it never
#: writes a request into a connection the server is closing.
UPSTREAM_IDLE_S = 1.0
_MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = {204, 304}
#: RFC 9110 9.2.2's idempotent methods: the only requests the front sends again after a
#: pooled connection closed with no answer (the function may have run the request before it
#: died), as nginx's proxy_next_upstream and Go's Transport decide
_IDEMPOTENT = {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}
_BARE_CR_LF_NUL = re.compile(rb"[\r\n\x00]")


#: never cut for being named in ``Connection``: the body's framing (cutting it would leave the
#: body to be read as the next request) and the host
_NEVER_CUT = {b"content-length", b"transfer-encoding", b"host"}
_NOT_NAMED = _NEVER_CUT | _HOP_BY_HOP
#: the usual Connection values, which name no other field
_CONNECTION_PLAIN = {b"keep-alive", b"close"}


def _connection_named(value: bytes) -> list[bytes]:
    """The fields a (lowercased) ``Connection`` value names, which are hop-by-hop too and cut
    when the message is forwarded (RFC 9110 7.6.1), but for ``_NEVER_CUT``."""
    names = (token.strip() for token in value.split(b","))
    return [name for name in names if name and name not in _NOT_NAMED]


class _HasSocket(Protocol):
    def get_extra_info(self, name: str, default: object = None) -> object: ...


def _no_delay(connection: _HasSocket) -> None:
    """Small messages go out at once (no Nagle wait for the peer's ACK): every connection the
    front holds carries one small request or answer at a time."""
    sock = connection.get_extra_info("socket")  # a socket-like object (asyncio's, uvloop's)
    if sock is not None:
        cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...


class BadRequest(Exception):
    """The client sent something the front cannot frame; answered 400 and closed."""


@dataclass
class Head:
    """A parsed HTTP/1.1 message head: start line and raw header lines."""

    start: bytes
    headers: list[tuple[bytes, bytes]]

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def encode(self, *, close: bool) -> bytes:
        lines = [self.start]
        named = set()
        for key, value in self.headers:
            if key.lower() == b"connection":
                named.update(_connection_named(value.lower()))
        lines += [
            k + b": " + v
            for k, v in self.headers
            if k.lower() not in _HOP_BY_HOP and k.lower() not in named
        ]
        if close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @property
    def wants_close(self) -> bool:
        connection = (self.get(b"connection") or b"").lower()
        return b"close" in connection or self.start.endswith(b"HTTP/1.0")


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None at a clean end of the connection."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("truncated head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("head too large") from None
    return parse_head(raw[:-4])


def parse_head(raw: bytes) -> Head:
    """A head without its blank line, read leniently (spaces around names and values)."""
    start, *lines = raw.split(b"\r\n")
    if _BARE_CR_LF_NUL.search(raw.replace(b"\r\n", b"")):
        # a bare CR or LF, or a NUL, in a line: one reader splits lines there, another does
        # not, so the two frame the message differently (RFC 9112 2.2, RFC 9110 5.5: reject)
        raise BadRequest("bare CR, LF or NUL")
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest("malformed header")
        headers.append((name.strip(), value.strip()))
    return Head(start, headers)


async def copy_body(head: Head, reader: asyncio.StreamReader, writer: Writable) -> bool:
    """Copy the body framed by ``head`` from reader to writer; False if it ran to EOF (the
    connection cannot be reused)."""
    if _is_chunked(head):
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(b"\r\n")
                return True
            writer.write(await reader.readexactly(size + 2))
    length = head.get(b"content-length")
    if length is not None:
        if int(length):
            writer.write(await reader.readexactly(int(length)))
        return True
    return False


@dataclass
class Backend:
    """One function's server and the idle keep-alive connections the front holds to it."""

    name: str
    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(
        default_factory=list
    )
    #: the same, for the front's usual path (``_Client``/``_Pooled``, protocols, no streams)
    pooled: list[tuple[_Pooled, float]] = field(default_factory=list)

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A pooled connection (reused=True) or a new one."""
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < UPSTREAM_IDLE_S and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        _no_delay(writer)
        return reader, writer, False

    def give_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.idle.append((reader, writer, time.monotonic()))

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()
        while self.pooled:
            self.pooled.pop()[0].close()


def route(target: bytes, backends: dict[str, Backend]) -> tuple[Backend | None, bytes]:
    """``/ai-jobs-get/<id>?x`` -> (the get backend, ``/<id>?x``), as the Cloud Functions front
    end hands a function the path after its name."""
    path, sep, query = target.partition(b"?")
    name, _, rest = path.lstrip(b"/").partition(b"/")
    backend = backends.get(name.decode("latin-1"))
    return backend, b"/" + rest + (sep + query)


class Front:
    """The asyncio front: keep-alive to clients, keep-alive pools to the function servers.

    Each client connection starts as a ``_Client`` protocol, which serves the usual exchange
    (a whole head, no body or a small Content-Length one) in the loop's callbacks over pooled
    ``_Pooled`` upstream connections, and forwards the head as it came with only its start
    line rewritten and hop-by-hop fields cut out. Anything else on a connection — a chunked
    or large body, a body or head cut short, a head it does not read as strictly well-formed
    — hands that connection, with every byte it holds, to ``serve_client``: the stream code
    below, which frames, tunnels and answers 400 for the rest of the connection's life."""

    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = backends
        #: open client transports, closed when the host stops
        self.clients: set[asyncio.BaseTransport] = set()
        self._connecting: set[asyncio.Task[None]] = set()

    def dispatch(
        self, backend: Backend, request: bytes, exchange: _Exchange, *, pooled: bool = True
    ) -> None:
        """Send ``request`` to the function on a pooled connection (unless ``pooled`` is
        False: the retry after a pooled one closed), or on a new one."""
        now = time.monotonic()
        while pooled and backend.pooled:
            upstream, since = backend.pooled.pop()
            if now - since < UPSTREAM_IDLE_S and not upstream.lost:
                upstream.send(request, exchange, reused=True)
                return
            upstream.close()
        task = asyncio.get_running_loop().create_task(self._connect(backend, request, exchange))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, backend: Backend, request: bytes, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, upstream = await loop.create_connection(
                lambda: _Pooled(self, backend), "127.0.0.1", backend.port
            )
        except OSError:
            exchange.failed()
            return
        upstream.send(request, exchange, reused=False)

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _no_delay(writer)
        try:
            while await self._one_exchange(reader, writer):
                pass
        except BadRequest:
            writer.write(_plain(400, "bad_request", "malformed request", close=True))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self.clients.discard(writer.transport)

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True if the client connection stays open for the next."""
        head = await read_head(reader)
        if head is None:
            return False
        method, target, _version = head.start.split(b" ", 2)
        close = head.wants_close
        backend, path = route(target, self.backends)
        if backend is None:
            body = _RequestBody(head, reader)
            await body.discard()
            writer.write(self._index(target, close))
            await writer.drain()
            return not close
        request = Head(b" ".join((method, path, b"HTTP/1.1")), head.headers)
        kept = await self._forward(
            backend, request, reader, writer, is_head=method == b"HEAD", close=close
        )
        await writer.drain()
        return kept and not close

    def _index(self, target: bytes, close: bool) -> bytes:
        if target.partition(b"?")[0] in {b"", b"/"}:
            body = json.dumps({"functions": sorted(self.backends)}).encode()
            return _response(200, body, close)
        return _plain(404, "not_found", "no such function", close=close)

    async def _forward(
        self,
        backend: Backend,
        request: Head,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        *,
        is_head: bool,
        close: bool,
    ) -> bool:
        body, received, at_eof = await _buffer(request, client_reader)
        if body is None:
            return await self._tunnel(
                backend, request, client_reader, client_writer, received, at_eof=at_eof
            )
        sent = await self._send(backend, request.encode(close=False) + body)
        final = None if sent is None else await _final_head(sent[0], sent[1], client_writer)
        if sent is None or final is None:
            client_writer.write(_plain(502, "bad_gateway", "the function closed", close=True))
            if sent is not None:
                sent[2].close()
            return False
        response, up_reader, up_writer = final, sent[1], sent[2]
        status = int(response.start.split(b" ", 2)[1])
        if is_head or status in _NO_BODY_STATUS or status < 200:
            client_writer.write(response.encode(close=close))
            framed = True
        else:
            framed = _is_framed(response)
            head = response.encode(close=close or not framed)
            length = response.get(b"content-length")
            if length is not None and not _is_chunked(response):  # head and body in one send
                client_writer.write(head + await up_reader.readexactly(_length(length)))
            else:
                client_writer.write(head)
                await copy_body(response, up_reader, client_writer)
        if framed and not response.wants_close:
            backend.give_back(up_reader, up_writer)
        else:
            up_writer.close()
        return framed

    @staticmethod
    async def _send(
        backend: Backend, request: bytes
    ) -> tuple[Head, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Send a whole request on a pooled connection and read the answer's head; None when
        the function closed before answering (an idempotent request is sent again on a new
        connection once if the pooled one closed before any of the answer came)."""
        for _attempt in range(2):
            up_reader, up_writer, reused = await backend.connection()
            answered = False  # part of an answer came: the request ran, not sent again
            try:
                up_writer.write(request)
                await up_writer.drain()
                response = await read_head(up_reader)
            except ConnectionError:
                response = None
            except BadRequest:
                response, answered = None, True
            if response is not None:
                return response, up_reader, up_writer
            up_writer.close()
            if not reused or answered or not _may_send_again(request):
                return None
        return None  # pragma: no cover - two closed pooled connections in a row

    async def _tunnel(
        self,
        backend: Backend,
        request: Head,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        received: bytes,
        *,
        at_eof: bool = False,
    ) -> bool:
        """Stream a body the front does not hold whole — chunked, declared large, or cut
        short — on a connection of its own, while the function may answer before its end:
        the function's own limits decide (413 from the declared length or once a chunked
        body passes it, 400 for broken chunking or a body cut short), as a streaming front
        end leaves them to it. True when the client's connection can carry the next request
        (a chunked body that ended cleanly, answered with a framed response)."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend.port)
        up_writer.write(request.encode(close=True) + received)
        if at_eof:
            up_writer.write_eof()
            pump: asyncio.Task[bool] | None = None
        elif _is_chunked(request):
            pump = asyncio.create_task(_pump_chunks(client_reader, up_writer))
        else:
            pump = asyncio.create_task(_pump_raw(client_reader, up_writer))
        try:
            try:
                response = await read_head(up_reader)
            except ConnectionError:  # reset before its answer (it closed on unread bytes)
                response = None
            if response is not None:
                response = await _final_head(response, up_reader, client_writer)
            if response is None:
                client_writer.write(_plain(502, "bad_gateway", "the function closed", close=True))
                return False
            if pump is not None and not pump.done():
                # an early answer (a 413) or a body still on its way: give it a moment to end
                # cleanly, so a kept-alive client is not closed for nothing
                await asyncio.wait({pump}, timeout=_BODY_END_WAIT_S)
            whole = pump is not None and pump.done() and pump.result()
            keep = whole and _is_framed(response) and not response.wants_close
            client_writer.write(response.encode(close=not keep))
            length = response.get(b"content-length")
            if length is not None and not _is_chunked(response):
                client_writer.write(await up_reader.readexactly(_length(length)))
            elif not _is_framed(response):
                client_writer.write(await up_reader.read())
            else:
                await copy_body(response, up_reader, client_writer)
            return keep
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            up_writer.close()


async def _final_head(
    response: Head, reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> Head | None:
    """The final answer's head after any interim ones (a 100 Continue), each passed on to the
    client as it comes (see ``_is_interim``); None if the function closed or garbled it."""
    while _is_interim(int(response.start.split(b" ", 2)[1])):
        client_writer.write(response.encode(close=False))
        try:
            next_head = await read_head(reader)
        except (ConnectionError, BadRequest):
            return None
        if next_head is None:
            return None
        response = next_head
    return response


async def _buffer(request: Head, reader: asyncio.StreamReader) -> tuple[bytes | None, bytes, bool]:
    """(the whole body, b"", False) when the front holds it (a small Content-Length body);
    else (None, the bytes read so far, whether the client stopped sending) for the tunnel."""
    if _is_chunked(request) or _declares_a_large_body(request):
        return None, b"", False
    try:
        return await _RequestBody(request, reader).read(), b"", False
    except asyncio.IncompleteReadError as exc:
        # the client stopped before its Content-Length: the function decides (a 400)
        return None, exc.partial, True


async def _pump_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Client bytes to the function until the client stops sending, then say so (EOF)."""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
    return False


async def _pump_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """A chunked body to the function as it arrives; True when the client's body ended with
    its last chunk (whether or not the function, having answered early, still reads it).
    Broken framing or a client gone: what came is passed on, then EOF (the function says
    400); the connection is not reused."""
    upstream = _Upstream(writer)
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            await upstream.send(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    await upstream.send(trailer)
                await upstream.send(b"\r\n")
                return True
            await upstream.send(await reader.readexactly(size + 2))
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError):
            await upstream.send(exc.partial)
        upstream.end()
        return False
    except ConnectionError:  # the client's side
        return False


class _Upstream:
    """Writes to the function that stop quietly once it has closed (it answered early)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.broken = False

    async def send(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.broken = True

    def end(self) -> None:
        if not self.broken:
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write_eof()


def _may_send_again(request: bytes) -> bool:
    """Whether a request (its bytes, method first) is idempotent: sent again when its pooled
    connection closed with no answer."""
    return request.split(b" ", 1)[0] in _IDEMPOTENT


def _is_chunked(head: Head | _RawHead) -> bool:
    return b"chunked" in (head.get(b"transfer-encoding") or b"").lower()


#: a Content-Length body the front reads whole before forwarding (and may resend on a stale
#: pooled connection); a larger or chunked one is streamed (``Front._tunnel``)
_BUFFERED_BODY_MAX = 64 * 1024
#: how long an answered tunnel waits for the rest of a chunked body before closing
_BODY_END_WAIT_S = 0.5


def _declares_a_large_body(head: Head) -> bool:
    """A Content-Length over what the front holds (or one it cannot read as a length)."""
    length = head.get(b"content-length")
    if length is None:
        return False
    return not length.strip().isdigit() or int(length) > _BUFFERED_BODY_MAX


def _is_framed(head: Head | _RawHead) -> bool:
    return _is_chunked(head) or head.get(b"content-length") is not None


class _RequestBody:
    """A request body read whole (the function servers want it framed; bodies are small)."""

    def __init__(self, head: Head, reader: asyncio.StreamReader) -> None:
        self.head = head
        self.reader = reader

    async def read(self) -> bytes:
        sink = _Sink()
        await copy_body(self.head, self.reader, sink)
        return bytes(sink.data)

    async def discard(self) -> None:
        await self.read()


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def _response(status: int, body: bytes, close: bool) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 502: b"Bad Gateway"}[status]
    head = Head(
        b"HTTP/1.1 %d %s" % (status, reason),
        [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))],
    )
    return head.encode(close=close) + body


def _plain(status: int, code: str, message: str, *, close: bool) -> bytes:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return _response(status, json.dumps(body).encode(), close)


# --- the usual exchange, in the loop's callbacks ---------------------------------------------
#
# Coroutines over StreamReader cost a task step, a future and a frame chain per wait; here each
# arrival is one data_received call that parses what is buffered and writes what it can, so
# the front spends a fraction of the CPU per request (scripts/bench_front.py).

#: header fields as RFC 9112 section 5 writes them (a token, a colon at once, a value on one
#: line, no NUL), each preceded by its CRLF; a head that does not match goes to the stream
#: code, which reads it leniently or answers 400, as before
_STRICT_FIELDS = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*)*")
_HOP_MARKS = tuple(b"\r\n" + name + b":" for name in sorted(_HOP_BY_HOP))
_CONNECTION_MARK = _HOP_MARKS[0]  # b"\r\nconnection:", the same object
#: what a client may send ahead while its request is served, before the front stops reading
_CLIENT_AHEAD_MAX = 4 * _MAX_HEAD + _BUFFERED_BODY_MAX


@dataclass(slots=True)
class _Fields:
    """A head's field lines as they came (``\\r\\nName: value`` each) and the same lowercased."""

    raw: bytes
    lower: bytes

    def value(self, mark: bytes) -> bytes | None:
        """The first field's value by its lowercased mark (``b"\\r\\ncontent-length:"``)."""
        at = self.lower.find(mark)
        if at < 0:
            return None
        end = self.lower.find(b"\r\n", at + 2)
        return self.raw[at + len(mark) : None if end < 0 else end].strip()

    def wants_close(self, start: bytes) -> bool:
        connection = (self.value(_CONNECTION_MARK) or b"").lower()
        return b"close" in connection or start.endswith(b"HTTP/1.0")

    def forwarded(self) -> bytes:
        """The lines without hop-by-hop fields (bytes as they came when there is none)."""
        lower = self.lower
        cuts: list[tuple[int, int]] = []
        named: set[bytes] = set()
        for mark in _HOP_MARKS:
            found = len(cuts)
            _find_lines(lower, mark, cuts)
            if mark is _CONNECTION_MARK:
                # the fields it names are cut too (RFC 9110 7.6.1)
                for at, end in cuts[found:]:
                    value = lower[at + len(mark) : end].strip()
                    if value not in _CONNECTION_PLAIN:
                        named.update(_connection_named(value))
        for name in named:
            _find_lines(lower, b"\r\n" + name + b":", cuts)
        if not cuts:
            return self.raw
        kept, pos = [], 0
        for at, end in sorted(cuts):
            kept.append(self.raw[pos:at])
            pos = end
        kept.append(self.raw[pos:])
        return b"".join(kept)


def _find_lines(lower: bytes, mark: bytes, cuts: list[tuple[int, int]]) -> None:
    """Add where each field line starting with ``mark`` starts and ends to ``cuts``."""
    at = lower.find(mark)
    while at >= 0:
        end = lower.find(b"\r\n", at + 2)
        end = len(lower) if end < 0 else end
        cuts.append((at, end))
        at = lower.find(mark, end)


def _strict_fields(head: bytes, line_end: int, head_end: int) -> _Fields | None:
    raw = head[line_end:head_end]
    if _STRICT_FIELDS.fullmatch(raw) is None:
        return None
    return _Fields(raw, raw.lower())


def _small_length(fields: _Fields) -> int | None:
    """The body length of a request the front serves itself (none or one small
    Content-Length, no Transfer-Encoding); None for the stream code."""
    lower = fields.lower
    if b"\r\ntransfer-encoding:" in lower:
        return None
    count = lower.count(b"\r\ncontent-length:")
    if count == 0:
        return 0
    length = fields.value(b"\r\ncontent-length:")
    if count > 1 or length is None or not length.isdigit() or int(length) > _BUFFERED_BODY_MAX:
        return None
    return int(length)


class _Client(asyncio.Protocol):
    """One client connection served in callbacks until something unusual comes (then
    ``to_streams``): keep-alive, one request at a time, the next read only once the answer
    is written and the client reads it (flow control)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False  # a request is with the function
        self.eof = False
        self.writing_paused = False
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike
        self.transport = cast(asyncio.Transport, transport)
        _no_delay(transport)
        self.front.clients.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        if not self.busy:
            self.next_request()
        # still held (its request is with the function, or the client reads no answers)
        if len(self.buffer) > _CLIENT_AHEAD_MAX and not self.reading_paused:
            self.reading_paused = True
            self._transport().pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self.to_streams()
        return True  # half-closed: the answer still goes out

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.busy:
            self.next_request()

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def next_request(self) -> None:
        """Serve what the buffer holds, while it holds whole requests the front can serve."""
        while not self.busy and not self.writing_paused and self.buffer:
            if self.transport is None or self.transport.is_closing():
                return
            if not self._one_request():
                break
        if self.reading_paused and not self.busy and not self.writing_paused:
            self.reading_paused = False
            self._transport().resume_reading()

    def _one_request(self) -> bool:
        """Start one buffered request; False when it needs more bytes or went elsewhere."""
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0 or head_end > _MAX_HEAD:
            if len(buffer) > _MAX_HEAD:
                # which answers 400 (head too large), however the head's bytes were read
                self.to_streams()
            return False
        line_end = buffer.find(b"\r\n")
        start = buffer[:line_end]
        parts = start.split(b" ")
        fields = _strict_fields(buffer, line_end, head_end)
        length = None if fields is None else _small_length(fields)
        if len(parts) != 3 or fields is None or length is None or _BARE_CR_LF_NUL.search(start):
            self.to_streams()
            return False
        end = head_end + 4 + length
        if len(buffer) < end:
            return False  # the rest of its body is on its way
        self.buffer = buffer[end:]
        method, target, _version = parts
        close = fields.wants_close(start)
        backend, path = route(target, self.front.backends)
        if backend is None:
            self._transport().write(self.front._index(target, close))
            return self.answered(keep=not close, more=False)
        request = b"%s %s HTTP/1.1%s\r\n\r\n%s" % (
            method,
            path,
            fields.forwarded(),
            buffer[head_end + 4 : end],
        )
        self.busy = True
        self.front.dispatch(backend, request, _Exchange(self, method == b"HEAD", close))
        return False

    def answered(self, *, keep: bool, more: bool = True) -> bool:
        """The answer is written: close, or go on with the next request (``more``: serve it
        now, from a callback of the function's connection)."""
        self.busy = False
        transport = self._transport()
        if not keep:
            transport.close()
            return False
        if self.eof:
            self.to_streams()  # what is left, then the end: the stream code's rules
            return False
        if more:
            self.next_request()
        return True

    def to_streams(self) -> None:
        """Hand this connection, and every byte it holds, to ``Front.serve_client``."""
        transport = self._transport()
        if transport.is_closing():
            return
        reader = asyncio.StreamReader(limit=_MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader, self.front.serve_client)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.writing_paused:
            protocol.pause_writing()
        if self.buffer:
            protocol.data_received(self.buffer)
            self.buffer = b""
        if self.eof:
            protocol.eof_received()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()


@dataclass(slots=True)
class _Exchange:
    """A client waiting for the function's answer to one request."""

    client: _Client
    is_head: bool
    close: bool

    def write(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def failed(self) -> None:
        """The function closed or reset before its answer: 502, and the client is closed."""
        self.write(_plain(502, "bad_gateway", "the function closed", close=True))
        self.client.answered(keep=False)


class _Pooled(asyncio.Protocol):
    """One kept-alive connection to a function's server: sends a request, passes the answer
    on to its client as it arrives (whole when it has a Content-Length, chunk by chunk when
    chunked), then waits in the backend's pool."""

    def __init__(self, front: Front, backend: Backend) -> None:
        self.front = front
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.request = b""
        self.reused = False
        self.lost = False
        self.buffer = b""
        self.framing = b""  # the answer's body: b"length", b"chunked" or b"eof"
        self.remaining = 0
        self.keep = True  # the answer lets this connection carry the next request
        self.head = b""  # an answer's head, held to go out with its body in one write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike
        self.transport = cast(asyncio.Transport, transport)
        _no_delay(transport)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes, exchange: _Exchange, *, reused: bool) -> None:
        assert self.transport is not None
        self.exchange, self.request, self.reused = exchange, request, reused
        self.buffer, self.framing, self.head = b"", b"", b""
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # bytes nobody asked for: this connection is not reusable
            self.close()
            return
        self.buffer = self.buffer + data if self.buffer else data
        try:
            if not self.framing:
                self._head()
            if self.framing:
                self._body()
        except (ValueError, IndexError, BadRequest):  # an answer the front cannot frame
            exchange, self.exchange = self.exchange, None
            self.close()
            if exchange is not None and self.framing:
                exchange.client.answered(keep=False)  # its head went out: only a close says it
            elif exchange is not None:
                exchange.failed()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def _ended(self) -> None:
        """The function closed (or reset) its side."""
        self.lost = True
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self.framing == b"eof":  # the answer ran to the close, as it said it would
            exchange.write(self.buffer)
            exchange.client.answered(keep=False)
        elif self.framing:
            exchange.client.answered(keep=False)  # cut short: the client sees a close
        elif self.reused and not self.buffer and _may_send_again(self.request):
            # the server closed the connection with no answer: most likely an idle one it
            # closed as we wrote, but it may have run the request and died, so only an
            # idempotent one goes again (had part of an answer come, it ran: never again)
            self.front.dispatch(self.backend, self.request, exchange, pooled=False)
        else:
            exchange.failed()
        if self.transport is not None:
            self.transport.close()

    def _head(self) -> None:
        assert self.exchange is not None
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = _answer_head(buffer, head_end)
        self.buffer = buffer[head_end + 4 :]
        status = int(head.start.split(b" ", 2)[1])
        exchange = self.exchange
        if _is_interim(status):
            # a 100 Continue (gunicorn sends one for ``Expect: 100-continue``) comes before
            # the answer, which follows on the same connection (RFC 9110 15.2)
            exchange.write(head.encode(close=False))
            self.reused = False  # the function has the request: never sent again
            self._head()
            return
        self.keep = not head.wants_close
        if exchange.is_head or status in _NO_BODY_STATUS or status < 200:
            self.framing, self.remaining = b"length", 0
            exchange.write(head.encode(close=exchange.close))
            return
        length = head.get(b"content-length")
        if _is_chunked(head):  # Transfer-Encoding overrides Content-Length (RFC 9112 6.3)
            self.framing = b"chunked"
            exchange.write(head.encode(close=exchange.close))
        elif length is not None:
            self.framing, self.remaining = b"length", _length(length)
            self.head = head.encode(close=exchange.close)
        else:
            self.framing = b"eof"
            exchange.write(head.encode(close=True))

    def _body(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if self.framing == b"length":
            if len(self.buffer) < self.remaining:
                return
            if self.head:
                exchange.write(self.head + self.buffer[: self.remaining])
                self.head = b""
            self.buffer = self.buffer[self.remaining :]
            self._done(exchange)
        elif self.framing == b"chunked":
            sent = _whole_chunks(self.buffer)
            if sent:
                exchange.write(self.buffer[: abs(sent)])
                self.buffer = self.buffer[abs(sent) :]
            if sent < 0:
                self._done(exchange)
        else:  # b"eof": passed on as it comes, until the function closes
            exchange.write(self.buffer)
            self.buffer = b""

    def _done(self, exchange: _Exchange) -> None:
        self.exchange = None
        if self.keep and not self.buffer and not self.lost:
            self.backend.pooled.append((self, time.monotonic()))
        else:
            self.close()
        exchange.client.answered(keep=not exchange.close)


@dataclass(slots=True)
class _RawHead:
    """A strictly well-formed head kept as it came; ``encode`` cuts only the hop-by-hop
    fields out, so the bytes are the function's own otherwise."""

    start: bytes
    fields: _Fields

    def get(self, name: bytes) -> bytes | None:
        return self.fields.value(b"\r\n" + name + b":")

    @property
    def wants_close(self) -> bool:
        return self.fields.wants_close(self.start)

    def encode(self, *, close: bool) -> bytes:
        ending = b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n"
        return self.start + self.fields.forwarded() + ending


def _answer_head(buffer: bytes, head_end: int) -> _RawHead | Head:
    """A function's answer head (gunicorn's: well-formed); one that is not is read as
    ``read_head`` reads it."""
    line_end = buffer.find(b"\r\n")
    fields = _strict_fields(buffer, line_end, head_end)
    if fields is not None:
        return _RawHead(buffer[:line_end], fields)
    return parse_head(buffer[:head_end])


def _length(value: bytes) -> int:
    """An answer's Content-Length; ValueError for one that is not digits (``int`` takes a
    sign, and a negative length would cut the body short)."""
    if not value.isdigit():
        raise ValueError(f"Content-Length {value!r}")
    return int(value)


def _is_interim(status: int) -> bool:
    """A 1xx answer other than 101: one or more come before the final answer (RFC 9110 15.2),
    which the client still waits for. (101 cannot come: Upgrade is cut as hop-by-hop.)"""
    return 100 <= status < 200 and status != 101


def _whole_chunks(buffer: bytes) -> int:
    """How many leading bytes of a chunked body are whole chunks; negative when they end
    with the last chunk and its trailers (the body is complete)."""
    pos = 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return pos
        size = int(buffer[pos:line_end].split(b";")[0].strip(), 16)
        if size == 0:
            end = buffer.find(b"\r\n\r\n", line_end)
            return pos if end < 0 else -(end + 4)
        if len(buffer) < line_end + 2 + size + 2:
            return pos
        pos = line_end + 2 + size + 2


# --- the function servers ----------------------------------------------------------------


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _below_ephemeral() -> range:
    """Ports below the kernel's ephemeral range (``ip_local_port_range``, 32768-60999 by
    default on Linux), down to 10000: the kernel never picks one of these for an outgoing
    connection or a bind to port 0. Empty when the range cannot be read or starts too low."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(10000, low)


def free_port() -> int:
    """A loopback port nothing listens on, for a server that is started after it is chosen.

    A port from a bind to port 0 is one of the kernel's ephemeral ports, which it goes on
    handing out: between choosing it and the server's bind, an outgoing connection (any test's
    client) could take it as its local port, and the bind fails with EADDRINUSE (a CI run
    failed that way). So the port comes from below the ephemeral range, checked by a bind,
    and never twice from one process."""
    candidates = _below_ephemeral()
    for _ in range(200 if candidates else 0):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def preload() -> None:
    """Import, once, the libraries the function servers use (the runtime, the HTTP layer, the
    Supabase client library all six use, the AI modules and the Gemini library), as
    gunicorn's ``--preload`` would, so forking a server per function costs milliseconds and a
    restarted host answers at once. No client is created here: each server builds its own
    after the fork, as an instance does. gRPC (Cloud Tasks) is left to the servers that use
    it: it must not be initialised before a fork. What each function imports on its own is
    checked in a fresh interpreter (tests/integration/test_import_weight.py), and the cold
    start of a fresh instance, with nothing preloaded, is what ``make bench`` measures."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # deploy.sh stages shared/ beside main.py
    import functions_framework._http.gunicorn  # noqa: F401
    import google.genai  # noqa: F401 (imports no gRPC and starts no thread)
    import supabase  # noqa: F401

    import shared.ai.pipeline
    import shared.ai.router
    import shared.http
    import shared.jobs  # noqa: F401


def fork_function(function: Function, port: int) -> int:
    """A child that does what gen2's Python runtime does in an instance,
    ``functions-framework --target=<entry point> --source=<main.py>``: ``create_app`` then
    functions_framework's production server (gunicorn, gthread)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        import functions_framework
        from functions_framework._http import create_server

        os.environ["K_SERVICE"] = function.name  # set by Cloud Run in every instance
        source = str(function.source(REPO_ROOT))
        app = functions_framework.create_app(function.entry_point, source)  # type: ignore[no-untyped-call]
        create_server(app, debug=False).run("127.0.0.1", port)  # type: ignore[no-untyped-call]
        code = 0
    except SystemExit as exc:  # gunicorn's arbiter leaves through sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exited(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def wait_listening(ports: dict[str, int], pids: dict[str, int], timeout_s: float) -> None:
    pending = dict(ports)
    deadline = time.monotonic() + timeout_s
    while pending:
        for name, port in list(pending.items()):
            if _exited(pids[name]):
                raise RuntimeError(f"the {name} server exited at start (its log is above)")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not listening after {timeout_s:.0f}s: {', '.join(pending)}")
        time.sleep(0.02)


def stop_all(pids: dict[str, int], timeout_s: float = 10.0) -> None:
    # SIGINT is gunicorn's quick shutdown; SIGTERM would wait up to 30 s for a running job
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    waiting = set(pids.values())
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if not _exited(pid)}
        time.sleep(0.02)
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


async def serve(
    host: str, port: int, backends: dict[str, Backend], stop: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    front = Front(backends)
    server = await asyncio.get_running_loop().create_server(
        lambda: _Client(front), host, port, reuse_address=True
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    print(f"function host on http://{host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    # Not wait_closed(): it waits for every kept-alive client connection (the emulator's
    # pool) to go away; they are closed here instead (and asyncio.run cancels the handlers of
    # connections served by the stream code).
    server.close()
    for transport in list(front.clients):
        transport.close()
    for backend in backends.values():
        backend.close_idle()
    await asyncio.sleep(0)  # let the transports finish closing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve every function behind one local port.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--only", default="", help="comma list of functions (default: all)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [f.name for f in FUNCTIONS]
    ports = {name: free_port() for name in names}
    preload()
    pids: dict[str, int] = {}
    try:
        for name in names:
            pids[name] = fork_function(BY_NAME[name], ports[name])
        wait_listening(ports, pids, timeout_s=60)
        for name in names:  # which process is which function (the benchmark reads this)
            print(f"{name} pid={pids[name]} port={ports[name]}", file=sys.stderr, flush=True)
        backends = {name: Backend(name, port) for name, port in ports.items()}
        import uvloop  # after the forks: the function servers never load it

        uvloop.run(serve(args.host, args.port, backends))
    finally:
        stop_all(pids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
