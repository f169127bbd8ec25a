"""A job store and a task queue in memory, honouring the contracts of ``shared.store.JobStore``
and ``shared.tasks.TaskQueue`` the worker relies on, as procrastinate's ``InMemoryConnector``
does for its connector: the same guarded transitions, fencing by lease token, dispatch numbers
never reused, and the same exceptions. Test-only, so it lives here, not in ``shared/``.

``MemoryStore.down`` makes every call raise ``DatabaseUnavailable``, as the real store does
when PostgREST cannot be reached. The SQL store's behaviour is the reference: the db tier
tests it; these tests hold the worker to it without a server.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import errors
from shared.jobs import FINAL_STATUSES, Job, JobStatus, JobType, Priority
from shared.store import Claim, CreatedJob, Step


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MemoryStore:
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)
    logs: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    down: bool = False
    #: the database goes away after this many calls (None: it stays up)
    down_after: int | None = None
    calls: int = 0
    #: complete_job refuses with this (as the SQL would, in one transaction: nothing written)
    refuse_completion: errors.AppError | None = None

    def _check(self) -> None:
        self.calls += 1
        if self.down or (self.down_after is not None and self.calls > self.down_after):
            raise errors.DatabaseUnavailable("the database is unavailable")

    def _update(self, job: Job, **changes: Any) -> Job:
        updated = job.model_copy(update={**changes, "updated_at": _now()})
        self.jobs[job.id] = updated
        return updated

    def _refuse_write(self, job_id: uuid.UUID) -> errors.AppError:
        job = self.jobs.get(job_id)
        if job is None:
            return errors.JobNotFound("no job with this id", details={"jobId": str(job_id)})
        if job.status in FINAL_STATUSES:
            return errors.IllegalTransition(
                f"job is already {job.status.value}", details={"status": job.status.value}
            )
        return errors.LeaseLost("the lease token does not match", details={"status": job.status})

    def _held(self, job_id: uuid.UUID, token: uuid.UUID) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.status != JobStatus.PROCESSING or job.lease_token != token:
            raise self._refuse_write(job_id)
        return job

    def create_job(
        self, *, user_id: str, job_type: str, query: str, max_attempts: int, **_: Any
    ) -> CreatedJob:
        self._check()
        now = _now()
        job = Job(
            id=uuid.uuid4(),
            user_id=user_id,
            type=JobType(job_type),
            query=query,
            priority=Priority.NORMAL,
            status=JobStatus.QUEUED,
            progress=0,
            current_step="queued",
            max_attempts=max_attempts,
            dispatch_count=1,
            dispatched_at=now,
            created_at=now,
            updated_at=now,
        )
        self.jobs[job.id] = job
        return CreatedJob(job=job, created=True)

    def get_job(self, job_id: uuid.UUID, user_id: str | None = None) -> Job:
        self._check()
        job = self.jobs.get(job_id)
        if job is None or (user_id is not None and job.user_id != user_id):
            raise errors.JobNotFound("no job with this id", details={"jobId": str(job_id)})
        return job

    def cancel_job(
        self, job_id: uuid.UUID, user_id: str | None = None, reason: str | None = None
    ) -> Job:
        job = self.get_job(job_id, user_id)
        if job.status in FINAL_STATUSES:
            raise self._refuse_write(job_id)
        return self._update(
            job,
            status=JobStatus.CANCELLED,
            completed_at=_now(),
            lease_token=None,
            lease_expires_at=None,
            error=reason or "cancelled by the client",
            error_code="cancelled",
        )

    def claim_delivery(self, job_id: uuid.UUID, dispatch: int | None, lease_seconds: int) -> Claim:
        self._check()
        job = self.jobs.get(job_id)
        if job is None:
            return Claim("not_found", None, None)
        if dispatch != job.dispatch_count:
            return Claim("stale_dispatch", None, job.dispatch_count)
        now = _now()
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        claimable = job.status == JobStatus.QUEUED or (
            job.status == JobStatus.PROCESSING and expired
        )
        if job.attempts >= job.max_attempts or not claimable:
            return Claim("nothing_to_do", None, job.dispatch_count)
        claimed = self._update(
            job,
            status=JobStatus.PROCESSING,
            lease_token=uuid.uuid4(),
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=job.attempts + 1,
            progress=0,
            current_step="claimed",
            started_at=job.started_at or now,
        )
        self.logs.append((job_id, "claimed"))
        return Claim("claimed", claimed, claimed.dispatch_count)

    def _log_steps(self, job: Job, steps: list[Step]) -> Job:
        progress, current = job.progress, job.current_step
        for percent, step in steps:
            if not 0 <= percent <= 100:
                raise errors.ValidationFailed("progress must be between 0 and 100")
            self.logs.append((job.id, step))
            if percent >= progress:
                progress, current = percent, step
        return self._update(job, progress=progress, current_step=current)

    def report_steps(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, steps: list[Step], lease_seconds: int
    ) -> bool:
        self._check()
        job = self.jobs.get(job_id)
        if job is not None and job.status == JobStatus.CANCELLED:
            return False
        job = self._log_steps(self._held(job_id, lease_token), steps)
        lease = job.lease_expires_at
        if lease is not None:
            self._update(
                job, lease_expires_at=max(lease, _now() + timedelta(seconds=lease_seconds))
            )
        return True

    def extend_lease(self, job_id: uuid.UUID, lease_token: uuid.UUID, lease_seconds: int) -> bool:
        self._check()
        try:
            job = self._held(job_id, lease_token)
        except errors.AppError:
            return False
        self._update(job, lease_expires_at=_now() + timedelta(seconds=lease_seconds))
        return True

    def complete_job(
        self,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        result_json: str,
        steps: list[Step],
    ) -> Job:
        self._check()
        if self.refuse_completion is not None:
            raise self.refuse_completion
        job = self._log_steps(self._held(job_id, lease_token), steps)
        self.logs.append((job_id, "completed"))
        return self._update(
            job,
            status=JobStatus.COMPLETED,
            progress=100,
            current_step="completed",
            result=json.loads(result_json),  # as complete_job_v3's cast to jsonb
            error=None,
            error_code=None,
            completed_at=_now(),
            lease_token=None,
            lease_expires_at=None,
        )

    def fail_job(
        self,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        error: str,
        *,
        error_code: str = "internal",
        retryable: bool = False,
    ) -> Job:
        self._check()
        job = self._held(job_id, lease_token)
        again = retryable and job.attempts < job.max_attempts
        status = JobStatus.QUEUED if again else JobStatus.FAILED
        return self._update(
            job,
            status=status,
            error=error[:2000],
            error_code=error_code,
            lease_token=None,
            lease_expires_at=None,
            completed_at=None if again else _now(),
            current_step=status.value,
            dispatched_at=_now() if again else job.dispatched_at,
        )

    def next_dispatch(self, job_id: uuid.UUID, dispatch: int, delay_s: float = 0.0) -> int | None:
        self._check()
        job = self.jobs.get(job_id)
        if job is None or job.status != JobStatus.QUEUED or job.dispatch_count != dispatch:
            return None
        due = _now() + timedelta(seconds=max(delay_s, 0.0))
        return self._update(job, dispatch_count=dispatch + 1, dispatched_at=due).dispatch_count

    def release_dispatch(self, job_id: uuid.UUID, dispatch: int | None = None) -> bool:
        self._check()
        job = self.jobs.get(job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return False
        if dispatch is not None and job.dispatch_count != dispatch:
            return False
        self._update(job, dispatched_at=None)
        return True


@dataclass
class MemoryQueue:
    """Named tasks, as Cloud Tasks keeps them: enqueueing a pending name again is a success
    (``TaskQueue`` answers ALREADY_EXISTS with the task's existence); ``down`` refuses every
    call with ``QueueUnavailable``."""

    tasks: dict[tuple[uuid.UUID, int], float] = field(default_factory=dict)
    down: bool = False

    def enqueue(
        self, job_id: uuid.UUID, dispatch: int, *, delay_s: float = 0.0, budget_s: float = 2.0
    ) -> bool:
        if self.down:
            raise errors.QueueUnavailable("the task queue is unavailable")
        self.tasks.setdefault((job_id, dispatch), delay_s)
        return True
