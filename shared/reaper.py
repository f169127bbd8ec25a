"""The reaper Cloud Scheduler calls: recover jobs whose worker died or whose task was lost.

Each sweep fails or re-queues jobs whose lease expired (``reap_jobs_v2`` in SQL), asks Cloud
Tasks whether a queued job's current task is still pending before it adds another, dispatches
the rest, and purges finished jobs past ``RETENTION_DAYS``. It answers 503 while it had to
leave jobs undispatched (the queue is down), so Cloud Scheduler's retry sweeps again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import flask

from shared import errors, logs
from shared.http import json_response
from shared.identity import verify_caller
from shared.settings import Settings
from shared.store import PURGE_BATCH, REAP_BATCH, JobStore, ReapedJob, get_store
from shared.tasks import dispatch_or_release, get_queue

#: The reaper keeps sweeping while batches come back full, within this budget.
_REAP_BUDGET_S = 30.0


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
