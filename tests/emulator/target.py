"""Helpers for the Cloud Tasks emulator tests: a real client, an HTTP target that records.

The client is the production one (`google-cloud-tasks` over an insecure gRPC channel), and the
target is a real HTTP server on 127.0.0.1 that records every request the emulator sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2, timestamp_pb2

from tests.support import wait_until

LOCATION = "projects/test-project/locations/asia-northeast1"
# Lowest dispatch_deadline the tests' emulator accepts (Cloud Tasks' own floor is 15 s).
TEST_MIN_DEADLINE_S = 0.5


@dataclass(frozen=True)
class Received:
    """One request as the target saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float  #: time.time()
    client_port: int  #: the emulator's end of the connection (the same port: a reused one)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.0  #: silence before the response
    trickle_s: float = 0.0  #: if set, send headers at once, then one body byte this often
    retry_after: str | None = None  #: a Retry-After response header
    #: close the connection without answering (a server dropping a kept-alive connection
    #: just as a request arrives on it)
    drop: bool = False


# A trickled body this long outlasts any deadline a test uses.
_TRICKLE_BYTES = 1000

Behaviour = Callable[[Received, int], Reply]


@dataclass
class Target:
    """An HTTP server whose replies a test scripts; `release` cuts every delay short."""

    url: str
    behaviour: Behaviour = lambda received, index: Reply()
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    #: None: every reply says ``Connection: close``; else connections are kept alive and
    #: closed by the target after this many idle seconds
    keep_alive_s: float | None = None
    closed_connections: int = 0

    # Generous: a condition wait only costs its length when it fails, and a loaded 2-core
    # machine can take seconds to deliver what takes milliseconds alone.
    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        wait_until(lambda: len(self.received) >= count, f"{count} requests", timeout_s)
        with self.lock:
            return list(self.received)

    def by_task(self, task_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.headers.get("x-cloudtasks-taskname") == task_id]


class _TargetHandler(BaseHTTPRequestHandler):
    server: TargetServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # An idle kept-alive connection is closed once this passes (the read of the next
        # request times out), as a server's keep-alive timeout does.
        self.connection.settimeout(self.server.target.keep_alive_s)

    def _serve(self) -> None:
        target = self.server.target
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(
            method=self.command,
            path=self.path,
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
            arrived_at=time.time(),
            client_port=int(self.client_address[1]),
        )
        with target.lock:
            index = len(target.received)
            target.received.append(received)
            target.in_flight += 1
            target.peak_in_flight = max(target.peak_in_flight, target.in_flight)
        reply = target.behaviour(received, index)
        try:
            if reply.delay_s:
                target.release.wait(reply.delay_s)
        finally:
            # Counted out before the status line is written: the emulator may launch the next
            # attempt as soon as it reads this reply, and counting out after the write let that
            # next request arrive first (a peak of 5 on a queue capped at 4, 1 CI run in ~10).
            with target.lock:
                target.in_flight -= 1
        if reply.drop:
            self.close_connection = True
            return
        self._reply(reply, target.release, close=target.keep_alive_s is None)

    def _reply(self, reply: Reply, release: threading.Event, *, close: bool) -> None:
        body_length = _TRICKLE_BYTES if reply.trickle_s else 0
        self.send_response(reply.status)
        self.send_header("Content-Length", str(body_length))
        if reply.retry_after is not None:
            self.send_header("Retry-After", reply.retry_after)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        for _ in range(body_length):
            if release.wait(reply.trickle_s):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return


class TargetServer(ThreadingHTTPServer):
    def __init__(self, target: Target) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.target = target

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The emulator hangs up on slow requests at the dispatch deadline; that is expected.
        return

    def shutdown_request(self, request: Any) -> None:
        # Counted once the socket is shut down and closed (the client can see it), not when the
        # handler finishes, which comes before: a test waiting for the count then found the
        # connection still open under load.
        super().shutdown_request(request)
        with self.target.lock:
            self.target.closed_connections += 1


def make_client(address: str) -> tasks_v2.CloudTasksClient:
    """The construction production uses when CLOUD_TASKS_EMULATOR_HOST is set."""
    channel = grpc.insecure_channel(address)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def seconds(value: float) -> duration_pb2.Duration:
    whole = int(value)
    return duration_pb2.Duration(seconds=whole, nanos=round((value - whole) * 1e9))


def new_queue(
    client: tasks_v2.CloudTasksClient,
    queue_id: str,
    *,
    max_concurrent: int = 0,
    retry: tasks_v2.RetryConfig | None = None,
) -> str:
    queue = tasks_v2.Queue(
        name=f"{LOCATION}/queues/{queue_id}",
        rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=max_concurrent),
        retry_config=retry,
    )
    return client.create_queue(parent=LOCATION, queue=queue).name


def http_task(
    url: str,
    *,
    name: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    deadline_s: float | None = None,
    schedule_at: float | None = None,
    oidc: tasks_v2.OidcToken | None = None,
    method: int = tasks_v2.HttpMethod.POST,
) -> tasks_v2.Task:
    task = tasks_v2.Task(
        name=name,
        http_request=tasks_v2.HttpRequest(
            http_method=method,
            url=url,
            headers=headers or {},
            body=body,
            oidc_token=oidc,
        ),
    )
    if deadline_s is not None:
        task.dispatch_deadline = seconds(deadline_s)
    if schedule_at is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(schedule_at * 1e9))
        task.schedule_time = stamp
    return task


def gone(client: tasks_v2.CloudTasksClient, name: str) -> bool:
    try:
        client.get_task(name=name)
    except exceptions.NotFound:
        return True
    return False
