"""Dispatch to the processor through Cloud Tasks (``google-cloud-tasks``).

One queue (``TASKS_QUEUE``): priority is stored on the job and shown to clients, but at this
volume a queue per priority would only split the concurrency budget. Each task is named
``job-<id>-d<dispatch>`` from the job id and its dispatch number, a counter kept on the job
row (``ai_jobs.dispatch_count``) that only ever grows: a dispatch number is never reused,
because Cloud Tasks refuses a name that was executed or deleted in about the last hour with
the same ALREADY_EXISTS it gives for a pending task (CreateTaskRequest reference, "Task
De-duplication"; the quotas page's "task de-duplication window").

``dispatch_or_release`` is the one "enqueue, else leave it to the reaper" step the create
path, the processor's retry and the reaper share: the row is the source of truth, the task
only a nudge.

With ``CLOUD_TASKS_EMULATOR_HOST`` set, the same client talks to the local emulator over an
insecure gRPC channel; nothing else changes.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import errors, logs

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.store import JobStore

#: Header carrying PROCESSOR_SHARED_SECRET inside each task (checked by the processor).
SECRET_HEADER = "X-AI-Jobs-Secret"
_RPC_TIMEOUT_S = 5.0
#: The create's retry sleeps: full jitter up to 0.1 s, doubling to at most 1 s (see _create).
_RETRY_MAX_DELAY_S = 1.0
#: Cancelling deletes the job's pending tasks within this budget (best effort).
_DELETE_BUDGET_S = 2.0


def task_id(job_id: uuid.UUID, dispatch: int) -> str:
    return f"job-{job_id}-d{dispatch}"


def task_body(job_id: uuid.UUID, dispatch: int) -> bytes:
    """The task's JSON body: ``json.dumps({"jobId": str(job_id), "dispatch": dispatch})``'s
    bytes, written directly (a UUID's text and an int need no escaping)."""
    return b'{"jobId": "%s", "dispatch": %d}' % (str(job_id).encode(), dispatch)


def dispatch_of(task_name: str | None, job_id: uuid.UUID) -> int | None:
    """The dispatch number a delivered task's name carries (``task_id`` read back), or None
    when the name is not one of this job's tasks. Cloud Tasks sends the short name in
    ``X-CloudTasks-TaskName``; a full resource path is read by its last segment."""
    short = (task_name or "").rsplit("/", 1)[-1]
    prefix = f"job-{job_id}-d"
    number = short[len(prefix) :]
    if not short.startswith(prefix) or not (number.isascii() and number.isdigit()):
        return None
    return int(number) if len(number) <= 9 else None


@dataclass(eq=False)
class _Channel:
    """A client and the calls in flight on it; closed only once it is retired and idle."""

    client: Any
    in_flight: int = 0
    retired: bool = False


class TaskQueue:
    """Creates, looks up and deletes the processor's tasks; the client is created lazily.

    A failed call retires the client (the next call gets a fresh channel, not one stuck in
    gRPC's reconnect backoff), but a retired channel is closed only when its last call has
    returned: closing it under other requests would fail them with ``ValueError('Cannot
    invoke RPC on closed channel!')``.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._current: _Channel | None = None
        self._lock = threading.Lock()
        self._template: Any = None  # see _request_template
        self._wrap: Any = None  # tasks_v2.CreateTaskRequest.wrap, kept with the template
        s = settings  # frozen: the queue's path is written once
        self.queue_path = (
            f"projects/{s.project_id}/locations/{s.tasks_location}/queues/{s.tasks_queue}"
        )

    def task_path(self, job_id: uuid.UUID, dispatch: int) -> str:
        return f"{self.queue_path}/tasks/{task_id(job_id, dispatch)}"

    def _request_template(self) -> Any:
        """A fresh ``CreateTaskRequest`` protobuf holding everything a task of this queue
        carries but its name, body and schedule (the URL, headers, OIDC token, deadline).

        Built once per instance from the settings, then copied per task (a C-level protobuf
        copy): building the typed proto-plus messages field by field on every call was about
        a sixth of the enqueue's CPU."""
        template = self._template
        if template is None:
            from google.cloud import tasks_v2
            from google.protobuf import duration_pb2

            s = self._settings
            headers = {"Content-Type": "application/json"}
            if s.processor_secret:
                headers[SECRET_HEADER] = s.processor_secret
            http_request = tasks_v2.HttpRequest(
                http_method=tasks_v2.HttpMethod.POST, url=s.processor_url, headers=headers
            )
            if s.tasks_invoker_sa:
                http_request.oidc_token = tasks_v2.OidcToken(
                    service_account_email=s.tasks_invoker_sa,
                    audience=s.oidc_audience or s.processor_url,
                )
            task = tasks_v2.Task(
                http_request=http_request,
                dispatch_deadline=duration_pb2.Duration(seconds=s.dispatch_deadline_s),
            )
            template = tasks_v2.CreateTaskRequest.pb(
                tasks_v2.CreateTaskRequest(parent=self.queue_path, task=task)
            )
            self._wrap = tasks_v2.CreateTaskRequest.wrap
            self._template = template
        request = type(template)()
        request.CopyFrom(template)
        return request

    def _make_client(self) -> Any:
        host = self._settings.tasks_emulator_host
        if host:
            return emulator_client(host)
        from google.cloud import tasks_v2

        return tasks_v2.CloudTasksClient()

    @contextmanager
    def _channel(self) -> Iterator[_Channel]:
        with self._lock:
            if self._current is None:
                self._current = _Channel(self._make_client())
            channel = self._current
            channel.in_flight += 1
        try:
            yield channel
        finally:
            with self._lock:
                channel.in_flight -= 1
                idle_and_retired = channel.retired and channel.in_flight == 0
            if idle_and_retired:
                _close(channel)

    def _retire(self, channel: _Channel) -> None:
        """Take the channel out of use; the last call on it closes it (see ``_channel``)."""
        with self._lock:
            if self._current is channel:
                self._current = None
            channel.retired = True

    def _call(self, method: str, **kwargs: Any) -> Any:
        """One RPC; every failure that is not an answer from Cloud Tasks retires the channel."""
        with self._channel() as channel:
            try:
                return getattr(channel.client, method)(**kwargs)
            except Exception as exc:
                if not _is_answer(exc):  # NOT_FOUND, ALREADY_EXISTS: the channel is fine
                    self._retire(channel)
                raise

    def enqueue(
        self, job_id: uuid.UUID, dispatch: int, *, delay_s: float = 0.0, budget_s: float = 2.0
    ) -> bool:
        """Create the task of this dispatch of the job, to run ``delay_s`` from now.

        True when the task is (now) pending. ALREADY_EXISTS means so only while the task is
        still there (a retry after a lost reply); a name Cloud Tasks remembers from an executed
        or deleted task answers False: that task will not run again. Any failure to reach Cloud
        Tasks raises ``QueueUnavailable``. ``budget_s`` bounds the whole call (short on the
        create path, where the reaper is the fallback)."""
        # The create path's pickup waits on everything up to the send: nothing is imported or
        # written here that the template step did not prepare once per instance.
        request = self._request_template()
        task = request.task
        task.name = self.task_path(job_id, dispatch)
        task.http_request.body = task_body(job_id, dispatch)
        if delay_s > 0:
            task.schedule_time.FromNanoseconds(int((time.time() + delay_s) * 1e9))
        try:
            # the typed request, wrapped around the protobuf without a copy (proto-plus
            # ``Message.wrap``): the client skips its dict/keyword conversion
            self._create(self._wrap(request), budget_s)
        except Exception as exc:  # grpc, api_core, a closed channel: all mean "not enqueued"
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.AlreadyExists):
                return self.exists(job_id, dispatch)
            raise _unavailable(exc) from None
        return True

    def _create(self, request: Any, budget_s: float) -> None:
        """CreateTask, retried on UNAVAILABLE and DEADLINE_EXCEEDED within ``budget_s``.

        The policy of ``google.api_core.retry.Retry(initial=0.1, maximum=1.0, timeout=budget_s)``
        (its ``retry_target``: full-jitter exponential sleeps, no new attempt that could not
        start before the deadline, then ``RetryError`` naming the timeout with the last error
        as its cause; any other error at once), looped here with ``retry=None`` passed to the
        client, a documented value of the gapic method's ``retry`` argument: the first attempt
        is then the client's plain call. Passing a ``Retry`` had api_core build its wrapper
        and run its generator-driven loop on every create, about a quarter of the Python time
        from create_job's answer to the gRPC call (82-100 vs 127-130 us p50 in process, one
        create at a time). Each attempt's timeout is what is left of the budget (capped by
        ``_RPC_TIMEOUT_S``), so the budget bounds the whole call."""
        deadline = time.monotonic() + budget_s
        max_delay = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                self._call(
                    "create_task",
                    request=request,
                    timeout=max(min(_RPC_TIMEOUT_S, left), 0.001),
                    retry=None,
                )
                return
            except Exception as exc:
                from google.api_core import exceptions as gexc

                if not isinstance(exc, gexc.ServiceUnavailable | gexc.DeadlineExceeded):
                    raise
                sleep = random.uniform(0.0, max_delay)
                if time.monotonic() + sleep > deadline:
                    timeout = f"Timeout of {budget_s:0.1f}s exceeded"  # api_core's words
                    raise gexc.RetryError(timeout, exc) from exc  # type: ignore[no-untyped-call]
                max_delay = min(max_delay * 2.0, _RETRY_MAX_DELAY_S)
            time.sleep(sleep)

    def exists(self, job_id: uuid.UUID, dispatch: int) -> bool:
        """Whether this dispatch's task is still pending (GetTask); executed or deleted tasks
        are NOT_FOUND. Raises ``QueueUnavailable`` when Cloud Tasks cannot say."""
        from google.api_core import exceptions as gexc

        try:
            self._call(
                "get_task",
                name=self.task_path(job_id, dispatch),
                timeout=_RPC_TIMEOUT_S,
                retry=None,
            )
        except gexc.NotFound:
            return False
        except Exception as exc:
            raise _unavailable(exc) from None
        return True

    def delete(self, job_id: uuid.UUID, dispatch: int) -> int:
        """Delete every pending task of the job, dispatches ``dispatch`` down to 1 (on cancel).

        A job can have more than its newest task pending (a reaper nudge beside a Cloud Tasks
        retry), and each would find nothing to do, so all go. Best effort within a small
        budget; returns how many were deleted."""
        from google.api_core import exceptions as gexc

        deleted = 0
        give_up_at = time.monotonic() + _DELETE_BUDGET_S
        for number in range(dispatch, 0, -1):
            left = give_up_at - time.monotonic()
            if left <= 0:
                break
            try:
                self._call(
                    "delete_task",
                    name=self.task_path(job_id, number),
                    timeout=min(_RPC_TIMEOUT_S, left),
                    retry=None,
                )
            except gexc.NotFound:
                continue
            except Exception as exc:
                logs.warning("could not delete task", jobId=str(job_id), error=type(exc).__name__)
                break  # the queue is unreachable: the tasks find nothing to do when they run
            deleted += 1
        return deleted


def _is_answer(exc: Exception) -> bool:
    """Whether Cloud Tasks answered (NOT_FOUND, ALREADY_EXISTS) rather than failed."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.NotFound | gexc.AlreadyExists)


def _unavailable(exc: Exception) -> errors.QueueUnavailable:
    """The task was not enqueued. A refusal that retrying cannot cure (no such queue, a
    missing IAM role or ``actAs`` on the invoker account, a malformed request) is also
    logged at ERROR with Cloud Tasks' own words: the job still waits for the reaper, but an
    operator must act, and "unavailable" alone would hide that."""
    from google.api_core import exceptions as gexc

    refused = (
        gexc.PermissionDenied,
        gexc.Unauthenticated,
        gexc.InvalidArgument,
        gexc.FailedPrecondition,
        gexc.NotFound,
    )
    if isinstance(exc, refused):
        logs.error(
            "Cloud Tasks refused the call: check the queue, its IAM roles and the invoker account",
            upstream=type(exc).__name__,
            upstreamMessage=str(exc)[:500],
        )
    return errors.QueueUnavailable(
        "the task queue is unavailable",
        details={"upstream": type(exc).__name__, "refused": isinstance(exc, refused)},
    )


def _close(channel: _Channel) -> None:
    try:
        channel.client.transport.close()
    except Exception as exc:  # closing is tidying up; it must not fail a request
        logs.warning("could not close the Cloud Tasks channel", error=type(exc).__name__)


def dispatch_or_release(
    queue: TaskQueue,
    store: JobStore,
    job_id: uuid.UUID,
    dispatch: int,
    *,
    delay_s: float = 0.0,
    budget_s: float = 2.0,
) -> bool:
    """Enqueue the job's task for ``dispatch``; if that fails, hand the job to the reaper.

    The job row stays ``queued`` either way. On failure ``release_dispatch`` (guarded by the
    dispatch number, so a newer dispatch is never undone) clears ``dispatched_at`` and the next
    reaper sweep dispatches the job at once instead of after the grace period. Never raises:
    the caller has already saved the job and must still answer."""
    try:
        if queue.enqueue(job_id, dispatch, delay_s=delay_s, budget_s=budget_s):
            return True
        reason = "task_name_spent"
    except errors.QueueUnavailable as exc:
        reason = exc.code
    logs.warning("enqueue failed; the reaper will dispatch", jobId=str(job_id), error=reason)
    try:
        store.release_dispatch(job_id, dispatch)
    except Exception as exc:  # the row keeps dispatched_at: the reaper still finds it later
        logs.warning("release_dispatch failed", jobId=str(job_id), error=type(exc).__name__)
    return False


def emulator_client(host: str) -> Any:
    """The real Cloud Tasks client on an insecure channel to the emulator at ``host``."""
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    # Reconnect quickly after the emulator restarts (gRPC's default backoff reaches 120 s).
    channel = grpc.insecure_channel(
        host,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@functools.lru_cache(maxsize=1)
def get_queue(settings: Settings) -> TaskQueue:
    """The process-wide queue client (lazy global, reused across invocations)."""
    return TaskQueue(settings)
