"""Dispatch numbers and the v2 reaper sweep in SQL (migration 000500), on real Postgres."""

from __future__ import annotations

import pytest

from tests.support import Db, SqlError


def _sweep(db: Db, limit: int = 100, grace: int = 600) -> dict[str, dict[str, object]]:
    rows = db.rows("reap_jobs_v2", queued_grace_seconds=grace, limit=limit)
    return {str(row["job_id"]): row for row in rows}


def test_next_dispatch_takes_a_new_number_only_from_the_current_one(db: Db) -> None:
    job = db.new_job()
    assert job["dispatch_count"] == 1
    assert db.one("next_dispatch", job_id=job["id"], dispatch=1) == 2
    assert db.one("next_dispatch", job_id=job["id"], dispatch=1) is None, "1 is not current"
    assert db.one("next_dispatch", job_id=job["id"], dispatch=2) == 3
    assert db.job(job["id"])["dispatch_count"] == 3


def test_next_dispatch_refuses_a_job_that_is_not_queued(db: Db) -> None:
    job = db.processing_job()
    assert db.one("next_dispatch", job_id=job["id"], dispatch=1) is None
    assert db.job(job["id"])["dispatch_count"] == 1


def test_a_delayed_dispatch_keeps_the_reaper_away_until_the_delay_and_grace_pass(db: Db) -> None:
    job = db.new_job()
    db.one("next_dispatch", job_id=job["id"], dispatch=1, delay_seconds=3600)
    assert job["id"] not in _sweep(db, grace=0), "due in an hour: not lost"
    db.execute(
        "update public.ai_jobs set dispatched_at = now() - interval '1 second' where id = %s",
        (job["id"],),
    )
    assert job["id"] in _sweep(db, grace=0)


def test_release_undoes_only_the_dispatch_it_names(db: Db) -> None:
    job = db.new_job()
    db.one("next_dispatch", job_id=job["id"], dispatch=1)
    assert db.one("release_dispatch_v2", job_id=job["id"], dispatch=1) is False
    assert db.job(job["id"])["dispatched_at"] is not None, "dispatch 2 is not undone by 1"
    assert db.one("release_dispatch_v2", job_id=job["id"], dispatch=2) is True
    assert db.job(job["id"])["dispatched_at"] is None


def test_the_sweep_returns_current_numbers_without_bumping_them(db: Db) -> None:
    retry = db.processing_job(lease_seconds=0)
    exhausted = db.new_job(max_attempts=1)
    db.one("claim_job", job_id=exhausted["id"], lease_seconds=0)
    lost = db.new_job()
    db.one("release_dispatch_v2", job_id=lost["id"], dispatch=1)
    healthy = db.new_job()

    reaped = _sweep(db)

    assert reaped[retry["id"]]["action"] == "redispatch"
    assert reaped[retry["id"]]["dispatch_count"] == 1, "the caller asks Cloud Tasks first"
    assert db.job(retry["id"])["status"] == "queued"
    assert db.job(retry["id"])["dispatch_count"] == 1
    assert reaped[exhausted["id"]]["action"] == "failed"
    assert db.job(exhausted["id"])["error_code"] == "lease_expired"
    assert reaped[lost["id"]]["action"] == "dispatch"
    assert reaped[lost["id"]]["dispatch_count"] == 1
    assert db.job(lost["id"])["dispatched_at"] is not None, "stamped: a second sweep waits"
    assert healthy["id"] not in reaped
    assert _sweep(db) == {}, "a second sweep finds nothing"


def test_a_sweep_returns_every_row_it_changed_and_no_more_than_its_limit(db: Db) -> None:
    for _ in range(3):
        db.processing_job(lease_seconds=0)
    for _ in range(4):
        job = db.new_job()
        db.one("release_dispatch_v2", job_id=job["id"], dispatch=1)

    first = _sweep(db, limit=5)
    second = _sweep(db, limit=5)

    assert len(first) == 5, "three expired leases, then two lost tasks"
    assert len(second) == 2
    assert not set(first) & set(second)
    changed = db.execute(
        "select count(*) from public.ai_jobs where status = 'queued' and dispatched_at is not null"
    )
    assert changed == [(7,)], "every changed row was returned, so each is dispatched"


@pytest.mark.parametrize("limit", [0, 501, None])
def test_a_sweep_limit_outside_1_to_500_is_refused(db: Db, limit: int | None) -> None:
    with pytest.raises(SqlError) as err:
        db.rows("reap_jobs_v2", queued_grace_seconds=600, limit=limit)
    assert err.value.sqlstate == "PT400"
