"""Migration 000900 on real Postgres: the claim fenced by the task's dispatch number (an old
task delivered late cannot take the job before its scheduled retry), steps written in
batches (report_progress_v2, complete_job_v2), and the two helpers the functions share."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.support import Db, SqlError

LEASE = 60


def _claim(db: Db, job_id: str, dispatch: int | None) -> dict[str, Any]:
    return dict(db.one("claim_job_v3", job_id=job_id, dispatch=dispatch, lease_seconds=LEASE))


def _steps(*pairs: tuple[int, str]) -> Jsonb:
    return Jsonb([{"progress": progress, "step": step} for progress, step in pairs])


def _log(db: Db, job_id: str) -> list[tuple[int | None, str]]:
    rows = db.execute(
        "select progress, step from public.ai_job_logs where job_id = %s order by id", (job_id,)
    )
    return [(row[0], row[1]) for row in rows]


def _retry_scheduled(db: Db) -> dict[str, Any]:
    """A job whose first attempt failed retryably and whose retry is task 2, due in an hour."""
    job = db.new_job()
    token = _claim(db, job["id"], 1)["job"]["lease_token"]
    db.one("fail_job", job_id=job["id"], lease_token=token, error="429", retryable=True)
    assert db.one("next_dispatch", job_id=job["id"], dispatch=1, delay_seconds=3600) == 2
    return job


def test_the_current_task_claims_the_job(db: Db) -> None:
    job = db.new_job()

    claim = _claim(db, job["id"], 1)

    assert (claim["outcome"], claim["current_dispatch"]) == ("claimed", 1)
    row = db.job(job["id"])
    assert (row["status"], row["attempts"]) == ("processing", 1)
    assert row["lease_token"] == claim["job"]["lease_token"]
    assert _log(db, job["id"])[-1] == (0, "claimed")


def test_an_old_task_delivered_late_does_not_claim_before_the_retry(db: Db) -> None:
    job = _retry_scheduled(db)
    before = db.job(job["id"])
    logged = db.log_count(job["id"])

    late = _claim(db, job["id"], 1)

    assert (late["outcome"], late["current_dispatch"]) == ("stale_dispatch", 2)
    assert late["job"] is None or late["job"]["id"] is None
    assert db.job(job["id"]) == before, "a stale delivery changes nothing"
    assert db.log_count(job["id"]) == logged
    assert _claim(db, job["id"], 2)["outcome"] == "claimed"


def test_a_delivery_naming_no_task_or_a_future_one_is_stale(db: Db) -> None:
    job = db.new_job()

    assert _claim(db, job["id"], None)["outcome"] == "stale_dispatch"
    assert _claim(db, job["id"], 2)["outcome"] == "stale_dispatch"
    assert db.job(job["id"])["status"] == "queued"


def test_the_old_and_the_new_task_racing_leave_the_job_to_the_new_one(db_uri: str, db: Db) -> None:
    job = _retry_scheduled(db)
    # the retry's time has come: both tasks are delivered at once, 8 of each
    db.execute("update public.ai_jobs set dispatched_at = now() where id = %s", (job["id"],))
    barrier = threading.Barrier(16)

    def deliver(dispatch: int) -> dict[str, Any]:
        with Db(db_uri) as conn:
            barrier.wait()
            return _claim(conn, job["id"], dispatch)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(deliver, [1, 2] * 8))

    outcomes = sorted((r["outcome"], r["current_dispatch"]) for r in results)
    assert outcomes == [("claimed", 2)] + [("nothing_to_do", 2)] * 7 + [("stale_dispatch", 2)] * 8
    assert db.job(job["id"])["attempts"] == 2


def test_a_live_lease_finished_job_or_missing_job_is_nothing_to_claim(db: Db) -> None:
    job = db.new_job()
    _claim(db, job["id"], 1)

    assert _claim(db, job["id"], 1)["outcome"] == "nothing_to_do"
    assert _claim(db, str(uuid.uuid4()), 1) == {
        "job": None,
        "outcome": "not_found",
        "current_dispatch": None,
    }


def test_the_claim_stops_when_the_attempts_are_used_up(db: Db) -> None:
    job = db.new_job(max_attempts=1)
    token = _claim(db, job["id"], 1)["job"]["lease_token"]
    db.execute(
        "update public.ai_jobs set lease_expires_at = now() - interval '1 s' where id = %s",
        (job["id"],),
    )

    assert _claim(db, job["id"], 1)["outcome"] == "nothing_to_do"
    failed = db.one("fail_job", job_id=job["id"], lease_token=token, error="e", retryable=True)
    assert failed["status"] == "failed", "no attempt left: a retryable failure is final"


def test_steps_sent_together_log_one_row_each_in_order(db: Db) -> None:
    job = db.new_job()
    claim = _claim(db, job["id"], 1)
    token = claim["job"]["lease_token"]
    db.execute(
        "update public.ai_jobs set lease_expires_at = now() + interval '1 s' where id = %s",
        (job["id"],),
    )

    went_on = db.one(
        "report_progress_v2",
        job_id=job["id"],
        lease_token=token,
        steps=_steps((0, "start"), (20, "data"), (50, "analysis")),
        lease_seconds=LEASE,
    )

    assert went_on is True
    row = db.job(job["id"])
    assert (row["progress"], row["current_step"]) == (50, "analysis")
    assert _log(db, job["id"])[-3:] == [(0, "start"), (20, "data"), (50, "analysis")]
    lease_left = db.execute(
        "select extract(epoch from lease_expires_at - now()) from public.ai_jobs where id = %s",
        (job["id"],),
    )[0][0]
    assert lease_left > LEASE - 5, "a step write renews the lease"


def test_completion_logs_the_unwritten_steps_before_the_completed_row(db: Db) -> None:
    job = db.new_job()
    token = _claim(db, job["id"], 1)["job"]["lease_token"]

    done = db.one(
        "complete_job_v2",
        job_id=job["id"],
        lease_token=token,
        result={"markdown": "# ok"},
        steps=_steps((80, "formatting"), (100, "done")),
    )

    assert (done["status"], done["progress"], done["lease_token"]) == ("completed", 100, None)
    assert done["result"] is None, "the result the caller sent is not sent back"
    assert db.job(job["id"])["result"] == {"markdown": "# ok"}
    assert _log(db, job["id"]) == [
        (0, "queued"),
        (0, "claimed"),
        (80, "formatting"),
        (100, "done"),
        (100, "completed"),
    ]


def test_batched_writes_are_fenced_like_the_single_ones(db: Db) -> None:
    job = db.new_job()
    token = _claim(db, job["id"], 1)["job"]["lease_token"]
    steps = _steps((20, "data"))

    with pytest.raises(SqlError) as stranger:
        db.one(
            "report_progress_v2",
            job_id=job["id"],
            lease_token=str(uuid.uuid4()),
            steps=steps,
            lease_seconds=LEASE,
        )
    assert (stranger.value.sqlstate, stranger.value.message) == ("PT409", "lease_lost")

    db.one("cancel_job", job_id=job["id"])
    assert (
        db.one(
            "report_progress_v2",
            job_id=job["id"],
            lease_token=token,
            steps=steps,
            lease_seconds=LEASE,
        )
        is False
    ), "a cancelled job tells the worker to stop"
    with pytest.raises(SqlError) as late:
        db.one("complete_job_v2", job_id=job["id"], lease_token=token, result={}, steps=steps)
    assert (late.value.message, late.value.detail["status"]) == ("illegal_state", "cancelled")
    assert db.job(job["id"])["status"] == "cancelled"


@pytest.mark.parametrize(
    "steps",
    [
        [{"progress": 101, "step": "x"}],
        [{"progress": 50.5, "step": "x"}],
        [{"progress": "50", "step": "x"}],
        [{"progress": 50}],
        [{"progress": 50, "step": ""}],
        {"progress": 50, "step": "x"},
        [{"progress": 1, "step": "x"}] * 21,
    ],
)
def test_malformed_steps_are_refused_and_nothing_is_written(db: Db, steps: Any) -> None:
    job = db.new_job()
    token = _claim(db, job["id"], 1)["job"]["lease_token"]
    logged = db.log_count(job["id"])

    with pytest.raises(SqlError) as err:
        db.one(
            "report_progress_v2",
            job_id=job["id"],
            lease_token=token,
            steps=Jsonb(steps),
            lease_seconds=LEASE,
        )

    assert (err.value.sqlstate, err.value.message) == ("PT400", "invalid_argument")
    assert db.log_count(job["id"]) == logged


def test_every_not_found_raise_is_the_one_helper(db: Db) -> None:
    missing = str(uuid.uuid4())
    calls: list[Callable[[], object]] = [
        lambda: db.one("get_job", job_id=missing),
        lambda: db.one("cancel_job", job_id=missing),
        lambda: db.one("fail_job", job_id=missing, lease_token=missing, error="e"),
        lambda: db.one(
            "complete_job_v2", job_id=missing, lease_token=missing, result={}, steps=_steps()
        ),
        lambda: db.one(
            "report_progress_v2",
            job_id=missing,
            lease_token=missing,
            steps=_steps(),
            lease_seconds=1,
        ),
    ]
    for call in calls:
        with pytest.raises(SqlError) as err:
            call()
        assert (err.value.sqlstate, err.value.message) == ("PT404", "job_not_found")
        assert err.value.detail == {"jobId": missing}
    sources = db.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'public' and p.prosrc like '%%job_not_found%%' order by 1"
    )
    # the functions re-created in 000900 call the helper instead of spelling the raise out
    assert sources == [("ai_jobs_raise_not_found",)]
