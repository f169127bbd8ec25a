"""The rules of Cloud Tasks that need no I/O: names, defaults, limits, backoff and status codes.

Everything here follows the `google.cloud.tasks.v2` API reference (the docstrings of
`google.cloud.tasks_v2.types`); the emulator's engine and gRPC service only apply it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from infra.local.tasks_emulator.grpc_server import RpcError

# Raw protobuf classes behind the proto-plus wrappers: the server speaks protobuf directly.
QueuePb: Any = tasks_v2.Queue.pb()
TaskPb: Any = tasks_v2.Task.pb()
AttemptPb: Any = tasks_v2.Attempt.pb()
RetryConfigPb: Any = tasks_v2.RetryConfig.pb()
RateLimitsPb: Any = tasks_v2.RateLimits.pb()

QUEUE_STATE_RUNNING = int(tasks_v2.Queue.State.RUNNING)
QUEUE_STATE_PAUSED = int(tasks_v2.Queue.State.PAUSED)
VIEW_BASIC = int(tasks_v2.Task.View.BASIC)
VIEW_FULL = int(tasks_v2.Task.View.FULL)

# Queue defaults Cloud Tasks fills in when CreateQueue leaves a field unset.
DEFAULT_MAX_DISPATCHES_PER_SECOND = 500.0
DEFAULT_MAX_BURST_SIZE = 100
DEFAULT_MAX_CONCURRENT_DISPATCHES = 1000
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 3600.0
DEFAULT_MAX_DOUBLINGS = 16

# Documented upper bounds of RateLimits.
MAX_DISPATCHES_PER_SECOND_LIMIT = 500.0
MAX_CONCURRENT_DISPATCHES_LIMIT = 5000

# Dispatch deadline of HTTP tasks: default 10 min, allowed interval [15 s, 30 min].
DEFAULT_DISPATCH_DEADLINE_S = 600.0
MIN_DISPATCH_DEADLINE_S = 15.0
MAX_DISPATCH_DEADLINE_S = 1800.0

_PROJECT_ID = r"[A-Za-z0-9\-:.]{1,100}"
_LOCATION_ID = r"[A-Za-z0-9-]{1,63}"
LOCATION_NAME = re.compile(rf"^projects/{_PROJECT_ID}/locations/{_LOCATION_ID}$")
QUEUE_NAME = re.compile(
    rf"^(?P<location>projects/{_PROJECT_ID}/locations/{_LOCATION_ID})/queues/(?P<queue>[A-Za-z0-9-]{{1,100}})$"
)
TASK_NAME = re.compile(
    rf"^(?P<queue_name>projects/{_PROJECT_ID}/locations/{_LOCATION_ID}/queues/[A-Za-z0-9-]{{1,100}})"
    r"/tasks/(?P<task>[A-Za-z0-9_-]{1,500})$"
)

# google.rpc.Code values, as carried in Attempt.response_status.
RPC_OK = 0
RPC_DEADLINE_EXCEEDED = 4
RPC_UNAVAILABLE = 14
_RPC_CODE_BY_HTTP_STATUS = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    409: 10,  # ABORTED
    429: 8,  # RESOURCE_EXHAUSTED
    499: 1,  # CANCELLED
    500: 13,  # INTERNAL
    501: 12,  # UNIMPLEMENTED
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
_RPC_FAILED_PRECONDITION = 9
_RPC_INTERNAL = 13
_RPC_UNKNOWN = 2


class EmulatorError(RpcError):
    """A request the emulator refuses, with the gRPC status real Cloud Tasks would return."""


def invalid(message: str) -> EmulatorError:
    return EmulatorError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> EmulatorError:
    return EmulatorError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> EmulatorError:
    return EmulatorError(grpc.StatusCode.ALREADY_EXISTS, message)


def unimplemented(message: str) -> EmulatorError:
    return EmulatorError(grpc.StatusCode.UNIMPLEMENTED, message)


def check_location_name(name: str) -> str:
    if not LOCATION_NAME.match(name):
        raise invalid(f"location name {name!r} is not projects/PROJECT_ID/locations/LOCATION_ID")
    return name


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME.match(name):
        raise invalid(
            f"queue name {name!r} is not projects/PROJECT_ID/locations/LOCATION_ID/queues/QUEUE_ID"
        )
    return name


def queue_id(queue_name: str) -> str:
    """The last segment, as sent in X-CloudTasks-QueueName."""
    return queue_name.rsplit("/", 1)[-1]


def parse_task_name(name: str) -> tuple[str, str]:
    """Split a full task name into (queue name, task id), or raise INVALID_ARGUMENT."""
    match = TASK_NAME.match(name)
    if not match:
        raise invalid(
            f"task name {name!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID/queues/QUEUE_ID/tasks/TASK_ID"
        )
    return match["queue_name"], match["task"]


def rpc_code_for_http_status(status: int) -> int:
    """google.rpc.Code for a worker's HTTP status, by the usual HTTP↔gRPC mapping."""
    if 200 <= status < 300:
        return RPC_OK
    if status in _RPC_CODE_BY_HTTP_STATUS:
        return _RPC_CODE_BY_HTTP_STATUS[status]
    if 400 <= status < 500:
        return _RPC_FAILED_PRECONDITION
    if 500 <= status < 600:
        return _RPC_INTERNAL
    return _RPC_UNKNOWN


def seconds_of(duration: Any) -> float:
    """A protobuf Duration as float seconds."""
    seconds: float = duration.seconds + duration.nanos / 1e9
    return seconds


def duration_of(seconds: float) -> Any:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def epoch_of(timestamp: Any) -> float:
    """A protobuf Timestamp as float seconds since the epoch."""
    seconds: float = timestamp.seconds + timestamp.nanos / 1e9
    return seconds


def timestamp_of(epoch_s: float) -> Any:
    whole = int(epoch_s)
    # Cloud Tasks truncates schedule and attempt times to the microsecond.
    micros = int((epoch_s - whole) * 1e6)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=micros * 1000)


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's (or task's) RetryConfig with the defaults applied, in seconds."""

    max_attempts: int
    min_backoff_s: float
    max_backoff_s: float
    max_doublings: int
    max_retry_duration_s: float

    @classmethod
    def from_pb(cls, config: Any) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            min_backoff_s=seconds_of(config.min_backoff),
            max_backoff_s=seconds_of(config.max_backoff),
            max_doublings=config.max_doublings,
            max_retry_duration_s=seconds_of(config.max_retry_duration),
        )

    def backoff_s(self, failed_attempts: int) -> float:
        """Wait before the next attempt after `failed_attempts` (>= 1) failures.

        RetryConfig.max_doublings: the interval starts at min_backoff, doubles max_doublings
        times, then grows linearly by min_backoff * 2**max_doublings, capped at max_backoff.
        With 10 s / 300 s / 3 doublings: 10, 20, 40, 80, 160, 240, 300, 300, ...
        """
        retry_index = max(failed_attempts - 1, 0)
        if retry_index <= self.max_doublings:
            interval = self.min_backoff_s * 2.0**retry_index
        else:
            step = self.min_backoff_s * 2.0**self.max_doublings
            interval = step * (retry_index - self.max_doublings + 1)
        return min(interval, self.max_backoff_s)

    def gives_up(self, attempts: int, since_first_attempt_s: float) -> bool:
        """Whether a task that failed `attempts` times is deleted instead of retried.

        Cloud Tasks stops only when both max_attempts and max_retry_duration are satisfied;
        -1 attempts and a zero duration each mean "no limit" on their own axis.
        """
        duration_spent = (
            self.max_retry_duration_s > 0 and since_first_attempt_s >= self.max_retry_duration_s
        )
        if self.max_attempts == -1:
            return duration_spent
        attempts_spent = attempts >= self.max_attempts
        if self.max_retry_duration_s <= 0:
            return attempts_spent
        return attempts_spent and duration_spent


def _check_retry_config(config: Any) -> None:
    if config.max_attempts < -1:
        raise invalid("retry_config.max_attempts must be >= -1")
    if config.max_doublings < 0:
        raise invalid("retry_config.max_doublings must not be negative")
    for field in ("min_backoff", "max_backoff", "max_retry_duration"):
        if seconds_of(getattr(config, field)) < 0:
            raise invalid(f"retry_config.{field} must not be negative")


def normalise_retry_config(config: Any) -> Any:
    """A copy of a RetryConfig pb with Cloud Tasks' defaults in unset fields; validated.

    proto3 cannot tell an unset number from 0, so 0 means "Cloud Tasks' default" here, as
    it does for CreateQueue.
    """
    _check_retry_config(config)
    result = RetryConfigPb()
    result.CopyFrom(config)
    if result.max_attempts == 0:
        result.max_attempts = DEFAULT_MAX_ATTEMPTS
    if result.max_doublings == 0:
        result.max_doublings = DEFAULT_MAX_DOUBLINGS
    if seconds_of(result.min_backoff) == 0:
        result.min_backoff.CopyFrom(duration_of(DEFAULT_MIN_BACKOFF_S))
    if seconds_of(result.max_backoff) == 0:
        result.max_backoff.CopyFrom(duration_of(DEFAULT_MAX_BACKOFF_S))
    if seconds_of(result.min_backoff) > seconds_of(result.max_backoff):
        raise invalid("retry_config.min_backoff must not exceed max_backoff")
    # Present even when zero (unlimited), so GetQueue shows the effective setting.
    result.max_retry_duration.SetInParent()
    return result


def normalise_rate_limits(limits: Any) -> Any:
    """A copy of a RateLimits pb with defaults applied; max_burst_size is output only."""
    result = RateLimitsPb()
    result.CopyFrom(limits)
    if result.max_dispatches_per_second < 0 or (
        result.max_dispatches_per_second > MAX_DISPATCHES_PER_SECOND_LIMIT
    ):
        limit = MAX_DISPATCHES_PER_SECOND_LIMIT
        raise invalid(f"rate_limits.max_dispatches_per_second must be in (0, {limit}]")
    if result.max_dispatches_per_second == 0:
        result.max_dispatches_per_second = DEFAULT_MAX_DISPATCHES_PER_SECOND
    if not 0 <= result.max_concurrent_dispatches <= MAX_CONCURRENT_DISPATCHES_LIMIT:
        limit = MAX_CONCURRENT_DISPATCHES_LIMIT
        raise invalid(f"rate_limits.max_concurrent_dispatches must be in [1, {limit}]")
    if result.max_concurrent_dispatches == 0:
        result.max_concurrent_dispatches = DEFAULT_MAX_CONCURRENT_DISPATCHES
    # Cloud Tasks picks the burst itself; about one second of traffic, at most 100.
    result.max_burst_size = max(
        1, min(DEFAULT_MAX_BURST_SIZE, round(result.max_dispatches_per_second))
    )
    return result


@dataclass(frozen=True)
class QueueConfig:
    """A queue to create from Python or the command line; None leaves Cloud Tasks' default."""

    name: str
    max_concurrent_dispatches: int | None = None
    max_dispatches_per_second: float | None = None
    max_attempts: int | None = None
    min_backoff_s: float | None = None
    max_backoff_s: float | None = None
    max_doublings: int | None = None
    max_retry_duration_s: float | None = None

    def to_pb(self) -> Any:
        queue = QueuePb(name=self.name)
        if self.max_concurrent_dispatches is not None:
            queue.rate_limits.max_concurrent_dispatches = self.max_concurrent_dispatches
        if self.max_dispatches_per_second is not None:
            queue.rate_limits.max_dispatches_per_second = self.max_dispatches_per_second
        retry = queue.retry_config
        if self.max_attempts is not None:
            retry.max_attempts = self.max_attempts
        if self.max_doublings is not None:
            retry.max_doublings = self.max_doublings
        if self.min_backoff_s is not None:
            retry.min_backoff.CopyFrom(duration_of(self.min_backoff_s))
        if self.max_backoff_s is not None:
            retry.max_backoff.CopyFrom(duration_of(self.max_backoff_s))
        if self.max_retry_duration_s is not None:
            retry.max_retry_duration.CopyFrom(duration_of(self.max_retry_duration_s))
        return queue
