"""One HTTP attempt of a task: send the request, classify what came back.

Kept apart from the scheduler so the dispatch of one attempt can be read (and reasoned about)
on its own. The caller enforces the dispatch deadline: it is told about the connected socket
through `watch` and may shut it down from another thread when the deadline passes. (A socket
timeout alone bounds each read, not the attempt: a worker trickling bytes would outlive it.)

Attempts go over kept-alive connections (`Connections`), as Google's front ends keep theirs:
a connection that answered a whole, framed response without `Connection: close` is reused by
the next attempt to the same origin within `IDLE_REUSE_S`, so a dispatch costs neither a TCP
handshake nor the worker's accept. Every socket has TCP_NODELAY: a request is written in one
send (head and body together, `_OneSend`), and a response must not wait on Nagle.

A small request that finds an idle connection is written by the thread that launches the
attempt (`send_at_once`, CreateTask's own), and a dispatch thread then only reads the answer
(`receive`): the task is on its way before CreateTask has answered.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from infra.local.tasks_emulator.model import (
    RPC_DEADLINE_EXCEEDED,
    RPC_OK,
    RPC_UNAVAILABLE,
    rpc_code_for_http_status,
)

# Characters left as they are when the emulator percent-encodes a URL path or query.
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")

SocketWatch = Callable[[socket.socket | None], None]


@dataclass(frozen=True)
class HttpDispatch:
    """Everything needed to send one attempt, captured under the emulator's lock."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    deadline_s: float


@dataclass(frozen=True)
class AttemptOutcome:
    """The result of one attempt as Cloud Tasks records it in Attempt.response_status."""

    http_status: int | None  #: None when no HTTP response arrived
    rpc_code: int  #: google.rpc.Code
    message: str
    retry_after_s: float | None = None  #: the response's Retry-After, in seconds from now

    @property
    def succeeded(self) -> bool:
        return self.rpc_code == RPC_OK

    @property
    def label(self) -> str:
        """Short form for logs and X-CloudTasks-TaskRetryReason."""
        if self.http_status is not None:
            return f"HTTP {self.http_status}"
        return "DEADLINE_EXCEEDED" if self.rpc_code == RPC_DEADLINE_EXCEEDED else "UNAVAILABLE"


def deadline_exceeded(deadline_s: float) -> AttemptOutcome:
    return AttemptOutcome(
        None, RPC_DEADLINE_EXCEEDED, f"no response within the {deadline_s:g}s dispatch deadline"
    )


#: URLs parsed once each: a queue's tasks share one (or a few), and parsing and encoding it
#: (``urlsplit``, ``quote``) at CreateTask and again at every dispatch showed in profiles.
_URL_CACHE = 1024
#: Longer URLs are encoded without the cache: CreateTask refuses them (2083 characters once
#: encoded), and caching them would let refused requests of up to gRPC's 4 MB fill it.
_CACHED_URL_MAX_CHARS = 4096


def _request_target(parts: SplitResult) -> str:
    """The path and query as they go on the wire (Cloud Tasks "will encode some characters")."""
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    return target


def _encode_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{_request_target(parts)}"


_encode_url_cached = functools.lru_cache(maxsize=_URL_CACHE)(_encode_url)


def encoded_url(url: str) -> str:
    """The URL as it goes on the wire; ValueError when ``urlsplit`` cannot parse it."""
    if len(url) > _CACHED_URL_MAX_CHARS:
        return _encode_url(url)
    return _encode_url_cached(url)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 Retry-After: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: An idle connection is reused only this soon after its last response: under the keep-alive
#: timeout of the servers it talks to (gunicorn's default is 2 s), so the emulator does not
#: write into a connection the server is closing.
IDLE_REUSE_S = 1.0
#: Idle connections kept per origin (more are closed when handed back).
MAX_IDLE_PER_ORIGIN = 16

_Origin = tuple[str, str, int]


@functools.lru_cache(maxsize=_URL_CACHE)
def _origin_and_target(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"URL {url!r} has no host")
    default_port = 443 if parts.scheme == "https" else 80
    return (parts.scheme, parts.hostname, parts.port or default_port), _request_target(parts)


class _OneSend(http.client.HTTPConnection):
    """A kept-alive connection; http.client connects it (TLS too), and the emulator writes
    each request itself, head and body with one send (`_wire_request`): http.client sends
    them with a send each, two segments with TCP_NODELAY, and a worker reading the head may
    have to wake again for the body; its answer is read with http.client's `HTTPResponse`."""


class _OneSendHTTPS(_OneSend, http.client.HTTPSConnection):
    pass


def _new_connection(origin: _Origin, timeout_s: float) -> _OneSend:
    scheme, host, port = origin
    connection: _OneSend
    if scheme == "https":
        connection = _OneSendHTTPS(
            host, port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = _OneSend(host, port, timeout=timeout_s)
    connection.connect()
    assert connection.sock is not None  # connect() sets it or raises
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _still_open(connection: _OneSend) -> bool:
    """An idle connection the server has not closed: nothing to read on it (a readable idle
    socket means EOF, or bytes nobody asked for), as urllib3 checks before reusing one."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _set_timeout(sock: socket.socket, timeout_s: float | None) -> None:
    """Each settimeout is a syscall (ioctl FIONBIO), and a reused connection mostly has the
    timeout it needs already (a queue's tasks share a dispatch deadline)."""
    if timeout_s is not None and sock.gettimeout() != timeout_s:
        sock.settimeout(timeout_s)


class Connections:
    """Kept-alive connections by origin, shared by the dispatch threads."""

    def __init__(self) -> None:
        self._idle: dict[_Origin, list[tuple[_OneSend, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, origin: _Origin, timeout_s: float) -> tuple[_OneSend, bool]:
        """An idle connection to ``origin`` (reused=True) or a new one (which may raise)."""
        connection = self.take_idle(origin, timeout_s)
        if connection is not None:
            return connection, True
        return _new_connection(origin, timeout_s), False

    def take_idle(self, origin: _Origin, timeout_s: float | None) -> _OneSend | None:
        """An idle connection to ``origin`` that can carry a request, or None; its socket
        timeout set to ``timeout_s`` (None: left as it was, never None itself)."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                connection, since = idle.pop()
            if now - since < IDLE_REUSE_S and _still_open(connection):
                assert connection.sock is not None
                _set_timeout(connection.sock, timeout_s)
                return connection
            connection.close()

    def give_back(self, origin: _Origin, connection: _OneSend) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append((connection, time.monotonic()))
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection; connections handed back later are closed too."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection, _since in connections:
                connection.close()


def send(dispatch: HttpDispatch, watch: SocketWatch, connections: Connections) -> AttemptOutcome:
    """Send one attempt; never raises for network trouble, which is an outcome like any other.

    On a reused connection that the server had closed before the request was completely
    written (it dropped the idle connection as the request went out: it cannot have run an
    incomplete request), the attempt is sent once more on a new connection. Once the request
    is written, a connection lost before the answer is a failed attempt, counted and retried
    with backoff as Cloud Tasks does: the worker may have run it (Go's net/http resends a
    non-idempotent request only on the same "nothing written" condition)."""
    try:
        origin, target = _origin_and_target(dispatch.url)
    except ValueError as error:
        return AttemptOutcome(None, RPC_UNAVAILABLE, str(error))
    while True:
        try:
            connection, reused = connections.take(origin, dispatch.deadline_s)
        except TimeoutError:
            return deadline_exceeded(dispatch.deadline_s)
        # http.client refuses a host it cannot write (InvalidURL) with an HTTPException, not
        # an OSError: a connection failure all the same.
        except (OSError, http.client.HTTPException) as error:
            return AttemptOutcome(None, RPC_UNAVAILABLE, f"{type(error).__name__}: {error}")
        outcome = _exchange(
            connection, target, dispatch, watch, connections=connections, origin=origin
        )
        if outcome is not _CLOSED_BEFORE_ANSWER:
            return outcome
        if not reused:
            return AttemptOutcome(
                None, RPC_UNAVAILABLE, "RemoteDisconnected: the worker closed without answering"
            )


#: What `_exchange` returns when the server closed the connection before the request was
#: completely written.
_CLOSED_BEFORE_ANSWER = AttemptOutcome(None, RPC_UNAVAILABLE, "closed before answering")


def _exchange(
    connection: _OneSend,
    target: str,
    dispatch: HttpDispatch,
    watch: SocketWatch,
    *,
    connections: Connections,
    origin: _Origin,
) -> AttemptOutcome:
    """One request and its whole response on ``connection``, which is handed back when it
    can carry the next attempt and closed otherwise."""
    # The socket object, not the connection: http.client drops `connection.sock` once a
    # response that closes the connection starts, while the body is still being read.
    watch(connection.sock)
    failed = _write(connection, origin, target, dispatch)
    if failed is not None:
        watch(None)
        connection.close()
        return failed
    return _answer(Sent(connection, origin), dispatch, watch, connections)


#: Methods for which http.client sends ``Content-Length: 0`` without a body.
_METHODS_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})


@functools.lru_cache(maxsize=_URL_CACHE)
def _host_line(origin: _Origin) -> bytes:
    """The Host header as http.client writes it for a connection to ``origin``: the port
    only when it is not the scheme's default, an IPv6 address in brackets, IDNA if not ASCII."""
    scheme, host, port = origin
    try:
        host_enc = host.encode("ascii")
    except UnicodeEncodeError:
        host_enc = host.encode("idna")
    if ":" in host:
        host_enc = b"[" + host_enc + b"]"
    if port != (443 if scheme == "https" else 80):
        host_enc += b":%d" % port
    return b"Host: " + host_enc + b"\r\n"


def _wire_value(value: str) -> bytes:
    """A header value as it goes on the wire: Latin-1 when it can carry it (as http.client
    encodes a str), else its UTF-8 bytes."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def _wire_head(origin: _Origin, target: str, dispatch: HttpDispatch) -> bytes:
    """The request line and headers exactly as http.client's ``request()`` writes them (Host,
    Accept-Encoding: identity unless the task sets it, Content-Length unless the task sets it
    or Transfer-Encoding, then the task's headers in order), built in one join instead of
    http.client's putrequest/putheader per line, which re-check what CreateTask checked (a
    header name is a token, a value holds no CR, LF or NUL) and took about a fifth of the
    emulator's work between reading CreateTask and writing the task."""
    names = {name.lower() for name in dispatch.headers}
    lines = [f"{dispatch.method} {target} HTTP/1.1\r\n".encode("ascii"), _host_line(origin)]
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity\r\n")
    sized = "content-length" in names or "transfer-encoding" in names
    if not sized and (dispatch.body or dispatch.method in _METHODS_EXPECTING_BODY):
        lines.append(b"Content-Length: %d\r\n" % len(dispatch.body))
    for name, value in dispatch.headers.items():
        lines.append(b"%s: %s\r\n" % (name.encode("ascii"), _wire_value(value)))
    lines.append(b"\r\n")
    return b"".join(lines)


def _write(
    connection: _OneSend, origin: _Origin, target: str, dispatch: HttpDispatch
) -> AttemptOutcome | None:
    """Write the request with one send; None once it is written whole, else what the attempt
    came to (`_CLOSED_BEFORE_ANSWER` when it was not completely written: it cannot have run)."""
    try:
        request = _wire_head(origin, target, dispatch) + dispatch.body
        assert connection.sock is not None  # connected by `Connections`
        connection.sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError):
        return _CLOSED_BEFORE_ANSWER
    except TimeoutError:
        return deadline_exceeded(dispatch.deadline_s)
    except OSError as error:
        return AttemptOutcome(None, RPC_UNAVAILABLE, f"{type(error).__name__}: {error}")
    return None


def _answer(
    sent: Sent, dispatch: HttpDispatch, watch: SocketWatch, connections: Connections
) -> AttemptOutcome:
    """Read the whole response to a request written on ``sent.connection``; the connection
    is handed back when it can carry the next attempt and closed otherwise."""
    connection = sent.connection
    keep = False
    try:
        # what http.client's getresponse() does for a request it wrote itself
        response = http.client.HTTPResponse(connection.sock, method=dispatch.method)
        response.begin()
        response.read()
        keep = not response.will_close
    except TimeoutError:
        return deadline_exceeded(dispatch.deadline_s)
    except (OSError, http.client.HTTPException) as error:
        return AttemptOutcome(None, RPC_UNAVAILABLE, f"{type(error).__name__}: {error}")
    finally:
        watch(None)
        if not keep:
            connection.close()
    connections.give_back(sent.origin, connection)
    status = response.status
    return AttemptOutcome(
        status,
        rpc_code_for_http_status(status),
        f"HTTP {status}",
        retry_after_seconds(response.getheader("Retry-After")),
    )


# --- sending at once, from the thread that launches the attempt ----------------------------

#: A request this small (head and body) is written at once by the thread that launches the
#: attempt (CreateTask's own, holding the emulator's lock), before CreateTask answers, instead
#: of by a dispatch thread woken for it: written on an idle kept-alive connection, whose send
#: buffer is empty, it is taken whole (Linux starts a TCP socket's send buffer at 16 KiB,
#: net.ipv4.tcp_wmem), and the write never blocks (see `send_at_once`). Larger requests (a
#: task may carry 80 KB of headers and a 1 MB body) go the usual way.
SEND_AT_ONCE_MAX_BYTES = 8 * 1024


@dataclass(frozen=True)
class Sent:
    """A request written whole on a kept-alive connection; its answer is still to be read."""

    connection: _OneSend
    origin: _Origin


def send_at_once(dispatch: HttpDispatch, connections: Connections) -> Sent | None:
    """Write the request now on an idle kept-alive connection to its origin, when one is at
    hand and the request is small (`SEND_AT_ONCE_MAX_BYTES`); then a dispatch thread only
    reads the answer (`receive`). None when it was not sent: no idle connection, a large
    request, or the request could not be written whole at once (the server had closed the
    connection, or its buffer was full: cut short, it never ran; the connection is closed),
    so that `send` makes the attempt from the start, with its own outcome; a request is
    never written whole twice.

    The write never blocks, so CreateTask is never held behind a slow target: it is one
    write(2) on the socket's descriptor, which is non-blocking at the kernel's level because
    the socket has a timeout (CPython keeps O_NONBLOCK on such a socket and polls before each
    send of its own: a poll and, to change the timeout, an ioctl that this path saves)."""
    try:
        origin, target = _origin_and_target(dispatch.url)
    except ValueError:
        return None
    if origin[0] != "http":
        return None  # TLS: written through the SSL socket by `send`, never on the raw socket
    head = _wire_head(origin, target, dispatch)
    if len(head) + len(dispatch.body) > SEND_AT_ONCE_MAX_BYTES:
        return None
    connection = connections.take_idle(origin, None)
    if connection is None:
        return None
    sock = connection.sock
    assert sock is not None and sock.gettimeout(), "a connection with a timeout: non-blocking"
    request = head + dispatch.body
    try:
        written = os.write(sock.fileno(), request)
    except OSError:  # BlockingIOError, BrokenPipeError, ConnectionResetError, ...
        written = -1
    if written != len(request):
        connection.close()
        return None
    _set_timeout(sock, dispatch.deadline_s)  # the answer has the whole deadline
    return Sent(connection, origin)


def receive(
    sent: Sent, dispatch: HttpDispatch, watch: SocketWatch, connections: Connections
) -> AttemptOutcome:
    """The outcome of a request `send_at_once` wrote, from its answer (never raises)."""
    return _answer(sent, dispatch, watch, connections)
