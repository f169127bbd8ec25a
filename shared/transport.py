"""A keep-alive HTTP/1.1 transport for httpx that frames requests and answers itself.

The store's Supabase client (supabase-py -> postgrest-py -> ``httpx.Client``) sends one small
JSON POST per call. httpx's default transport (httpcore + h11) is about a third of the CPU of
such a call. This one writes each request with one ``sendall`` and reads the answer's head in
one piece, splitting its lines itself: the standard library's ``http.client`` (which the
previous version used) parses every answer's headers with the ``email`` package, about a
third of the transport's CPU (scripts/bench.py's "CPU per call, layer by layer" shows the
transports side by side). httpx documents the transport as the place to change how requests
are sent ("Writing custom transports", https://www.python-httpx.org/advanced/transports/;
``httpx.BaseTransport.handle_request``), and supabase-py takes the ``httpx.Client`` through
``ClientOptions(httpx_client=...)``, so the client libraries stay unchanged: only the bytes on
the wire are written by other code.

The framing follows RFC 9112 (HTTP/1.1): the answer's body is delimited by
``Transfer-Encoding: chunked``, else by ``Content-Length``, else by the connection's close
(section 6.3); 204, 304 and answers to HEAD have none. The only transfer coding accepted is
``chunked`` alone (the tokens of every ``Transfer-Encoding`` line joined, as h11 accepts only
``chunked``): any other (``gzip, chunked``, ``identity``) is a protocol error and its
connection closed, never a body handed on still framed or still coded. ``Connection`` tokens
are likewise joined across lines. Interim (1xx) answers before the final one are skipped, as
RFC 9110 section 15.2 requires of a client even when it expects none (e.g. ``103 Early
Hints`` from an edge; httpx's own transport skips them too), at most ``MAX_INTERIM`` of them;
``101 Switching Protocols`` is a protocol error (the connection would no longer speak HTTP)
and its connection closed. A head, and the trailer section after a chunked body, is at most
``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` lines (http.client's limits: 100 headers of at most 64
KiB); obsolete line folding is joined with a space (RFC 9112 section 5.2). A request header
holding CR, LF or NUL is refused before anything is sent.

What it keeps from httpx's default transport (httpcore), so nothing above it notices:

- every timeout of the request (``extensions["timeout"]``: connect, write, read), each raised
  as httpx's own exception (``ConnectTimeout``, ``WriteTimeout``, ``ReadTimeout``; the write
  timeout bounds the whole send, as Python's ``sendall`` does, where httpcore bounds each
  piece: the same for a request that fits the socket's buffer, as an RPC's does; the read
  timeout bounds each read, as httpcore's), and every network failure as ``ConnectError``,
  ``WriteError``, ``ReadError`` or ``RemoteProtocolError`` (all ``httpx.HTTPError``: the store
  maps them to ``DatabaseUnavailable``);
- an answer the server sends early and then closes the connection while the request's body
  is still being written (e.g. ``413`` with ``Connection: close``) is returned, as httpcore
  returns it (its ``HTTP11Connection.handle_request`` ignores the write error and reads the
  answer): when the write fails with a broken pipe or a reset, whatever answer arrives within
  the read timeout is read, returned if complete and its connection closed; else the
  ``WriteError`` is raised as before;
- a request is sent at most once. An idle connection the server has closed is found before
  it is used (its socket reads as ready: httpcore checks the same way) and replaced; a request
  that fails after being written is never resent, because the server may have run it (a POST
  RPC such as ``create_job`` is not idempotent). postgrest-py resends only GET and HEAD
  (``send_with_retry``), and the store sends neither;
- idle connections expire after ``keepalive_expiry`` seconds (httpx's default: 5) and at most
  ``max_idle`` are kept (httpx's default ``max_keepalive_connections``: 20); a connection is
  pooled only when its answer was read exactly to its end (nothing more arrived), and the
  server did not ask to close it (``Connection: close``, or HTTP/1.0 without keep-alive);
- TLS is verified with httpx's own default context (``httpx.create_ssl_context()``: certifi's
  roots, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

What it leaves out, because the store needs none of it: HTTP/2, proxies (a custom transport
turns httpx's environment proxies off in any case), and streaming: the response body is read
whole before ``handle_request`` returns (an RPC's answer is one JSON document). A connection
is used by one request at a time; any number of threads may share the transport.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import httpx

#: httpx's defaults (``httpx.Limits``: max_keepalive_connections=20, keepalive_expiry=5.0)
DEFAULT_MAX_IDLE = 20
DEFAULT_KEEPALIVE_EXPIRY_S = 5.0
#: The largest answer head read, and the most header lines in it (http.client's limits are
#: 100 headers of at most 64 KiB each; a PostgREST answer's head is about 300 bytes).
MAX_HEAD_BYTES = 256 * 1024
MAX_HEADERS = 100
#: interim (1xx) answers skipped before the final one; one more is a protocol error
MAX_INTERIM = 10
_RECV = 64 * 1024
#: the largest single read of a long body (each read allocates its whole size first)
_MAX_RECV = 256 * 1024
#: the end of an answer's head: an empty line (CRLF, or a bare LF, which RFC 9112 section 2.2
#: lets a recipient accept)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_NO_BODY_STATUS = frozenset({204, 304})

_Origin = tuple[str, str, int]


class _Connection:
    """An open socket, and when it was last used (while idle in the pool)."""

    __slots__ = ("since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since = 0.0

    def close(self) -> None:
        self.sock.close()


class KeepAliveTransport(httpx.BaseTransport):
    """httpx transport: HTTP/1.1 over pooled sockets (see the module)."""

    def __init__(
        self,
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._lock = threading.Lock()
        self._closed = False

    # --- the pool ----------------------------------------------------------------------------

    def _checkout(self, origin: _Origin) -> _Connection | None:
        """The most recently used idle connection to ``origin`` that is still usable."""
        now = time.monotonic()
        while True:
            with self._lock:
                stack = self._idle.get(origin)
                if not stack:
                    return None
                connection = stack.pop()
                self._idle_count -= 1
            if now - connection.since < self._keepalive_expiry and not _closed_by_peer(
                connection.sock
            ):
                return connection
            connection.close()

    def _checkin(self, origin: _Origin, connection: _Connection) -> None:
        with self._lock:
            if not self._closed and self._idle_count < self._max_idle:
                connection.since = time.monotonic()
                self._idle.setdefault(origin, []).append(connection)
                self._idle_count += 1
                return
        connection.close()

    def idle_connections(self) -> int:
        """How many connections wait in the pool (for tests and benchmarks)."""
        with self._lock:
            return self._idle_count

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stacks, self._idle, self._idle_count = list(self._idle.values()), {}, 0
        for stack in stacks:
            for connection in stack:
                connection.close()

    def _connect(self, origin: _Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        if scheme not in {"http", "https"}:
            raise httpx.UnsupportedProtocol(f"the URL's scheme {scheme!r} is not http or https")
        with _mapped(httpx.ConnectTimeout, httpx.ConnectError):
            sock = socket.create_connection((host, port), timeout)
            try:
                # the request goes out in one write; no reason to hold its last segment back
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if scheme == "https":
                    if self._ssl_context is None:
                        self._ssl_context = httpx.create_ssl_context()
                    sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        return _Connection(sock)

    # --- one request -------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        # raw_host is the host as httpx encoded it (IDNA for a Unicode name, A-labels only):
        # what DNS resolves and what TLS sends as SNI and checks against the certificate
        host = url.raw_host.decode("ascii")
        origin = (url.scheme, host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        head = _request_head(request)  # refuses an illegal header before anything is sent
        connection = self._checkout(origin) or self._connect(origin, timeouts.get("connect"))
        try:
            answer = _exchange(connection.sock, request, head, timeouts)
        except BaseException:
            connection.close()  # its state is unknown: never reused
            raise
        if answer.reusable:
            self._checkin(origin, connection)
        else:
            connection.close()
        return httpx.Response(
            answer.status,
            headers=answer.headers,  # bytes as received
            stream=httpx.ByteStream(answer.body),
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
        )


class _Answer(NamedTuple):
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  #: as received
    body: bytes
    reusable: bool  #: read exactly to its end, and the server keeps the connection open


def _request_head(request: httpx.Request) -> bytes:
    """The request line and headers, as sent (httpx wrote Host, Content-Length and the rest).

    A header with CR, LF or NUL in it is refused as httpx's own transport refuses it (h11's
    ``LocalProtocolError``): it would split the request (e.g. a service key read from a
    secret file with its trailing newline)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # A legal head holds exactly the line breaks the join wrote, one CR and one LF per entry
    # of ``lines`` (httpx percent-encodes the path): counting them over the whole head costs
    # a third of three searches in every value. A value that broke it is then named.
    breaks = len(lines)
    if head.count(b"\r") != breaks or head.count(b"\n") != breaks or b"\0" in head:
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value or b"\0" in value:
                raise httpx.LocalProtocolError(f"illegal header {name!r}")
        raise httpx.LocalProtocolError("illegal request line")
    return head


#: a header name (RFC 9110 section 5.6.2: a token)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _exchange(
    sock: socket.socket, request: httpx.Request, head: bytes, timeouts: dict[str, float]
) -> _Answer:
    """Write the request and read the whole answer (each phase under its own timeout)."""
    head_only = request.method == "HEAD"
    try:
        with _mapped(httpx.WriteTimeout, httpx.WriteError):
            sock.settimeout(timeouts.get("write"))
            _send(sock, request, head)
    except httpx.WriteError as failed:
        if not isinstance(failed.__cause__, BrokenPipeError | ConnectionResetError):
            raise
        return _early_answer(sock, timeouts, failed, head_only=head_only)
    with _mapped(httpx.ReadTimeout, httpx.ReadError):
        sock.settimeout(timeouts.get("read"))
        return _Reader(sock).answer(head_only=head_only)


def _send(sock: socket.socket, request: httpx.Request, head: bytes) -> None:
    if "transfer-encoding" in request.headers:
        sock.sendall(head)
        for piece in request.stream:  # type: ignore[union-attr]
            if piece:
                sock.sendall(b"%X\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
    else:
        sock.sendall(head + request.read())


def _early_answer(
    sock: socket.socket, timeouts: dict[str, float], failed: httpx.WriteError, *, head_only: bool
) -> _Answer:
    """The answer a server sent before closing a connection whose request it did not read
    whole (e.g. 413 for a body too large), as httpcore returns it; the write's error if none
    arrived whole. The connection is never pooled: the server closed it, and the request went
    out in part. Nothing is resent."""
    try:
        with _mapped(httpx.ReadTimeout, httpx.ReadError):
            sock.settimeout(timeouts.get("read"))
            answer = _Reader(sock).answer(head_only=head_only)
    except httpx.HTTPError:
        raise failed from failed.__cause__
    return answer._replace(reusable=False)


class _Reader:
    """Reads one answer from a socket: the bytes received but not yet used are ``buffer``."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> bool:
        data = self.sock.recv(_RECV)
        self.buffer += data
        return bool(data)

    def answer(self, *, head_only: bool) -> _Answer:
        head = self._head()
        if head[0] < 200:
            head = self._after_interim(head)
        status, reason, version, headers = head
        names = {name.lower(): value for name, value in headers}
        # every Connection line counts, as every Transfer-Encoding line (a dict keeps the last)
        connection = _tokens(headers, b"connection") if b"connection" in names else []
        close = _wants_close(version, connection)
        if head_only or status in _NO_BODY_STATUS:
            body = b""
        elif b"transfer-encoding" in names:
            codings = _tokens(headers, b"transfer-encoding")
            if codings != [b"chunked"]:
                # h11 refuses these too ("Only Transfer-Encoding: chunked is supported"): a
                # body still framed or coded would be handed on as if it were the payload
                raise httpx.RemoteProtocolError(
                    f"unsupported Transfer-Encoding {b', '.join(codings)[:100]!r}"
                )
            body = self._chunked()
            # with a Content-Length too, or in HTTP/1.0, the framing is suspect (request
            # smuggling): read as chunked, then the connection is closed (section 6.3, 3)
            close = close or b"content-length" in names or version == b"HTTP/1.0"
        elif b"content-length" in names:
            body = self._exact(_content_length(headers))
        else:
            body, close = self._until_close(), True
        # anything beyond the answer is not ours to hand to the next request
        reusable = not close and not self.buffer
        return _Answer(status, reason, version, headers, body, reusable)

    def _after_interim(
        self, head: tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """The final answer's head: ``head`` and the interim (1xx) answers after it skipped."""
        for _ in range(MAX_INTERIM):
            if head[0] == 101:  # the connection would speak another protocol from here on
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            head = self._head()
            if head[0] >= 200:
                return head
        raise httpx.RemoteProtocolError(f"more than {MAX_INTERIM} informational answers")

    def _head(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        end = _HEAD_END.search(self.buffer)
        while end is None:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the answer's head is too long")
            if not self._more():
                if not self.buffer:
                    # httpcore's words for the same event
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                raise httpx.RemoteProtocolError("the connection closed inside the answer's head")
            end = _HEAD_END.search(self.buffer)
        lines = self.buffer[: end.start()].split(b"\n")
        self.buffer = self.buffer[end.end() :]
        status, reason, version = _status_line(lines[0].rstrip(b"\r"))
        return status, reason, version, _header_lines(lines[1:])

    def _exact(self, size: int) -> bytes:
        if len(self.buffer) < size:
            # the rest of a large body arrives in many reads: gathered, joined once
            pieces, have = [self.buffer], len(self.buffer)
            while have < size:
                data = self.sock.recv(max(_RECV, min(size - have, _MAX_RECV)))
                if not data:
                    raise httpx.RemoteProtocolError(
                        "the connection closed inside the answer's body"
                    )
                pieces.append(data)
                have += len(data)
            self.buffer = b"".join(pieces)
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return body

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("a chunk line is too long")
            if not self._more():
                raise httpx.RemoteProtocolError("the connection closed inside a chunked body")
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        return line.rstrip(b"\r")

    def _chunked(self) -> bytes:
        pieces: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            if not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                raise httpx.RemoteProtocolError("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                self._trailers()
                return b"".join(pieces)
            pieces.append(self._exact(size))
            if self._line():
                raise httpx.RemoteProtocolError("a chunk is longer than its size")

    def _trailers(self) -> None:
        """Skip the trailer fields up to the empty line (as httpcore drops them), within the
        head's limits: a server cannot keep the reader busy with an endless trailer."""
        lines, size = 0, 0
        while line := self._line():
            lines += 1
            size += len(line) + 2
            if lines > MAX_HEADERS or size > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the chunked answer's trailer is too long")

    def _until_close(self) -> bytes:
        pieces = [self.buffer]
        while data := self.sock.recv(_RECV):
            pieces.append(data)
        self.buffer = b""
        return b"".join(pieces)


def _status_line(line: bytes) -> tuple[int, bytes, bytes]:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in {b"HTTP/1.1", b"HTTP/1.0"} or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {line[:100]!r}")
    return int(code), reason.strip(), version


def _header_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if len(lines) > MAX_HEADERS:
        raise httpx.RemoteProtocolError(f"more than {MAX_HEADERS} headers in the answer")
    for raw in lines:
        line = raw.rstrip(b"\r")
        if line[:1] in {b" ", b"\t"} and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        headers.append((name, value.strip(b" \t")))
    return headers


def _tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``name`` line, in order, lower-cased and trimmed;
    empty elements dropped (RFC 9110 section 5.6.1; h11's ``get_comma_header``)."""
    return [
        token
        for field, value in headers
        if field.lower() == name
        for part in value.lower().split(b",")
        if (token := part.strip(b" \t"))
    ]


def _wants_close(version: bytes, tokens: list[bytes]) -> bool:
    if not tokens:
        return version == b"HTTP/1.0"
    if version == b"HTTP/1.0":
        return b"keep-alive" not in tokens
    return b"close" in tokens


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The body's length; several Content-Length fields must agree (RFC 9112 section 6.3)."""
    values = {
        part.strip()
        for name, value in headers
        if name.lower() == b"content-length"
        for part in value.split(b",")
    }
    if len(values) != 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length values")
    value = values.pop()
    if not value.isdigit() or len(value) > 18:
        raise httpx.RemoteProtocolError(f"malformed Content-Length {value[:30]!r}")
    return int(value)


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket is readable only when the server closed it (EOF) or sent
    something unasked: either way it cannot carry a request (httpcore's ``is_readable``)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


@contextmanager
def _mapped(
    timeout: type[httpx.TimeoutException], failure: type[httpx.HTTPError]
) -> Iterator[None]:
    """Raise the standard library's network errors as httpx's, as httpx's own transport does
    (``map_httpcore_exceptions``): the phase decides which timeout or error it is. The
    transport's own framing errors are httpx's already and pass through."""
    try:
        yield
    except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
        raise timeout(str(exc) or "timed out") from exc
    except OSError as exc:  # refused, reset, unreachable, TLS failure
        raise failure(str(exc) or type(exc).__name__) from exc
