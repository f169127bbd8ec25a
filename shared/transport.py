"""A keep-alive HTTP/1.1 transport for httpx built on the standard library's ``http.client``.

The store's Supabase client (supabase-py -> postgrest-py -> ``httpx.Client``) sends one small
JSON POST per call. httpx's default transport (httpcore + h11) is about a third of the CPU of
such a call; through this one the whole ``rpc().execute()`` costs a fifth less (0.33 -> 0.26 ms
against a local server, alternated; scripts/bench.py's "CPU per call, layer by layer" shows
both transports in every run). httpx documents the transport as the place to change how
requests are sent ("Writing custom transports", https://www.python-httpx.org/advanced/
transports/; ``httpx.BaseTransport.handle_request``), and supabase-py takes the
``httpx.Client`` through ``ClientOptions(httpx_client=...)``, so the client libraries stay
unchanged: only the bytes on the wire are written by other code.

What it keeps from httpx's default transport (httpcore), so nothing above it notices:

- every timeout of the request (``extensions["timeout"]``: connect, write, read), each raised
  as httpx's own exception (``ConnectTimeout``, ``WriteTimeout``, ``ReadTimeout``; the write
  timeout bounds the whole send, as Python's ``sendall`` does, where httpcore bounds each
  piece: the same for a request that fits the socket's buffer, as an RPC's does), and every
  network failure as ``ConnectError``, ``WriteError``, ``ReadError`` or ``RemoteProtocolError``
  (all ``httpx.HTTPError``: the store maps them to ``DatabaseUnavailable``);
- a request is sent at most once. An idle connection the server has closed is found before
  it is used (its socket reads as ready: httpcore checks the same way) and replaced; a request
  that fails after being written is never resent, because the server may have run it (a POST
  RPC such as ``create_job`` is not idempotent). postgrest-py resends only GET and HEAD
  (``send_with_retry``), and the store sends neither;
- idle connections expire after ``keepalive_expiry`` seconds (httpx's default: 5) and at most
  ``max_idle`` are kept (httpx's default ``max_keepalive_connections``: 20);
- TLS is verified with httpx's own default context (``httpx.create_ssl_context()``: certifi's
  roots, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

What it leaves out, because the store needs none of it: HTTP/2, proxies (a custom transport
turns httpx's environment proxies off in any case), and streaming: the response body is read
whole before ``handle_request`` returns (an RPC's answer is one JSON document). A connection
is used by one request at a time; any number of threads may share the transport.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

#: httpx's defaults (``httpx.Limits``: max_keepalive_connections=20, keepalive_expiry=5.0)
DEFAULT_MAX_IDLE = 20
DEFAULT_KEEPALIVE_EXPIRY_S = 5.0

_Origin = tuple[str, str, int]


class _Idle:
    """An idle connection and when it was last used."""

    __slots__ = ("connection", "since")

    def __init__(self, connection: http.client.HTTPConnection, since: float) -> None:
        self.connection = connection
        self.since = since


class KeepAliveTransport(httpx.BaseTransport):
    """httpx transport: HTTP/1.1 over pooled ``http.client`` connections (see the module)."""

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
        self._idle: dict[_Origin, list[_Idle]] = {}
        self._idle_count = 0
        self._lock = threading.Lock()
        self._closed = False

    # --- the pool ----------------------------------------------------------------------------

    def _checkout(self, origin: _Origin) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to ``origin`` that is still usable."""
        now = time.monotonic()
        while True:
            with self._lock:
                stack = self._idle.get(origin)
                if not stack:
                    return None
                idle = stack.pop()
                self._idle_count -= 1
            if now - idle.since < self._keepalive_expiry and not _closed_by_peer(idle.connection):
                return idle.connection
            idle.connection.close()

    def _checkin(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and self._idle_count < self._max_idle:
                self._idle.setdefault(origin, []).append(_Idle(connection, time.monotonic()))
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
            for idle in stack:
                idle.connection.close()

    def _connect(self, origin: _Origin, timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._ssl_context
            )
        elif scheme == "http":
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise httpx.UnsupportedProtocol(f"the URL's scheme {scheme!r} is not http or https")
        with _mapped(httpx.ConnectTimeout, httpx.ConnectError):
            connection.connect()
        return connection

    # --- one request -------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        connection = self._checkout(origin) or self._connect(origin, timeouts.get("connect"))
        try:
            response, body = _exchange(connection, request, timeouts)
        except BaseException:
            connection.close()  # its state is unknown: never reused
            raise
        if response.will_close:
            connection.close()
        else:
            self._checkin(origin, connection)
        return httpx.Response(
            response.status,
            # bytes as received (http.client decodes header lines as latin-1)
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.msg.items()],
            stream=httpx.ByteStream(body),
            extensions={
                "http_version": b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1",
                "reason_phrase": response.reason.encode("latin-1", "replace"),
            },
        )


def _exchange(
    connection: http.client.HTTPConnection, request: httpx.Request, timeouts: dict[str, float]
) -> tuple[http.client.HTTPResponse, bytes]:
    """Write the request and read the whole answer (each phase under its own timeout)."""
    sock = connection.sock
    assert sock is not None  # connected by _connect, or kept open by the pool
    chunked = "transfer-encoding" in request.headers
    body = request.stream if chunked else request.read()
    with _mapped(httpx.WriteTimeout, httpx.WriteError):
        sock.settimeout(timeouts.get("write"))
        # http.client refuses a header value with a line break (ValueError): httpx's own
        # transport raises LocalProtocolError for it (h11), an httpx.HTTPError like the rest
        connection.putrequest(
            request.method, request.url.raw_path.decode("ascii"), True, True
        )  # skip_host, skip_accept_encoding: httpx wrote both headers already
        for name, value in request.headers.raw:
            connection.putheader(name, value)
        connection.endheaders(body, encode_chunked=chunked)  # type: ignore[arg-type]
    with _mapped(httpx.ReadTimeout, httpx.ReadError):
        sock.settimeout(timeouts.get("read"))
        response = connection.getresponse()
        body = response.read()
    if 100 <= response.status < 200:
        # http.client skips only 100 Continue; another 1xx (103 Early Hints) would come back as
        # the answer while the real one waits unread on the socket, to be read by the next
        # request on this connection. Neither PostgREST nor Supabase's edge sends one; should
        # one come, the caller sees a protocol error and the connection is closed, not pooled.
        raise httpx.RemoteProtocolError(f"unexpected informational response {response.status}")
    return response, body


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket is readable only when the server closed it (EOF) or sent
    something unasked: either way it cannot carry a request (httpcore's ``is_readable``)."""
    sock = connection.sock
    if sock is None:
        return True
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
    (``map_httpcore_exceptions``): the phase decides which timeout or error it is."""
    try:
        yield
    except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
        raise timeout(str(exc) or "timed out") from exc
    except http.client.RemoteDisconnected as exc:
        # httpcore's words for the same event
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from exc
    except http.client.HTTPException as exc:  # a malformed or cut-off answer
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
    except OSError as exc:  # refused, reset, unreachable, TLS failure
        raise failure(str(exc) or type(exc).__name__) from exc
    except ValueError as exc:  # an illegal header in the request (a TLS verify error is an
        # OSError and a ValueError: caught above, as the ConnectError it is)
        raise httpx.LocalProtocolError(str(exc)) from exc
