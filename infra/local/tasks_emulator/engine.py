"""Queues, tasks and the dispatcher: the state behind the emulated Cloud Tasks API.

One lock (a condition variable) guards all state. A scheduler thread wakes when something
changes or becomes due, launches due tasks into a bounded thread pool within each queue's
`max_concurrent_dispatches` and token bucket (`max_dispatches_per_second`), and shuts down the
socket of any attempt that outlives its dispatch deadline. Workers send the HTTP request
without the lock and report the outcome back, which either deletes the task (2xx, or retries
used up) or schedules the next attempt with the queue's backoff.

The common case takes a shorter path under the same rules: a new task that may go at once
(due, its queue running with a free slot, a token, and no older task waiting) is launched by
CreateTask itself, and the scheduler is woken only when it must look before it planned to
(the new attempt's deadline is sooner, or something became due or free). Each hand-off to
another thread costs a wake-up and, on a busy machine, a wait for the GIL: the launch now takes
none (the request itself still goes out on a pool thread, as CreateTask must answer).

Task names are remembered once a task completes, fails for good or is deleted, so reusing a
name is ALREADY_EXISTS as in Cloud Tasks, for `tombstone_ttl_s` (default one hour: "another
task with the same name can't be created for ~1 hour after the original task was deleted or
executed", CreateTaskRequest reference; the quotas page's task de-duplication window).

System throttling and ramp-up (429/503/5xx and a high error rate slow the queue, Retry-After
is honoured, a new or idle queue starts slowly) are in `throttle.py`; the limits of a task
(size, URL, headers) are checked at CreateTask as the service does.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from google.cloud import tasks_v2
from google.rpc import status_pb2

from infra.local.tasks_emulator import dispatch
from infra.local.tasks_emulator.model import (
    DEFAULT_DISPATCH_DEADLINE_S,
    MAX_DISPATCH_DEADLINE_S,
    QUEUE_STATE_PAUSED,
    QUEUE_STATE_RUNNING,
    RPC_UNAVAILABLE,
    AttemptPb,
    EmulatorError,
    QueuePb,
    RetryPolicy,
    TaskPb,
    already_exists,
    check_location_name,
    check_queue_name,
    duration_of,
    epoch_of,
    invalid,
    normalise_rate_limits,
    normalise_retry_config,
    not_found,
    parse_task_name,
    queue_id,
    seconds_of,
    timestamp_of,
    unimplemented,
)
from infra.local.tasks_emulator.oidc import OidcSigner
from infra.local.tasks_emulator.throttle import QueueFlow, ThrottlePolicy, is_backoff_error

LOGGER = logging.getLogger("infra.local.tasks_emulator")

# The scheduler re-checks at least this often even when nothing is due, as a safety net.
_IDLE_WAKE_S = 1.0

_HTTP_METHODS = {
    int(tasks_v2.HttpMethod.POST): "POST",
    int(tasks_v2.HttpMethod.GET): "GET",
    int(tasks_v2.HttpMethod.HEAD): "HEAD",
    int(tasks_v2.HttpMethod.PUT): "PUT",
    int(tasks_v2.HttpMethod.DELETE): "DELETE",
    int(tasks_v2.HttpMethod.PATCH): "PATCH",
    int(tasks_v2.HttpMethod.OPTIONS): "OPTIONS",
}
_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}
#: CreateTask limits: task size (quotas page, "Maximum task size": 1 MB; the v2 client's
#: CreateTask docstring still says 100KB, from the App Engine era), URL length after encoding
#: (HttpRequest.url: 2083 characters) and headers (HttpRequest.headers: "less than 80KB").
MAX_TASK_BYTES = 1024 * 1024
MAX_URL_CHARS = 2083
MAX_HEADER_BYTES = 80 * 1024
#: "~1 hour" of task-name de-duplication after a task was deleted or executed.
DEFAULT_TOMBSTONE_TTL_S = 3600.0
#: What a header must be to go on the wire at all: its name an HTTP token (RFC 9110 5.1,
#: 5.6.2), its value without CR, LF or NUL (RFC 9110 5.5: a recipient must reject or replace
#: those; CR and LF would also split the request). Cloud Tasks documents no rule of its own
#: (HttpRequest.headers names only reserved headers and the 80KB cap); the emulator refuses
#: only what it could never send, at CreateTask, rather than leave the task failing forever.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\r\n\x00]*")
#: A URL with a control character or a space: http.client would refuse its host
#: (InvalidURL), and urlsplit silently drops tabs and newlines, sending to another URL.
_URL_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")
# Request headers Cloud Tasks computes or reserves, so a task's own values are dropped.
_RESERVED_HEADERS = {"host", "content-length", "user-agent"}
_RESERVED_PREFIXES = ("x-google-", "x-appengine-", "x-cloudtasks-")


@dataclass(eq=False)
class _TaskEntry:
    task: Any  #: the Task pb as GetTask shows it
    due_at: float  #: epoch seconds of the next attempt
    in_flight: bool = False
    first_dispatch_at: float | None = None
    previous_response: int | None = None  #: HTTP status of the last attempt, if any
    #: responses other than 5xx: X-CloudTasks-TaskExecutionCount "does not include failures
    #: due to 5XX error codes" (Task.response_count counts them all)
    execution_count: int = 0


@dataclass(eq=False)
class _QueueEntry:
    queue: Any  #: the Queue pb as GetQueue shows it
    flow: QueueFlow
    tasks: dict[str, _TaskEntry] = field(default_factory=dict)
    in_flight: int = 0


@dataclass(eq=False)
class _Attempt:
    """One dispatch in progress; the scheduler watches its deadline."""

    queue: _QueueEntry
    entry: _TaskEntry
    request: dispatch.HttpDispatch
    deadline_at: float  #: monotonic
    sock: socket.socket | None = None
    timed_out: bool = False
    #: the request, when the launching thread wrote it itself (`dispatch.send_at_once`)
    sent: dispatch.Sent | None = None


def _is_reserved(header: str) -> bool:
    lowered = header.lower()
    return lowered in _RESERVED_HEADERS or lowered.startswith(_RESERVED_PREFIXES)


def _min_wait(current: float | None, candidate: float | None) -> float | None:
    if candidate is None:
        return current
    return candidate if current is None else min(current, candidate)


def _check_headers(headers: Any) -> None:
    """Each header the dispatch sends can go on the wire (`_HEADER_NAME`, `_HEADER_VALUE`);
    all of them, the reserved ones it drops included, are under the size limit."""
    for name, value in headers.items():
        if _is_reserved(name):
            continue  # dropped at dispatch (`_http_dispatch`): never on the wire
        if not _HEADER_NAME.fullmatch(name):
            raise invalid(f"http_request.headers: {name!r} is not a valid HTTP header name")
        if not _HEADER_VALUE.fullmatch(value):
            raise invalid(
                f"http_request.headers: the value of {name!r} contains CR, LF or NUL,"
                " which no HTTP request can carry"
            )
    header_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    if header_bytes >= MAX_HEADER_BYTES:
        raise invalid(f"http_request.headers must be less than {MAX_HEADER_BYTES // 1024}KB")


def _check_url(url: str) -> None:
    """A URL the dispatch can send: parsed by urlsplit, with a host, without spaces or
    control characters, and under the length limit once encoded."""
    problem = _url_problem(url) if len(url) > _CACHED_URL_MAX_CHARS else _url_problem_cached(url)
    if problem is not None:
        raise invalid(problem)


def _url_problem(url: str) -> str | None:
    if not url.startswith(("http://", "https://")):
        return "http_request.url must begin with http:// or https://"
    if _URL_UNSENDABLE.search(url):
        return "http_request.url must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it is the check: a port that is not a number raises
    except ValueError as error:
        return f"http_request.url is not a valid URL: {error}"
    if not parts.hostname:
        return "http_request.url has no host"
    if len(dispatch.encoded_url(url)) > MAX_URL_CHARS:
        return f"http_request.url is longer than {MAX_URL_CHARS} characters once encoded"
    return None


#: A queue's tasks share a URL (or a few): each is checked once, not at every CreateTask;
#: as in `dispatch.encoded_url`, long URLs (refused anyway) are checked without the cache.
_url_problem_cached = functools.lru_cache(maxsize=1024)(_url_problem)
_CACHED_URL_MAX_CHARS = 4096


def _check_http_request(task: Any) -> None:
    """Validate a new task's HTTP request in place, defaulting the method to POST."""
    if not task.HasField("http_request"):
        raise unimplemented("the emulator dispatches HTTP tasks (http_request) only")
    request = task.http_request
    _check_url(request.url)
    if request.HasField("oauth_token"):
        raise unimplemented("the emulator cannot mint OAuth access tokens; use oidc_token")
    request.http_method = request.http_method or int(tasks_v2.HttpMethod.POST)
    method = _HTTP_METHODS.get(request.http_method)
    if method is None:
        raise invalid("http_request.http_method is not a known method")
    if request.body and method not in _METHODS_WITH_BODY:
        raise invalid(f"a body is allowed only with POST, PUT or PATCH, not {method}")
    _check_headers(request.headers)
    if task.ByteSize() > MAX_TASK_BYTES:
        raise invalid(f"the task is larger than the {MAX_TASK_BYTES // 1024}KB limit")


class Engine:
    """The emulator's state and dispatcher; every public method is one Cloud Tasks RPC."""

    def __init__(
        self,
        *,
        signer: OidcSigner,
        max_workers: int,
        min_dispatch_deadline_s: float,
        throttle: ThrottlePolicy | None = None,
        tombstone_ttl_s: float = DEFAULT_TOMBSTONE_TTL_S,
        logger: logging.Logger = LOGGER,
    ) -> None:
        self._signer = signer
        self._throttle = throttle or ThrottlePolicy()
        self._tombstone_ttl_s = tombstone_ttl_s
        self._max_workers = max_workers
        self._min_deadline_s = min_dispatch_deadline_s
        self._log = logger
        self._cond = threading.Condition()
        self._queues: dict[str, _QueueEntry] = {}
        self._tombstones: dict[str, float] = {}  #: task name -> when it may be reused (epoch)
        #: the same, oldest first: the TTL is one for all, so expired names leave from the front
        self._tombstone_order: deque[tuple[float, str]] = deque()
        self._attempts: set[_Attempt] = set()
        self._stopping = False
        #: when the waiting scheduler looks next by itself (monotonic; see `_schedule_loop`)
        self._scheduler_wakes_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="tasks-emulator-dispatch")
        self._connections = dispatch.Connections()
        self._scheduler = threading.Thread(
            target=self._schedule_loop, name="tasks-emulator-scheduler", daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        """Stop dispatching, abort attempts in flight, and join every thread."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            for attempt in self._attempts:
                self._abort(attempt)
            self._cond.notify_all()
        if self._scheduler.is_alive():
            self._scheduler.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._connections.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._cond:
            yield
            # Any state change may make a task due or free a slot.
            self._cond.notify_all()

    # -- queues --------------------------------------------------------------------------

    def create_queue(self, parent: str, queue: Any) -> Any:
        check_location_name(parent)
        name = check_queue_name(queue.name)
        if not name.startswith(parent + "/queues/"):
            raise invalid(f"queue {name!r} is not in {parent!r}")
        stored = self._normalised_queue(queue)
        with self._locked():
            if name in self._queues:
                raise already_exists(f"queue {name!r} already exists")
            self._queues[name] = _QueueEntry(stored, self._flow_for(stored.rate_limits))
            return self._copy_queue(stored)

    def update_queue(self, queue: Any, paths: list[str]) -> Any:
        """UpdateQueue: merge the masked (or all settable) fields; creates a missing queue."""
        name = check_queue_name(queue.name)
        with self._locked():
            current = self._queues.get(name)
            merged = QueuePb(name=name)
            if current is not None:
                merged.CopyFrom(current.queue)
            for path in paths or ["rate_limits", "retry_config"]:
                top = path.split(".", 1)[0]
                if top not in {"rate_limits", "retry_config"}:
                    raise invalid(f"field {path!r} cannot be updated by the emulator")
                self._merge_path(merged, queue, path)
            stored = self._normalised_queue(merged)
            if current is None:
                self._queues[name] = _QueueEntry(stored, self._flow_for(stored.rate_limits))
            else:
                current.queue = stored
                current.flow = self._flow_for(stored.rate_limits)
            return self._copy_queue(stored)

    def get_queue(self, name: str) -> Any:
        with self._cond:
            return self._copy_queue(self._queue(name).queue)

    def list_queues(self, parent: str, state: int | None) -> list[Any]:
        check_location_name(parent)
        prefix = parent + "/queues/"
        with self._cond:
            return [
                self._copy_queue(entry.queue)
                for name, entry in sorted(self._queues.items())
                if name.startswith(prefix) and (state is None or entry.queue.state == state)
            ]

    def delete_queue(self, name: str) -> None:
        with self._locked():
            entry = self._queue(name)
            self._bury(entry.tasks)
            del self._queues[name]

    def purge_queue(self, name: str) -> Any:
        with self._locked():
            entry = self._queue(name)
            self._bury(entry.tasks)
            entry.tasks.clear()
            entry.queue.purge_time.CopyFrom(timestamp_of(time.time()))
            return self._copy_queue(entry.queue)

    def set_queue_state(self, name: str, state: int) -> Any:
        with self._locked():
            entry = self._queue(name)
            entry.queue.state = state
            return self._copy_queue(entry.queue)

    # -- tasks ---------------------------------------------------------------------------

    def create_task(self, parent: str, task: Any) -> Any:
        check_queue_name(parent)
        stored = self._validated_task(parent, task)
        now = time.time()
        with self._cond:
            queue = self._queue(parent)
            if not stored.name:
                stored.name = self._new_task_name(queue, parent, now)
            if stored.name in queue.tasks or self._buried(stored.name, now):
                raise already_exists(f"task {stored.name!r} already exists or existed recently")
            if not stored.HasField("schedule_time") or epoch_of(stored.schedule_time) < now:
                stored.schedule_time.CopyFrom(timestamp_of(now))
            # create_time is truncated to the second, as Cloud Tasks documents.
            stored.create_time.CopyFrom(timestamp_of(float(int(now))))
            entry = _TaskEntry(stored, epoch_of(stored.schedule_time))
            queue.tasks[stored.name] = entry
            self._dispatch_new(queue, entry, now)
            return self._copy_task(stored)

    def _new_task_name(self, queue: _QueueEntry, parent: str, now: float) -> str:
        """19 random digits, as Cloud Tasks names a task, drawn again in the unlikely case
        that the name is taken or remembered. Not uuid4, whose os.urandom is a syscall on the
        way from CreateTask's bytes to the task's write: a name must be unique, not secret."""
        while True:
            name = f"{parent}/tasks/{random.randrange(10**19):019d}"
            if name not in queue.tasks and not self._buried(name, now):
                return name

    def get_task(self, name: str) -> Any:
        with self._cond:
            return self._copy_task(self._task(name)[1].task)

    def list_tasks(self, parent: str) -> list[Any]:
        with self._cond:
            queue = self._queue(parent)
            entries = sorted(queue.tasks.values(), key=lambda e: (e.due_at, e.task.name))
            return [self._copy_task(entry.task) for entry in entries]

    def delete_task(self, name: str) -> None:
        with self._locked():
            queue, _ = self._task(name)
            # An attempt in flight still runs to its end; its outcome is then ignored.
            del queue.tasks[name]
            self._bury([name])

    def run_task(self, name: str) -> Any:
        """RunTask: dispatch now, ignoring schedule_time, rate limits and a paused queue."""
        with self._locked():
            queue, entry = self._task(name)
            if not entry.in_flight and not self._stopping:
                self._launch(queue, entry, time.time())  # _locked() wakes the scheduler
            return self._copy_task(entry.task)

    # -- validation and lookup helpers (call with the lock held where they read state) ---

    def _flow_for(self, rate_limits: Any) -> QueueFlow:
        return QueueFlow.start(
            self._throttle,
            rate_limits.max_dispatches_per_second,
            float(rate_limits.max_burst_size),
            time.monotonic(),
        )

    def _bury(self, names: Iterable[str]) -> None:
        reusable_at = time.time() + self._tombstone_ttl_s
        for name in names:
            self._tombstones[name] = reusable_at
            self._tombstone_order.append((reusable_at, name))

    def _buried(self, name: str, now: float) -> bool:
        """Whether the name is still de-duplicated; forgets expired tombstones on the way
        (from the front of the order only: a CreateTask costs no scan of every name used in
        the last hour)."""
        order = self._tombstone_order
        while order and order[0][0] <= now:
            expired_at, old = order.popleft()
            if self._tombstones.get(old) == expired_at:  # not buried again since
                del self._tombstones[old]
        reusable_at = self._tombstones.get(name)
        return reusable_at is not None and reusable_at > now

    def _queue(self, name: str) -> _QueueEntry:
        check_queue_name(name)
        entry = self._queues.get(name)
        if entry is None:
            raise not_found(f"queue {name!r} does not exist")
        return entry

    def _task(self, name: str) -> tuple[_QueueEntry, _TaskEntry]:
        queue_name, _ = parse_task_name(name)
        queue = self._queue(queue_name)
        entry = queue.tasks.get(name)
        if entry is None:
            raise not_found(f"task {name!r} does not exist")
        return queue, entry

    @staticmethod
    def _normalised_queue(queue: Any) -> Any:
        if queue.HasField("app_engine_routing_override") or queue.HasField("http_target"):
            raise unimplemented("the emulator does not support queue-level routing or http_target")
        stored = QueuePb(name=queue.name)
        stored.rate_limits.CopyFrom(normalise_rate_limits(queue.rate_limits))
        stored.retry_config.CopyFrom(normalise_retry_config(queue.retry_config))
        stored.state = queue.state or QUEUE_STATE_RUNNING
        if queue.HasField("purge_time"):
            stored.purge_time.CopyFrom(queue.purge_time)
        return stored

    @staticmethod
    def _merge_path(target: Any, source: Any, path: str) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            target, source = getattr(target, part), getattr(source, part)
        value = getattr(source, leaf)
        if hasattr(value, "CopyFrom"):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)

    def _validated_task(self, parent: str, task: Any) -> Any:
        if task.name:
            queue_name, _ = parse_task_name(task.name)
            if queue_name != parent:
                raise invalid(f"task {task.name!r} is not in queue {parent!r}")
        stored = TaskPb()
        stored.CopyFrom(task)
        _check_http_request(stored)
        if task.HasField("dispatch_deadline"):
            deadline_s = seconds_of(task.dispatch_deadline)
            if not self._min_deadline_s <= deadline_s <= MAX_DISPATCH_DEADLINE_S:
                raise invalid(
                    f"dispatch_deadline must be in [{self._min_deadline_s:g}s, "
                    f"{MAX_DISPATCH_DEADLINE_S:g}s]"
                )
        else:
            stored.dispatch_deadline.CopyFrom(duration_of(DEFAULT_DISPATCH_DEADLINE_S))
        if task.HasField("retry_config"):
            stored.retry_config.CopyFrom(normalise_retry_config(task.retry_config))
        for output_only in ("dispatch_count", "response_count", "first_attempt", "last_attempt"):
            stored.ClearField(output_only)
        return stored

    @staticmethod
    def _copy_queue(queue: Any) -> Any:
        copy = QueuePb()
        copy.CopyFrom(queue)
        return copy

    @staticmethod
    def _copy_task(task: Any) -> Any:
        copy = TaskPb()
        copy.CopyFrom(task)
        return copy

    # -- dispatching ---------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                # Launch first, so the deadlines of attempts just launched set the next wake.
                launch_wait = self._launch_due()
                wait = _min_wait(self._enforce_deadlines(), launch_wait)
                timeout = _IDLE_WAKE_S if wait is None else min(wait, _IDLE_WAKE_S)
                self._scheduler_wakes_at = time.monotonic() + timeout
                self._cond.wait(timeout)

    def _wake_scheduler_by(self, at: float) -> None:
        """Make the scheduler look again by ``at`` (monotonic); call with the lock held.

        Sleeping, it would look at ``_scheduler_wakes_at`` anyway; woken already (waiting for
        the lock), it looks once this thread lets go of the lock."""
        if at < self._scheduler_wakes_at:
            self._cond.notify_all()

    def _dispatch_new(self, queue: _QueueEntry, entry: _TaskEntry, now: float) -> None:
        """A new task: launch it here when the scheduler would launch it right away, else
        leave it to the scheduler, woken only if it must look sooner than it planned to."""
        if queue.queue.state != QUEUE_STATE_RUNNING or self._stopping:
            return  # ResumeQueue wakes the scheduler, which then finds the task
        if entry.due_at > now:
            self._wake_scheduler_by(time.monotonic() + (entry.due_at - now))
            return
        if not self._has_room(queue) or self._others_waiting(queue, entry, now):
            return  # the scheduler holds older tasks, or an attempt's end wakes it
        token_wait = queue.flow.take(time.monotonic())
        if token_wait > 0:
            self._wake_scheduler_by(time.monotonic() + token_wait)
            return
        attempt = self._launch(queue, entry, now, send_at_once=True)
        self._wake_scheduler_by(attempt.deadline_at)

    def _has_room(self, queue: _QueueEntry) -> bool:
        """Whether the pool and the queue's `max_concurrent_dispatches` allow one more."""
        return (
            len(self._attempts) < self._max_workers
            and queue.in_flight < queue.queue.rate_limits.max_concurrent_dispatches
        )

    @staticmethod
    def _others_waiting(queue: _QueueEntry, entry: _TaskEntry, now: float) -> bool:
        """Whether another task of the queue is due and not yet launched (it goes first)."""
        return any(
            other is not entry and not other.in_flight and other.due_at <= now
            for other in queue.tasks.values()
        )

    def _launch_due(self) -> float | None:
        """Launch every task that may go now; return seconds until the next may."""
        now = time.time()
        wait: float | None = None
        for queue in self._queues.values():
            if queue.queue.state != QUEUE_STATE_RUNNING:
                continue
            waiting = sorted(
                (entry for entry in queue.tasks.values() if not entry.in_flight),
                key=lambda entry: entry.due_at,
            )
            for entry in waiting:
                if entry.due_at > now:
                    wait = _min_wait(wait, entry.due_at - now)
                    break
                # A full pool or a full queue frees up when an attempt ends, which notifies.
                if len(self._attempts) >= self._max_workers:
                    return wait
                if not self._has_room(queue):
                    break
                token_wait = queue.flow.take(time.monotonic())
                if token_wait > 0:
                    wait = _min_wait(wait, token_wait)
                    break
                self._launch(queue, entry, now)
        return wait

    def _launch(
        self, queue: _QueueEntry, entry: _TaskEntry, now: float, *, send_at_once: bool = False
    ) -> _Attempt:
        """Start an attempt on a dispatch thread; with ``send_at_once`` (CreateTask's own
        launch), the request goes out from this thread first when it can
        (`dispatch.send_at_once`): the task reaches its worker without waiting for a dispatch
        thread to wake, and for CreateTask's answer, which holds the GIL until it is sent."""
        task = entry.task
        request = self._http_dispatch(queue, entry)
        attempt = _Attempt(queue, entry, request, time.monotonic() + request.deadline_s)
        if send_at_once:
            # first, so the task is on its way before the attempt's bookkeeping below (all of
            # it under the lock: nobody sees the attempt half recorded); under the lock also
            # as the deadline watch wants it: the write never blocks (see
            # dispatch.send_at_once)
            attempt.sent = dispatch.send_at_once(request, self._connections)
            if attempt.sent is not None:
                attempt.sock = attempt.sent.connection.sock
        task.dispatch_count += 1
        attempt_pb = AttemptPb(dispatch_time=timestamp_of(now))
        attempt_pb.schedule_time.CopyFrom(task.schedule_time)
        if not task.HasField("first_attempt"):
            # Cloud Tasks keeps only the dispatch time of the first attempt.
            task.first_attempt.dispatch_time.CopyFrom(attempt_pb.dispatch_time)
            entry.first_dispatch_at = now
        task.last_attempt.CopyFrom(attempt_pb)
        entry.in_flight = True
        queue.in_flight += 1
        self._attempts.add(attempt)
        self._pool.submit(self._run, attempt)
        return attempt

    def _http_dispatch(self, queue: _QueueEntry, entry: _TaskEntry) -> dispatch.HttpDispatch:
        """The request Cloud Tasks would send for the task's next attempt."""
        task = entry.task
        request = task.http_request
        headers = {key: value for key, value in request.headers.items() if not _is_reserved(key)}
        # No default Content-Type: "`Content-Type` won't be set by Cloud Tasks" (v2 HttpRequest).
        headers["User-Agent"] = "Google-Cloud-Tasks"
        headers["X-CloudTasks-QueueName"] = queue_id(queue.queue.name)
        headers["X-CloudTasks-TaskName"] = task.name.rsplit("/", 1)[-1]
        headers["X-CloudTasks-TaskRetryCount"] = str(task.dispatch_count)
        headers["X-CloudTasks-TaskExecutionCount"] = str(entry.execution_count)
        headers["X-CloudTasks-TaskETA"] = f"{epoch_of(task.schedule_time):.6f}"
        # X-CloudTasks-TaskRetryReason is left out: it is empty for HTTP targets.
        if task.dispatch_count > 0 and entry.previous_response is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(entry.previous_response)
        if request.HasField("oidc_token"):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            token = self._signer.token(
                service_account_email=request.oidc_token.service_account_email,
                audience=request.oidc_token.audience or request.url,
            )
            headers["Authorization"] = f"Bearer {token}"
        return dispatch.HttpDispatch(
            method=_HTTP_METHODS[request.http_method],
            url=request.url,
            headers=headers,
            body=bytes(request.body),
            deadline_s=seconds_of(task.dispatch_deadline),
        )

    def _run(self, attempt: _Attempt) -> None:
        started = time.monotonic()

        def watch(sock: socket.socket | None) -> None:
            self._watch(attempt, sock)

        try:
            if attempt.sent is not None:
                outcome = dispatch.receive(attempt.sent, attempt.request, watch, self._connections)
            else:
                outcome = dispatch.send(attempt.request, watch, self._connections)
        except Exception as error:
            # Nothing may escape into the pool's future, where it is swallowed and the task
            # stays in flight for good, holding its queue's slot: the attempt failed like a
            # connection that never answered, and is retried per the retry config.
            self._log.exception("dispatch task=%s raised", attempt.entry.task.name)
            outcome = dispatch.AttemptOutcome(
                None, RPC_UNAVAILABLE, f"{type(error).__name__}: {error}"
            )
        overran = time.monotonic() - started > attempt.request.deadline_s
        with self._cond:
            pool_was_full = len(self._attempts) >= self._max_workers
            if attempt.timed_out or (overran and not outcome.succeeded):
                outcome = dispatch.deadline_exceeded(attempt.request.deadline_s)
            self._finish(attempt, outcome)
            # The scheduler looks again only if this freed room a task waits for (the pool's
            # or the queue's) or left the task to retry; a finished attempt's deadline no
            # longer matters, and a scheduler that wakes for it finds nothing to do.
            if pool_was_full or any(not e.in_flight for e in attempt.queue.tasks.values()):
                self._cond.notify_all()

    def _watch(self, attempt: _Attempt, sock: socket.socket | None) -> None:
        with self._cond:
            attempt.sock = sock
            if sock is not None and attempt.timed_out:
                self._abort(attempt)  # the deadline passed while it was still connecting

    def _enforce_deadlines(self) -> float | None:
        """Abort attempts past their dispatch deadline; return seconds to the next deadline."""
        now = time.monotonic()
        wait: float | None = None
        for attempt in self._attempts:
            if attempt.timed_out:
                continue  # aborted already; the worker reports back shortly
            if now >= attempt.deadline_at:
                self._abort(attempt)
            else:
                wait = _min_wait(wait, attempt.deadline_at - now)
        return wait

    @staticmethod
    def _abort(attempt: _Attempt) -> None:
        attempt.timed_out = True
        if attempt.sock is not None:
            # shutdown (not close) wakes the worker blocked in recv and leaves closing to it;
            # on a socket already closed it fails harmlessly (a closed socket object has no fd).
            with suppress(OSError):
                attempt.sock.shutdown(socket.SHUT_RDWR)

    def _finish(self, attempt: _Attempt, outcome: dispatch.AttemptOutcome) -> None:
        self._attempts.discard(attempt)
        queue, entry = attempt.queue, attempt.entry
        queue.in_flight -= 1
        entry.in_flight = False
        task = entry.task
        self._log.info(
            "dispatch task=%s url=%s attempt=%d status=%s",
            task.name,
            attempt.request.url,
            task.dispatch_count,
            outcome.label,
        )
        queue.flow.record(time.monotonic(), outcome.http_status, outcome.retry_after_s)
        still_queued = queue.tasks.get(task.name) is entry
        if self._queues.get(queue.queue.name) is not queue or not still_queued:
            return  # deleted or purged while in flight: Cloud Tasks forgets the outcome too
        now = time.time()
        if outcome.http_status is not None:
            task.response_count += 1
            if not 500 <= outcome.http_status < 600:
                entry.execution_count += 1
        task.last_attempt.response_time.CopyFrom(timestamp_of(now))
        task.last_attempt.response_status.CopyFrom(
            status_pb2.Status(code=outcome.rpc_code, message=outcome.message)
        )
        policy = RetryPolicy.from_pb(
            task.retry_config if task.HasField("retry_config") else queue.queue.retry_config
        )
        first_dispatch_at = entry.first_dispatch_at if entry.first_dispatch_at is not None else now
        if outcome.succeeded or policy.gives_up(task.dispatch_count, now - first_dispatch_at):
            del queue.tasks[task.name]
            self._bury([task.name])
            return
        backoff = policy.backoff_s(task.dispatch_count)
        if is_backoff_error(outcome.http_status) and outcome.retry_after_s is not None:
            backoff = max(backoff, min(outcome.retry_after_s, policy.max_backoff_s))
        entry.due_at = now + backoff
        task.schedule_time.CopyFrom(timestamp_of(entry.due_at))
        entry.previous_response = outcome.http_status


__all__ = ["QUEUE_STATE_PAUSED", "QUEUE_STATE_RUNNING", "EmulatorError", "Engine"]
