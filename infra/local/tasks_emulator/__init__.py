"""A local Cloud Tasks endpoint: the real `google.cloud.tasks.v2.CloudTasks` gRPC service.

Production code keeps using `google-cloud-tasks` unchanged and only points it here (see
`CLOUD_TASKS_EMULATOR_HOST` in the design). The emulator dispatches HTTP tasks as Cloud Tasks
does: concurrently within each queue's rate limits, retried with the queue's backoff, bounded
by the dispatch deadline, not before `schedule_time`, with the `X-CloudTasks-*` headers and,
for `oidc_token` tasks, an RS256 ID token that verifies against `EmulatorHandle.certs_url`.

    with start_emulator(queues=[QueueConfig("projects/p/locations/l/queues/q")]) as emulator:
        channel = grpc.insecure_channel(emulator.address)
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))

Run it on its own with `python -m infra.local.tasks_emulator --help`. The gRPC endpoint is
the emulator's own (`grpc_server.py`: HTTP/2 and gRPC's framing on one thread, every call
answered where it is read), not grpcio's server, whose thread hand-offs took half a
millisecond of each CreateTask before the task went out.

As strict as the service where the service is documented: system throttling on 429, 503,
any 5xx and a high error rate, honouring `Retry-After`; a slow ramp-up of a new or idle queue
(`ThrottlePolicy`, whose numbers are the emulator's own: Cloud Tasks publishes none; `OFF`
for tests that measure rates); `X-CloudTasks-TaskExecutionCount` without 5xx responses and no
`X-CloudTasks-TaskRetryReason` for HTTP targets; task-name tombstones that expire after an hour
(`tombstone_ttl_s`); the task size, URL and header limits.

Where it knowingly differs from Cloud Tasks: state is in memory and lost on stop; backoffs
keep fractions of a second (Cloud Tasks truncates to whole seconds); the 15 s
`dispatch_deadline` floor can be lowered for tests (`min_dispatch_deadline_s`, or the
environment variable CLOUD_TASKS_EMULATOR_MIN_DISPATCH_DEADLINE_S); no ramp-up when many
tasks fall due at once in a queue already running; no redirect following; only HTTP tasks
with OIDC or no auth (App Engine tasks, OAuth tokens, queue-level `http_target`, IAM, CMEK and
batch methods are refused as UNIMPLEMENTED); ListQueues filters only on `state`; CreateTask
refuses what could never go on the wire, where Cloud Tasks documents no rule at all: a URL
that does not parse, has no host, or holds a space or control character, and a header (other
than the reserved ones, which are dropped) whose name is not an HTTP token or whose value holds
CR, LF or NUL; a header value beyond Latin-1 is sent UTF-8-encoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from types import TracebackType

from infra.local.tasks_emulator.engine import DEFAULT_TOMBSTONE_TTL_S, LOGGER, Engine
from infra.local.tasks_emulator.grpc_server import UnaryGrpcServer
from infra.local.tasks_emulator.model import (
    MIN_DISPATCH_DEADLINE_S,
    EmulatorError,
    QueueConfig,
    RetryPolicy,
    check_queue_name,
)
from infra.local.tasks_emulator.oidc import CertsServer, OidcSigner
from infra.local.tasks_emulator.service import grpc_methods
from infra.local.tasks_emulator.throttle import OFF, ThrottlePolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8123
#: Lowers the 15 s floor of `dispatch_deadline` (seconds, float) so tests can be quick.
MIN_DISPATCH_DEADLINE_ENV = "CLOUD_TASKS_EMULATOR_MIN_DISPATCH_DEADLINE_S"
#: Attempts in flight across all queues; each queue's own limit applies within it.
DEFAULT_MAX_WORKERS = 64

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MIN_DISPATCH_DEADLINE_ENV",
    "OFF",
    "EmulatorError",
    "EmulatorHandle",
    "QueueConfig",
    "RetryPolicy",
    "ThrottlePolicy",
    "start_emulator",
]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EmulatorHandle:
    """A running emulator: its addresses, queue setup, and `stop()` (also as a context)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        engine: Engine,
        server: UnaryGrpcServer,
        certs: CertsServer,
    ) -> None:
        self.host = host
        self.port = port
        #: "HOST:PORT", the value for CLOUD_TASKS_EMULATOR_HOST and grpc.insecure_channel.
        self.address = _host_port(host, port)
        #: Google-style v1 certs URL for google.oauth2.id_token.verify_token(certs_url=...).
        self.certs_url = certs.url
        self._engine = engine
        self._server = server
        self._certs = certs
        self._stopped = False

    def create_queue(self, config: QueueConfig | str) -> None:
        """Create a queue as CreateQueue would; EmulatorError(ALREADY_EXISTS) if it exists."""
        queue_config = QueueConfig(config) if isinstance(config, str) else config
        location = check_queue_name(queue_config.name).rsplit("/queues/", 1)[0]
        self._engine.create_queue(location, queue_config.to_pb())

    def stop(self) -> None:
        """Stop serving and dispatching; join every thread and close every socket."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        self._engine.stop()
        self._certs.stop()

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _min_deadline_from_env() -> float:
    raw = os.environ.get(MIN_DISPATCH_DEADLINE_ENV)
    if raw is None or not raw.strip():
        return MIN_DISPATCH_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{MIN_DISPATCH_DEADLINE_ENV}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{MIN_DISPATCH_DEADLINE_ENV} must be positive, not {raw!r}")
    return value


def start_emulator(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    queues: Iterable[QueueConfig | str] = (),
    min_dispatch_deadline_s: float | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    throttle: ThrottlePolicy | None = None,
    tombstone_ttl_s: float = DEFAULT_TOMBSTONE_TTL_S,
    logger: logging.Logger = LOGGER,
) -> EmulatorHandle:
    """Start the gRPC server, dispatcher and certs endpoint in background threads.

    `port=0` picks a free port (see `handle.port`). `min_dispatch_deadline_s` lowers Cloud
    Tasks' 15 s minimum `dispatch_deadline` (default: $CLOUD_TASKS_EMULATOR_MIN_DISPATCH_DEADLINE_S
    or 15). `max_workers` bounds attempts in flight across all queues. `throttle` sets system
    throttling and ramp-up (default `ThrottlePolicy()`, both on; `OFF` for neither);
    `tombstone_ttl_s` how long a used task name is refused.
    """
    if min_dispatch_deadline_s is None:
        min_dispatch_deadline_s = _min_deadline_from_env()
    signer = OidcSigner()
    certs = CertsServer(signer, host)
    engine = Engine(
        signer=signer,
        max_workers=max_workers,
        min_dispatch_deadline_s=min_dispatch_deadline_s,
        throttle=throttle,
        tombstone_ttl_s=tombstone_ttl_s,
        logger=logger,
    )
    try:
        server = UnaryGrpcServer(host, port, grpc_methods(engine), logger=logger)
    except OSError as error:
        engine.stop()
        certs.stop()
        raise OSError(f"cannot listen on {_host_port(host, port)}: {error}") from error
    handle = EmulatorHandle(host=host, port=server.port, engine=engine, server=server, certs=certs)
    certs.start()
    engine.start()
    server.start()
    try:
        for queue in queues:
            handle.create_queue(queue)
    except BaseException:
        handle.stop()
        raise
    return handle
