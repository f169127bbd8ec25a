"""The worker: the processor Cloud Tasks calls for each job (the reaper is ``shared.reaper``).

Its contract: claim the job under a lease, run the AI pipeline writing
progress, then complete or fail it. Answer 2xx to delete the task - on success, on a
permanent failure (recorded as failed), on cancel, on a duplicate that finds nothing to do,
and on a retryable error of this one job (a model 429/5xx, the job's deadline): that attempt
is recorded on the row and the job's *next* named task is enqueued with ``schedule_time`` =
now + the retry hint. Cloud Tasks reads 429/503 - and any 5xx from an HTTP target - as
back-pressure and slows the whole queue ("System throttling" in the v2 ``HttpRequest``
reference; "Backoff errors and enforced rates" on the issues-and-limitations page), so one
user's model quota must not answer 503. Only "this worker or the database is down" answers
503 with ``Retry-After``, where slowing the queue is the point.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask

from shared import errors, logs
from shared.http import json_response, parse_job_id, read_json
from shared.identity import verify_caller
from shared.jobs import Job, JobStatus
from shared.settings import Settings
from shared.store import JobStore, Step, get_store
from shared.tasks import TaskQueue, dispatch_of, dispatch_or_release, get_queue

#: A reached step waits at most this long for the next write to carry it (StepWriter).
STEP_FLUSH_S = 0.5
#: Seconds Cloud Tasks is asked to wait when this worker or the database is down.
RETRY_AFTER_S = 5
#: A job's own retry is scheduled at most this far ahead (a daily quota's hint can say hours;
#: the attempts are better spent failing over to the next one than waiting that long).
MAX_RETRY_DELAY_S = 3600.0
_ASCII_COUNT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Delivery:
    """What Cloud Tasks tells us about this delivery (the X-CloudTasks-* headers)."""

    task_name: str | None
    retry_count: int
    execution_count: int

    @classmethod
    def from_request(cls, request: flask.Request) -> Delivery:
        def number(name: str) -> int:
            # ASCII digits only: str.isdigit() accepts '²', which int() then refuses.
            raw = request.headers.get(name, "0").strip()
            return int(raw) if _ASCII_COUNT.fullmatch(raw) else 0

        return cls(
            task_name=request.headers.get("X-CloudTasks-TaskName"),
            retry_count=number("X-CloudTasks-TaskRetryCount"),
            execution_count=number("X-CloudTasks-TaskExecutionCount"),
        )


def process_job(request: flask.Request, settings: Settings) -> flask.Response:
    if not request.headers.get("X-CloudTasks-QueueName"):
        raise errors.Forbidden("this function only accepts Cloud Tasks deliveries")
    verify_caller(request, settings, audience=settings.oidc_audience or settings.processor_url)
    try:
        job_id = parse_job_id(read_json(request, settings).get("jobId"))
    except errors.BadRequest as exc:
        # Cloud Tasks retries 4xx too; a task that can never be valid is dropped with a 2xx.
        logs.error("invalid task dropped", error=exc.code, reason=exc.message)
        return json_response({"outcome": "invalid_task", "error": exc.code}, 200)
    delivery = Delivery.from_request(request)
    outcome, status = Processor(get_store(settings), settings).process(job_id, delivery)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return json_response({"jobId": str(job_id), "outcome": outcome}, status, headers)


class _Later:
    """One daemon thread per process that calls each action at its time (``call_at``).

    It starts each StepWriter's own thread when that writer's first background write could be
    due, instead of at the claim: a job that ends sooner (the local writer's ~50 ms, any job
    under ``STEP_FLUSH_S``) starts no thread at all. Starting and joining one per job cost the
    processor 0.04 ms of CPU in a loop, and 0.09 + 0.05 ms per job right after a pipeline's
    work (in process, the real processor on a real stack); this costs a heap push and one
    wake of this thread when the time comes. Actions run on this thread, so they must be
    quick (starting a thread is)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # equal times keep their order; actions never compared
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """In a forked child, which has none of its parent's threads (nor their jobs): start
        afresh, with a thread of its own on first use."""
        self._due = []
        self._changed = threading.Condition()
        self._thread = None

    def call_at(self, when: float, action: Callable[[], None]) -> None:
        """Call ``action`` at ``when`` (``time.monotonic()``), or at once if that has passed."""
        with self._changed:
            heapq.heappush(self._due, (when, next(self._order), action))
            if self._thread is None:  # the first use in this process
                self._thread = threading.Thread(target=self._run, name="later", daemon=True)
                self._thread.start()
            elif self._due[0][2] is action:  # sooner than what the thread waits for
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    self._changed.wait(wait)
                action = heapq.heappop(self._due)[2]
            try:
                action()
            except Exception as exc:  # this thread serves every job of the process
                logs.error("a deferred action failed", error=repr(exc)[:500])


_LATER = _Later()
os.register_at_fork(after_in_child=_LATER.forget)


class StepWriter:
    """Writes the pipeline's progress steps and keeps the lease alive, in as few calls as a
    watcher allows.

    A step is not written when it is reached: it waits up to ``flush_after_s`` for the next
    write, so steps that follow each other quickly travel together (``report_steps``), and the
    ones still waiting when the pipeline ends ride with the completion. A step followed by slow
    work (a model call) is written by a background thread once it has waited that long, so a
    watcher sees it while the work runs (the thread is started when its first write could be
    due: a job that ends sooner never starts it). The same thread renews the lease when nothing has
    been written for a third of it, so a short lease (a dead worker is recovered soon) still
    covers a slow step. Every write holds one lock, so they reach the database in order."""

    def __init__(
        self,
        store: JobStore,
        job_id: uuid.UUID,
        token: uuid.UUID,
        lease_seconds: int,
        flush_after_s: float = STEP_FLUSH_S,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._token = token
        self._lease_seconds = lease_seconds
        self._flush_after_s = flush_after_s
        self._pending: list[Step] = []
        self._pending_since = 0.0
        self._last_write = time.monotonic()  # the claim set the lease
        self._cancelled = False
        self._doubt = False  # a background write was refused: the next step writes at once
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None  # started once a write could be due
        self._state = threading.Lock()  # orders the thread's start against stop()

    def __enter__(self) -> StepWriter:
        # Nothing is due before the first step has waited flush_after_s or the claim's lease a
        # third of it (_next_due): the thread is started then, by the one starter thread of
        # the process, so a job that ends sooner starts none (_LATER's docstring says why)
        first_due = min(self._flush_after_s, self._lease_seconds / 3)
        _LATER.call_at(self._last_write + first_due, self._start)
        return self

    def _start(self) -> None:
        with self._state:
            if self._closed:
                return
            thread = threading.Thread(target=self._loop, name="step-writer", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": the process is out of them
                # Without the thread, each step the pipeline reports is written at once (and
                # renews the lease, as the thread would): slower, but the job goes on, and
                # stop() has no thread to join.
                with self._lock:
                    self._doubt = True
                logs.warning(
                    "step-writer thread not started: steps are written as they come",
                    jobId=str(self._job_id),
                    error=str(exc)[:200],
                )
                return
            self._thread = thread

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step(self, progress: int, message: str) -> bool:
        """The pipeline's ``on_progress``: False once the job is known to be cancelled."""
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((progress, message))
            if self._doubt and not self._cancelled:
                self._write()  # raises LeaseLost / IllegalTransition if the lease is gone
        self._wake.set()
        return not self._cancelled

    def flush(self) -> bool:
        """Write the waiting steps now (before costly work, so a cancel is seen before it):
        False once the job is known to be cancelled."""
        with self._lock:
            if self._pending and not self._cancelled:
                self._write()  # raises LeaseLost / IllegalTransition if the lease is gone
        return not self._cancelled

    def stop(self) -> list[Step]:
        """Stop the background writes; returns the steps not written yet (for the final write)."""
        with self._state:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
        with self._lock:
            unwritten, self._pending = self._pending, []
        return unwritten

    def _write(self) -> None:
        steps, self._pending = self._pending, []
        try:
            go_on = self._store.report_steps(self._job_id, self._token, steps, self._lease_seconds)
        except Exception:
            self._pending = steps + self._pending  # not written: the next write carries them
            raise
        self._last_write = time.monotonic()
        self._cancelled = self._cancelled or not go_on

    def _next_due(self) -> float:
        if self._doubt:
            return math.inf  # the pipeline's next step writes, and learns what happened
        if self._pending:
            return self._pending_since + self._flush_after_s
        return self._last_write + self._lease_seconds / 3

    def _loop(self) -> None:
        while not self._closed:
            wait = self._next_due() - time.monotonic()
            self._wake.wait(None if wait == math.inf else max(wait, 0.0))
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                if time.monotonic() >= self._next_due():
                    self._write_in_background()

    def _write_in_background(self) -> None:
        try:
            if self._pending:
                self._write()
            elif self._store.extend_lease(self._job_id, self._token, self._lease_seconds):
                self._last_write = time.monotonic()
            else:
                self._doubt = True  # cancelled or taken over: the next step finds out which
        except (errors.LeaseLost, errors.IllegalTransition, errors.JobNotFound):
            self._doubt = True
        except Exception as exc:  # the thread must live on: it also keeps the lease
            code = exc.code if isinstance(exc, errors.AppError) else type(exc).__name__
            logs.warning("background progress write failed", jobId=str(self._job_id), error=code)
            # try again after the usual wait, not in a loop
            self._pending_since = self._last_write = time.monotonic()


class Processor:
    """Runs one delivery of a job. The store and the queue are given, so a test can hand it
    ones that honour the same contract in memory (``tests/unit/memory.py``)."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        queue: TaskQueue | None = None,
        *,
        step_flush_s: float = STEP_FLUSH_S,
    ) -> None:
        self.store = store
        self.settings = settings
        self.queue = get_queue(settings) if queue is None else queue
        self.step_flush_s = step_flush_s

    def process(self, job_id: uuid.UUID, delivery: Delivery) -> tuple[str, int]:
        """Returns (outcome, HTTP status for Cloud Tasks)."""
        context = {"jobId": str(job_id), "task": delivery.task_name}
        dispatch = dispatch_of(delivery.task_name, job_id)
        claim = self.store.claim_delivery(job_id, dispatch, self.settings.lease_seconds)
        job = claim.job
        if claim.outcome == "stale_dispatch":
            # An older task of the job delivered late (its retry is a newer task, due later),
            # or a name that is not the job's: 2xx, so Cloud Tasks drops it.
            logs.warning(
                "stale delivery dropped: not the job's current task",
                **context,
                dispatch=dispatch,
                currentDispatch=claim.current_dispatch,
            )
            return "stale_dispatch", 200
        if job is None or job.lease_token is None:
            logs.info("nothing to do: duplicate or finished delivery", **context)
            return "nothing_to_do", 200
        token = job.lease_token
        context["attempt"] = str(job.attempts)
        logs.info(
            "job claimed",
            **context,
            retryCount=delivery.retry_count,
            executionCount=delivery.execution_count,
        )
        writer = StepWriter(
            self.store, job.id, token, self.settings.lease_seconds, self.step_flush_s
        )
        try:
            with writer:
                return self._run(job, token, writer, context)
        except errors.DependencyDown as exc:
            # The database (or another dependency) went away mid-run. Give the lease back if
            # we still can, so Cloud Tasks' retry finds the job claimable; if not, the short
            # lease expires and the retry (or the reaper) takes over.
            logs.error("dependency down while processing", **context, error=exc.code)
            try:
                return self._fail(job, token, exc, context)
            except errors.AppError:
                return "retry", 503

    def _run(
        self, job: Job, token: uuid.UUID, writer: StepWriter, context: dict[str, Any]
    ) -> tuple[str, int]:
        from shared.ai import pipeline

        # Settings guarantee the job's deadline ends inside the dispatch deadline's margin.
        deadline = time.monotonic() + self.settings.job_deadline_s
        unwritten: list[Step] = []  # steps the completion carries, kept if it fails
        # the AI work's own CPU (this thread's), logged with the completion: what a job costs
        # the processor beyond it is then read off the process's CPU, in place, under load
        began_cpu = time.thread_time()
        try:
            result = pipeline.run(
                job.query,
                job.type,
                writer.step,
                settings=self.settings.ai,
                deadline=deadline,
                before_model=writer.flush,
            )
            ai_cpu_ms = round((time.thread_time() - began_cpu) * 1000, 2)
            # serialized once, by pydantic-core, and sent as text (complete_job_v3): building
            # dicts for postgrest-py to serialize cost the worker about 0.8 ms more per report
            result_json = result.model_dump_json(by_alias=True)
            unwritten = writer.stop()
            self.store.complete_job(job.id, token, result_json, steps=unwritten)
        except (errors.JobCancelled, errors.IllegalTransition) as exc:
            # Seen by a step write (JobCancelled) or, when the steps since the cancel were
            # still waiting to be written, by the completion the cancelled row refused.
            logs.info("job cancelled; stopping", **context, seenBy=exc.code)
            return "cancelled", 200
        except errors.LeaseLost:
            logs.warning("lease lost; another attempt owns the job", **context)
            return "lease_lost", 200
        except errors.DependencyDown:
            raise
        except errors.AppError as exc:
            return self._fail(job, token, exc, context, unwritten + writer.stop())
        except Exception as exc:  # a bug: fail the job (details only in our logs), do not loop
            logs.error("unexpected error in the pipeline", **context, error=repr(exc)[:500])
            failure = errors.AppError("internal error")
            return self._fail(job, token, failure, context, unwritten + writer.stop())
        logs.info("job completed", **context, aiCpuMs=ai_cpu_ms)
        return "completed", 200

    def _fail(
        self,
        job: Job,
        token: uuid.UUID,
        exc: errors.AppError,
        context: dict[str, Any],
        unwritten: list[Step] | None = None,
    ) -> tuple[str, int]:
        try:
            if unwritten:  # the steps reached before the failure, then the failure
                self.store.report_steps(job.id, token, unwritten, self.settings.lease_seconds)
            failed = self.store.fail_job(
                job.id, token, exc.message, error_code=exc.code, retryable=exc.retryable
            )
        except (errors.IllegalTransition, errors.LeaseLost):
            return "superseded", 200
        if failed.status == JobStatus.QUEUED:
            return self._schedule_retry(failed, exc, context)
        logs.error("job failed", **context, error=exc.code, reason=exc.message)
        return "failed", 200

    def retry_delay(self, exc: errors.AppError, attempts: int) -> float:
        """The server's hint when the error carries one, else the queue-like backoff."""
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            return min(float(hint), MAX_RETRY_DELAY_S)
        s = self.settings
        return min(s.retry_min_backoff_s * 2.0 ** max(attempts - 1, 0), s.retry_max_backoff_s)

    def _schedule_retry(
        self, job: Job, exc: errors.AppError, context: dict[str, Any]
    ) -> tuple[str, int]:
        """The job's own retry: its next named task, due after the retry delay; answer 2xx.

        If the next number cannot be taken (the database went away again), answer 503: the
        row is queued, and Cloud Tasks' redelivery of this task (or the reaper) claims it."""
        delay = self.retry_delay(exc, job.attempts)
        try:
            dispatch = self.store.next_dispatch(job.id, job.dispatch_count, delay)
        except errors.AppError as store_error:
            logs.error("could not schedule the retry", **context, error=store_error.code)
            return "retry", 503
        if dispatch is None:
            return "superseded", 200  # cancelled, claimed or re-dispatched meanwhile
        scheduled = dispatch_or_release(self.queue, self.store, job.id, dispatch, delay_s=delay)
        logs.warning(
            "retryable failure; retry scheduled" if scheduled else "retryable failure; reaper",
            **context,
            error=exc.code,
            delaySeconds=round(delay, 3),
            dispatch=dispatch,
        )
        return "retry_scheduled", 200
