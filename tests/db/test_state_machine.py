"""The job state machine in SQL, against real Postgres (no mocks)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from infra.local.migrate import apply_migrations
from shared.jobs import TRANSITIONS, JobStatus, is_legal
from tests.support import FINAL, Db, SqlError


def _in_state(db: Db, status: str) -> dict[str, Any]:
    if status == "queued":
        return db.new_job()
    job = db.processing_job()
    if status == "completed":
        db.one("complete_job", job_id=job["id"], lease_token=job["lease_token"], result={"a": 1})
    elif status == "failed":
        db.one("fail_job", job_id=job["id"], lease_token=job["lease_token"], error="boom")
    elif status == "cancelled":
        db.one("cancel_job", job_id=job["id"])
    return job


def _token(job: dict[str, Any]) -> str:
    return str(job["lease_token"] or uuid.uuid4())


def _claim_v3(db: Db, job: dict[str, Any]) -> dict[str, Any] | None:
    """claim_job_v3 with the job's own dispatch number; its refusal (an outcome and no job)
    read as the first claim's (null)."""
    claim = db.one(
        "claim_job_v3", job_id=job["id"], dispatch=job["dispatch_count"], lease_seconds=60
    )
    return dict(claim) if claim["outcome"] == "claimed" else None


OPERATIONS: dict[str, tuple[str, Callable[[Db, dict[str, Any]], Any]]] = {
    "claim": ("claim_job", lambda db, j: db.one("claim_job", job_id=j["id"])),
    "complete": (
        "complete_job",
        lambda db, j: db.one("complete_job", job_id=j["id"], lease_token=_token(j), result={}),
    ),
    "fail": (
        "fail_job",
        lambda db, j: db.one("fail_job", job_id=j["id"], lease_token=_token(j), error="e"),
    ),
    "fail_retryable": (
        "fail_job",
        lambda db, j: db.one(
            "fail_job", job_id=j["id"], lease_token=_token(j), error="e", retryable=True
        ),
    ),
    "cancel": ("cancel_job", lambda db, j: db.one("cancel_job", job_id=j["id"])),
    # the later versions, over the same matrix
    "claim_v3": ("claim_job_v3", _claim_v3),
    "complete_v2": (
        "complete_job_v2",
        lambda db, j: db.one(
            "complete_job_v2", job_id=j["id"], lease_token=_token(j), result={}, steps=Jsonb([])
        ),
    ),
    "complete_v3": (
        "complete_job_v3",
        lambda db, j: db.one(
            "complete_job_v3",
            job_id=j["id"],
            lease_token=_token(j),
            result_json="{}",
            steps=Jsonb([]),
        ),
    ),
}


# (status before, operation) -> status after; missing pairs must be refused.
EXPECTED = {
    ("queued", "claim"): "processing",
    ("queued", "cancel"): "cancelled",
    ("queued", "claim_v3"): "processing",
    ("processing", "complete_v2"): "completed",
    ("processing", "complete_v3"): "completed",
    ("processing", "complete"): "completed",
    ("processing", "fail"): "failed",
    ("processing", "fail_retryable"): "queued",
    ("processing", "cancel"): "cancelled",
}


@pytest.mark.parametrize("status", [s.value for s in JobStatus])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_transition_matrix(db: Db, status: str, operation: str) -> None:
    job = _in_state(db, status)
    before = db.job(job["id"])
    assert before["status"] == status
    sql_name, call = OPERATIONS[operation]
    expected = EXPECTED.get((status, operation))

    if expected is None:
        try:
            returned = call(db, job)
        except SqlError as exc:
            assert exc.sqlstate in {"PT409", "PT404"}
            if status in FINAL:
                assert exc.message == "illegal_state"
                assert exc.detail == {"status": status}
        else:
            assert returned is None, "a refused claim answers null"
        assert db.job(job["id"]) == before, "a refused transition must not change the row"
    else:
        call(db, job)
        after = db.job(job["id"])
        assert after["status"] == expected
        assert is_legal(sql_name, JobStatus(status), JobStatus(expected))


def test_the_matrix_expects_exactly_the_declared_transitions() -> None:
    """EXPECTED (what SQL does) and TRANSITIONS (shared.jobs) name the same changes: nothing
    the matrix lets through is undeclared, nothing declared goes untested."""
    in_matrix = {
        (OPERATIONS[operation][0], JobStatus(before), JobStatus(after))
        for (before, operation), after in EXPECTED.items()
    }
    declared = {(name, old, new) for name, pairs in TRANSITIONS.items() for old, new in pairs}
    # tested on their own: a claim after the lease expired (below), the reaper's sweeps (below
    # and in test_dispatch.py)
    elsewhere = {
        ("claim_job", JobStatus.PROCESSING, JobStatus.PROCESSING),
        ("claim_job_v3", JobStatus.PROCESSING, JobStatus.PROCESSING),
        ("reap_jobs", JobStatus.PROCESSING, JobStatus.FAILED),
        ("reap_jobs", JobStatus.PROCESSING, JobStatus.QUEUED),
        ("reap_jobs_v2", JobStatus.PROCESSING, JobStatus.FAILED),
        ("reap_jobs_v2", JobStatus.PROCESSING, JobStatus.QUEUED),
    }

    assert in_matrix == declared - elsewhere
    assert elsewhere <= declared


def test_every_function_that_writes_a_status_declares_its_transitions(db: Db) -> None:
    """Walks pg_proc rather than trusting the table: a public function whose body sets a job's
    status names its changes in TRANSITIONS (a new sweep or a v2 of one included), and every
    name there is such a function."""
    writers = db.execute(
        "select distinct p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'public' and p.prosrc ~* '\\mset\\s+status\\s*='"
        " order by 1"
    )
    assert {name for (name,) in writers} == set(TRANSITIONS)


def test_claim_sets_a_fresh_lease_and_counts_the_attempt(db: Db) -> None:
    job = db.new_job()
    claimed = db.one("claim_job", job_id=job["id"], lease_seconds=30)
    assert claimed["status"] == "processing"
    assert claimed["attempts"] == 1
    assert claimed["lease_token"] is not None
    assert claimed["lease_expires_at"] > claimed["updated_at"]


def test_sixteen_concurrent_claims_grant_exactly_one_lease(db_uri: str, db: Db) -> None:
    job = db.new_job()
    barrier = threading.Barrier(16)

    def claim(_: int) -> Any:
        with Db(db_uri) as conn:
            barrier.wait()
            return conn.one("claim_job", job_id=job["id"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(claim, range(16)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    row = db.job(job["id"])
    assert row["attempts"] == 1
    assert row["lease_token"] == winners[0]["lease_token"]


def test_expired_lease_can_be_claimed_again_and_the_old_token_is_fenced(db: Db) -> None:
    first = db.processing_job(lease_seconds=0)
    second = db.one("claim_job", job_id=first["id"])
    assert second is not None
    assert second["attempts"] == 2
    assert second["lease_token"] != first["lease_token"]
    calls: list[Callable[[], Any]] = [
        lambda: db.report(first, 50, "x"),
        lambda: db.one(
            "complete_job", job_id=first["id"], lease_token=first["lease_token"], result={}
        ),
        lambda: db.one("fail_job", job_id=first["id"], lease_token=first["lease_token"], error="e"),
    ]
    for call in calls:
        before = db.job(first["id"])
        with pytest.raises(SqlError) as err:
            call()
        assert (err.value.sqlstate, err.value.message) == ("PT409", "lease_lost")
        assert db.job(first["id"]) == before


def test_live_lease_cannot_be_claimed(db: Db) -> None:
    job = db.processing_job(lease_seconds=600)
    assert db.one("claim_job", job_id=job["id"]) is None


def test_attempts_are_capped(db: Db) -> None:
    job = db.new_job(max_attempts=2)
    for _ in range(2):
        claimed = db.one("claim_job", job_id=job["id"])
        db.one(
            "fail_job",
            job_id=job["id"],
            lease_token=claimed["lease_token"],
            error="flaky",
            retryable=True,
        )
    row = db.job(job["id"])
    assert row["status"] == "failed"
    assert row["attempts"] == 2
    assert row["error"] == "flaky"


def test_cancel_racing_complete_keeps_exactly_one_winner(db_uri: str, db: Db) -> None:
    for _ in range(10):
        job = db.processing_job()
        barrier = threading.Barrier(2)

        def cancel(job: dict[str, Any] = job, barrier: threading.Barrier = barrier) -> str:
            with Db(db_uri) as conn:
                barrier.wait()
                try:
                    conn.one("cancel_job", job_id=job["id"])
                except SqlError:
                    return "lost"
                return "cancelled"

        def complete(job: dict[str, Any] = job, barrier: threading.Barrier = barrier) -> str:
            with Db(db_uri) as conn:
                barrier.wait()
                try:
                    conn.one(
                        "complete_job",
                        job_id=job["id"],
                        lease_token=job["lease_token"],
                        result={"ok": True},
                    )
                except SqlError as exc:
                    assert exc.detail == {"status": "cancelled"}
                    return "lost"
                return "completed"

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = [f.result() for f in [pool.submit(cancel), pool.submit(complete)]]
        winners = [o for o in outcomes if o != "lost"]
        assert len(winners) == 1
        final = db.job(job["id"])
        assert final["status"] == winners[0]
        if winners[0] == "cancelled":
            assert final["result"] is None


def test_cancelled_job_tells_the_worker_to_stop(db: Db) -> None:
    job = db.processing_job()
    assert db.report(job, 20, "a") is True
    db.one("cancel_job", job_id=job["id"])
    assert db.report(job, 50, "b") is False
    with pytest.raises(SqlError) as err:
        db.one("complete_job", job_id=job["id"], lease_token=job["lease_token"], result={})
    assert err.value.detail == {"status": "cancelled"}
    assert db.job(job["id"])["status"] == "cancelled"


def test_progress_never_decreases_and_each_report_logs_one_row(db: Db) -> None:
    job = db.processing_job()
    logs = db.log_count(job["id"])
    for progress, expected in [(20, 20), (50, 50), (30, 50), (80, 80)]:
        assert db.report(job, progress, f"step {progress}")
        logs += 1
        assert db.job(job["id"])["progress"] == expected
        assert db.log_count(job["id"]) == logs
    assert db.job(job["id"])["current_step"] == "step 80"


def test_progress_out_of_range_is_refused(db: Db) -> None:
    job = db.processing_job()
    with pytest.raises(SqlError) as err:
        db.report(job, 101, "x")
    assert err.value.sqlstate == "PT400"


def test_progress_extends_the_lease(db: Db) -> None:
    job = db.processing_job(lease_seconds=1)
    db.report(job, 20, "a", lease_seconds=600)
    assert db.job(job["id"])["lease_expires_at"] > job["lease_expires_at"]


def test_idempotency_same_body_same_job_other_body_conflict(db: Db) -> None:
    first = db.one("create_job", type="report", query="q", idempotency_key="k1", request_hash="h1")
    again = db.one("create_job", type="report", query="q", idempotency_key="k1", request_hash="h1")
    assert first["created"] is True
    assert again["created"] is False
    assert again["job"]["id"] == first["job"]["id"]
    with pytest.raises(SqlError) as err:
        db.one("create_job", type="report", query="other", idempotency_key="k1", request_hash="h2")
    assert (err.value.sqlstate, err.value.message) == ("PT409", "idempotency_conflict")
    assert err.value.detail == {"jobId": first["job"]["id"]}
    # keys are per user
    other_user = db.one(
        "create_job",
        type="report",
        query="q",
        idempotency_key="k1",
        request_hash="h1",
        user_id="someone-else",
    )
    assert other_user["created"] is True


def test_rate_cap_per_minute(db: Db) -> None:
    for _ in range(3):
        db.new_job(max_per_minute=3, max_active=100)
    with pytest.raises(SqlError) as err:
        db.new_job(max_per_minute=3, max_active=100)
    assert (err.value.sqlstate, err.value.message) == ("PT429", "rate_limited")
    assert 1 <= err.value.detail["retryAfter"] <= 60
    db.new_job(user="another", max_per_minute=3)  # the cap is per user


def test_cap_on_unfinished_jobs(db: Db) -> None:
    jobs = [db.new_job(max_active=2) for _ in range(2)]
    with pytest.raises(SqlError) as err:
        db.new_job(max_active=2)
    assert err.value.message == "too_many_active_jobs"
    db.one("cancel_job", job_id=jobs[0]["id"])
    db.new_job(max_active=2)


def test_idempotent_replay_is_not_rate_limited(db: Db) -> None:
    request = {"type": "report", "query": "q", "idempotency_key": "k", "request_hash": "h"}
    db.one("create_job", **request, max_per_minute=1)
    again = db.one("create_job", **request, max_per_minute=1)
    assert again["created"] is False


def test_keyset_pagination_is_stable_while_new_jobs_arrive(db: Db) -> None:
    created = [db.new_job(max_per_minute=100, max_active=100)["id"] for _ in range(7)]
    seen: list[str] = []
    cursor: dict[str, Any] = {}
    while True:
        page = db.rows("list_jobs", user_id="u1", limit=3, **cursor)
        seen += [row["id"] for row in page]
        db.new_job(max_per_minute=100, max_active=100)  # arrives mid-listing, on top
        if len(page) < 3:
            break
        cursor = {"before_created_at": page[-1]["created_at"], "before_id": page[-1]["id"]}
    assert seen == list(reversed(created))


def test_list_filters_by_status_and_type_and_user(db: Db) -> None:
    queued = db.new_job()
    cancelled = db.new_job(type="prediction")
    db.one("cancel_job", job_id=cancelled["id"])
    db.new_job(user="other")
    assert [r["id"] for r in db.rows("list_jobs", user_id="u1", statuses=["queued"])] == [
        queued["id"]
    ]
    assert [r["id"] for r in db.rows("list_jobs", user_id="u1", types=["prediction"])] == [
        cancelled["id"]
    ]
    assert len(db.rows("list_jobs", user_id="u1")) == 2


def test_get_and_cancel_are_scoped_to_the_user(db: Db) -> None:
    job = db.new_job(user="alice")
    with pytest.raises(SqlError) as err:
        db.one("get_job", job_id=job["id"], user_id="bob")
    assert err.value.sqlstate == "PT404"
    with pytest.raises(SqlError):
        db.one("cancel_job", job_id=job["id"], user_id="bob")
    assert db.job(job["id"])["status"] == "queued"
    assert db.one("get_job", job_id=job["id"], user_id="alice")["id"] == job["id"]


def test_reaper_redispatches_expired_leases_and_fails_exhausted_ones(db: Db) -> None:
    retry = db.processing_job(lease_seconds=0)
    exhausted = db.new_job(max_attempts=1)
    db.one("claim_job", job_id=exhausted["id"], lease_seconds=0)
    lost = db.new_job()
    db.one("release_dispatch", job_id=lost["id"])  # the enqueue failed
    healthy = db.new_job()

    reaped = {row["job_id"]: row for row in db.rows("reap_jobs", queued_grace_seconds=600)}

    assert reaped[retry["id"]]["action"] == "redispatch"
    assert reaped[retry["id"]]["dispatch_count"] == 2
    assert db.job(retry["id"])["status"] == "queued"
    assert reaped[exhausted["id"]]["action"] == "failed"
    assert db.job(exhausted["id"])["status"] == "failed"
    assert db.job(exhausted["id"])["error_code"] == "lease_expired"
    assert reaped[lost["id"]]["action"] == "dispatch"
    assert healthy["id"] not in reaped
    assert db.rows("reap_jobs", queued_grace_seconds=600) == [], "a second sweep finds nothing"


def test_purge_deletes_only_old_finished_jobs(db: Db) -> None:
    old = _in_state(db, "completed")
    fresh = _in_state(db, "failed")
    running = db.processing_job()
    db.execute(
        "update public.ai_jobs set completed_at = now() - interval '40 days' where id = %s",
        (old["id"],),
    )
    assert db.one("purge_jobs", retention_days=30) == 1
    with pytest.raises(SqlError):
        db.one("get_job", job_id=old["id"])
    assert db.job(fresh["id"])["status"] == "failed"
    assert db.job(running["id"])["status"] == "processing"


def test_check_constraints_guard_the_columns(db: Db) -> None:
    for bad in [{"type": "nonsense"}, {"priority": "urgent"}, {"query": ""}]:
        with pytest.raises(SqlError) as err:
            db.new_job(**bad)
        assert err.value.sqlstate == "23514"


def test_migrations_are_a_no_op_on_a_second_run(db_uri: str) -> None:
    assert apply_migrations(db_uri) == []


def test_list_leaves_results_out(db: Db) -> None:
    job = _in_state(db, "completed")
    (listed,) = db.rows("list_jobs", user_id="u1")
    assert listed["id"] == job["id"]
    assert listed["status"] == "completed"
    assert listed["result"] is None
    assert db.job(job["id"])["result"] == {"a": 1}
