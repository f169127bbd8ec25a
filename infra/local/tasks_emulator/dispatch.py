"""One HTTP attempt of a task: send the request, classify what came back.

Kept apart from the scheduler so the dispatch of one attempt can be read (and reasoned about)
on its own. The caller enforces the dispatch deadline: it is told about the connected socket
through `watch` and may shut it down from another thread when the deadline passes. (A socket
timeout alone bounds each read, not the attempt: a worker trickling bytes would outlive it.)
"""

from __future__ import annotations

import email.utils
import http.client
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

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


def encoded_url(url: str) -> str:
    """The URL as it goes on the wire (Cloud Tasks "will encode some characters")."""
    parts = urlsplit(url)
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    return f"{parts.scheme}://{parts.netloc}{target}"


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


def _open(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"URL {url!r} has no host")
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    return connection, target


def send(dispatch: HttpDispatch, watch: SocketWatch) -> AttemptOutcome:
    """Send one attempt; never raises for network trouble, which is an outcome like any other."""
    try:
        connection, target = _open(dispatch.url, dispatch.deadline_s)
    except ValueError as error:
        return AttemptOutcome(None, RPC_UNAVAILABLE, str(error))
    try:
        connection.connect()
        # The socket object, not the connection: http.client drops `connection.sock` once a
        # response that closes the connection starts, while the body is still being read.
        watch(connection.sock)
        connection.request(
            dispatch.method, target, body=dispatch.body or None, headers=dict(dispatch.headers)
        )
        response = connection.getresponse()
        response.read()
    except TimeoutError:
        return deadline_exceeded(dispatch.deadline_s)
    except (OSError, http.client.HTTPException) as error:
        return AttemptOutcome(None, RPC_UNAVAILABLE, f"{type(error).__name__}: {error}")
    finally:
        watch(None)
        connection.close()
    status = response.status
    return AttemptOutcome(
        status,
        rpc_code_for_http_status(status),
        f"HTTP {status}",
        retry_after_seconds(response.getheader("Retry-After")),
    )
