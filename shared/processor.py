"""The private functions: the processor Cloud Tasks calls, and the reaper Cloud Scheduler calls.

Processor contract (DESIGN.md): claim the job under a lease, run the AI pipeline writing
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

import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import flask

from shared import errors, logs
from shared.http import json_response, parse_job_id, read_json, secret_matches
from shared.jobs import Job, JobStatus
from shared.settings import Settings
from shared.store import PURGE_BATCH, REAP_BATCH, JobStore, ReapedJob, get_store
from shared.tasks import SECRET_HEADER, dispatch_or_release, get_queue

#: Ends the pipeline this long before the dispatch deadline, so failing cleanly fits in.
_DEADLINE_MARGIN_S = 30.0
#: Seconds Cloud Tasks is asked to wait when this worker or the database is down.
RETRY_AFTER_S = 5
#: A job's own retry is scheduled at most this far ahead (a daily quota's hint can say hours;
#: the attempts are better spent failing over to the next one than waiting that long).
MAX_RETRY_DELAY_S = 3600.0
#: The reaper keeps sweeping while batches come back full, within this budget.
_REAP_BUDGET_S = 30.0
_ASCII_COUNT = re.compile(r"[0-9]{1,9}")
_google_request: Any = None


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


def verify_caller(request: flask.Request, settings: Settings, *, audience: str) -> None:
    """Only our Cloud Tasks queue / Cloud Scheduler job may call the private functions.

    In production IAM keeps the function private; on top of that, with
    PROCESSOR_VERIFY_OIDC the Google-signed OIDC token is checked (issuer, audience, service
    account), and with PROCESSOR_SHARED_SECRET the secret header the task carries. With
    neither, every call is refused (fail closed) unless PROCESSOR_TRUST_CALLERS says the
    platform alone guards the function.
    """
    if not has_caller_check(settings):
        logs.error("private function called with no caller check configured")
        raise errors.Forbidden(
            "this function is not configured to accept calls",
            details={"settings": ["PROCESSOR_SHARED_SECRET", "PROCESSOR_VERIFY_OIDC"]},
        )
    secret = settings.processor_secret
    if secret and not secret_matches(request.headers.get(SECRET_HEADER), secret):
        raise errors.Forbidden("this function only accepts calls from the task queue")
    if settings.verify_oidc:
        _verify_oidc(request, settings, audience)


def has_caller_check(settings: Settings) -> bool:
    return bool(settings.processor_secret or settings.verify_oidc or settings.trust_private_callers)


def require_caller_check(settings: Settings) -> None:
    """At cold start of a private function: refuse to start when nothing checks the caller."""
    if not has_caller_check(settings):
        raise errors.ConfigError(
            "a private function needs PROCESSOR_SHARED_SECRET or PROCESSOR_VERIFY_OIDC "
            "(or PROCESSOR_TRUST_CALLERS=true when the platform alone guards it)",
            details={"setting": "PROCESSOR_SHARED_SECRET"},
        )


def _verify_oidc(request: flask.Request, settings: Settings, audience: str) -> None:
    global _google_request
    import google.auth.transport.requests
    from google.oauth2 import id_token

    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        raise errors.Unauthorized("an OIDC bearer token is required")
    if _google_request is None:
        _google_request = google.auth.transport.requests.Request()
    kwargs: dict[str, Any] = {"audience": audience}
    if settings.oidc_certs_url:
        kwargs["certs_url"] = settings.oidc_certs_url
    try:
        claims = id_token.verify_token(auth[7:].strip(), _google_request, **kwargs)
    except ValueError as exc:
        raise errors.Unauthorized(
            "the OIDC token is not valid", details={"reason": str(exc)[:200]}
        ) from None
    if claims.get("iss") not in {"https://accounts.google.com", "accounts.google.com"}:
        raise errors.Unauthorized("the OIDC token has the wrong issuer")
    expected = settings.tasks_invoker_sa
    if expected and (claims.get("email") != expected or not claims.get("email_verified")):
        raise errors.Forbidden("the OIDC token is not from the invoker service account")


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


class Heartbeat:
    """Renews the lease every ``lease_seconds / 3`` while the pipeline runs, so a short lease
    (a dead worker is recovered soon) still covers a slow model call."""

    def __init__(self, store: JobStore, job: Job, lease_seconds: int) -> None:
        assert job.lease_token is not None
        self._store = store
        self._job_id = job.id
        self._token = job.lease_token
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = max(self._lease_seconds / 3, 0.2)
        while not self._stop.wait(interval):
            try:
                if not self._store.extend_lease(self._job_id, self._token, self._lease_seconds):
                    return  # cancelled or taken over: the next progress write stops the run
            except errors.AppError as exc:
                logs.warning("lease renewal failed", jobId=str(self._job_id), error=exc.code)


class Processor:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def process(self, job_id: uuid.UUID, delivery: Delivery) -> tuple[str, int]:
        """Returns (outcome, HTTP status for Cloud Tasks)."""
        context = {"jobId": str(job_id), "task": delivery.task_name}
        job = self.store.claim_job(job_id, self.settings.lease_seconds)
        if job is None:
            logs.info("nothing to do: duplicate or finished delivery", **context)
            return "nothing_to_do", 200
        assert job.lease_token is not None
        context["attempt"] = str(job.attempts)
        logs.info(
            "job claimed",
            **context,
            retryCount=delivery.retry_count,
            executionCount=delivery.execution_count,
        )
        try:
            with Heartbeat(self.store, job, self.settings.lease_seconds):
                return self._run(job, job.lease_token, context)
        except errors.DependencyDown as exc:
            # The database (or another dependency) went away mid-run. Give the lease back if
            # we still can, so Cloud Tasks' retry finds the job claimable; if not, the short
            # lease expires and the retry (or the reaper) takes over.
            logs.error("dependency down while processing", **context, error=exc.code)
            try:
                return self._fail(job, job.lease_token, exc, context)
            except errors.AppError:
                return "retry", 503

    def _run(self, job: Job, token: uuid.UUID, context: dict[str, Any]) -> tuple[str, int]:
        from shared.ai import pipeline

        budget = min(
            self.settings.job_deadline_s,
            self.settings.dispatch_deadline_s - _DEADLINE_MARGIN_S,
        )
        deadline = time.monotonic() + max(budget, 1.0)

        def on_progress(progress: int, step: str) -> bool:
            go_on = self.store.report_progress(
                job.id, token, progress, step, lease_seconds=self.settings.lease_seconds
            )
            logs.info("progress", **context, progress=progress, step=step)
            return go_on

        try:
            result = pipeline.run(
                job.query, job.type, on_progress, settings=self.settings.ai, deadline=deadline
            )
            self.store.complete_job(job.id, token, result.model_dump(mode="json", by_alias=True))
        except errors.JobCancelled:
            logs.info("job cancelled; stopping", **context)
            return "cancelled", 200
        except errors.IllegalTransition:
            logs.info("job was cancelled before completion", **context)
            return "cancelled", 200
        except errors.LeaseLost:
            logs.warning("lease lost; another attempt owns the job", **context)
            return "lease_lost", 200
        except errors.DependencyDown:
            raise
        except errors.AppError as exc:
            return self._fail(job, token, exc, context)
        except Exception as exc:  # a bug: fail the job (details only in our logs), do not loop
            logs.error("unexpected error in the pipeline", **context, error=repr(exc)[:500])
            return self._fail(job, token, errors.AppError("internal error"), context)
        logs.info("job completed", **context)
        return "completed", 200

    def _fail(
        self, job: Job, token: uuid.UUID, exc: errors.AppError, context: dict[str, Any]
    ) -> tuple[str, int]:
        try:
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
        queue = get_queue(self.settings)
        scheduled = dispatch_or_release(queue, self.store, job.id, dispatch, delay_s=delay)
        logs.warning(
            "retryable failure; retry scheduled" if scheduled else "retryable failure; reaper",
            **context,
            error=exc.code,
            delaySeconds=round(delay, 3),
            dispatch=dispatch,
        )
        return "retry_scheduled", 200


@dataclass
class Sweep:
    """What one reaper call did, as it answers Cloud Scheduler."""

    dispatched: int = 0  #: new tasks created
    pending: int = 0  #: the job's current task was still there: nothing added
    failed: int = 0  #: attempts used up when the lease expired
    undispatched: int = 0  #: released for the next sweep (the queue is down)
    purged: int = 0
    queue_down: bool = False

    def summary(self) -> dict[str, int]:
        return {
            "dispatched": self.dispatched,
            "pending": self.pending,
            "failed": self.failed,
            "undispatched": self.undispatched,
            "purged": self.purged,
        }


def reap_jobs(request: flask.Request, settings: Settings) -> flask.Response:
    verify_caller(request, settings, audience=settings.reaper_url)
    store = get_store(settings)
    sweep = Sweep()
    give_up_at = time.monotonic() + _REAP_BUDGET_S
    while time.monotonic() < give_up_at:
        batch = store.reap_jobs(settings.reap_grace_s)
        for item in batch:
            _reap_one(item, store, settings, sweep)
        # A full batch means more may be waiting (the API caps results at 1000 rows); with the
        # queue down, what was released would only come straight back.
        if len(batch) < REAP_BATCH or sweep.queue_down:
            break
    while time.monotonic() < give_up_at:
        purged = store.purge_jobs(settings.retention_days)
        sweep.purged += purged
        if purged < PURGE_BATCH:
            break
    logs.info("reaper sweep", **sweep.summary())
    return json_response(sweep.summary(), 503 if sweep.undispatched else 200)


def _reap_one(item: ReapedJob, store: JobStore, settings: Settings, sweep: Sweep) -> None:
    """Dispatch one reaped job unless its current task is still pending in Cloud Tasks."""
    if item.action == "failed":
        sweep.failed += 1
        return
    queue = get_queue(settings)
    if not sweep.queue_down:
        try:
            if queue.exists(item.job_id, item.dispatch_count):
                sweep.pending += 1  # delayed, not lost: another task would only add a delivery
                return
            dispatch = store.next_dispatch(item.job_id, item.dispatch_count)
            if dispatch is None:
                return  # claimed or cancelled since the sweep
            # Short budget: the sweep must finish inside its own timeout.
            if dispatch_or_release(queue, store, item.job_id, dispatch, budget_s=5.0):
                sweep.dispatched += 1
                return
        except errors.QueueUnavailable:
            store.release_dispatch(item.job_id, item.dispatch_count)
        sweep.queue_down = True  # stop asking: the next sweep dispatches these at once
        sweep.undispatched += 1
        return
    sweep.undispatched += 1
    store.release_dispatch(item.job_id, item.dispatch_count)
