"""ai_jobs_log_steps (migration 20261127000900) on real Postgres, the helper every batched step
write goes through (report_progress_v2, complete_job_v2/v3): one row per step in the order
reached, progress that never goes back (ties and late steps), an empty batch, and a bad step
after good ones refusing the whole batch."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.support import Db, SqlError

LEASE = 60


def _claimed(db: Db) -> tuple[str, str]:
    job = db.new_job()
    claim = db.one("claim_job_v3", job_id=job["id"], dispatch=1, lease_seconds=LEASE)
    return job["id"], claim["job"]["lease_token"]


def _report(db: Db, job_id: str, token: str, steps: list[Any]) -> Any:
    return db.one(
        "report_progress_v2",
        job_id=job_id,
        lease_token=token,
        steps=Jsonb(steps),
        lease_seconds=LEASE,
    )


def _steps(*pairs: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"progress": progress, "step": step} for progress, step in pairs]


def _logged(db: Db, job_id: str, after: int) -> list[tuple[int | None, str, str, int]]:
    rows = db.execute(
        "select progress, step, message, attempt from public.ai_job_logs"
        " where job_id = %s and id > %s order by id",
        (job_id, after),
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def _last_log_id(db: Db, job_id: str) -> int:
    return int(
        db.execute("select max(id) from public.ai_job_logs where job_id = %s", (job_id,))[0][0]
    )


def test_twenty_steps_are_logged_one_row_each_in_the_order_reached(db: Db) -> None:
    job_id, token = _claimed(db)
    before = _last_log_id(db, job_id)
    steps = _steps(*((5 * i, f"step {i:02d}") for i in range(20)))

    assert _report(db, job_id, token, steps) is True

    assert _logged(db, job_id, before) == [
        (5 * i, f"step {i:02d}", f"step {i:02d}", 1) for i in range(20)
    ]
    row = db.job(job_id)
    assert (row["progress"], row["current_step"]) == (95, "step 19")


def test_the_job_ends_at_the_last_step_of_the_highest_progress(db: Db) -> None:
    job_id, token = _claimed(db)

    _report(db, job_id, token, _steps((50, "a"), (30, "b"), (50, "c"), (20, "d")))

    row = db.job(job_id)
    assert (row["progress"], row["current_step"]) == (50, "c")


def test_steps_below_the_current_progress_are_logged_but_move_nothing(db: Db) -> None:
    job_id, token = _claimed(db)
    _report(db, job_id, token, _steps((60, "analysis")))
    before = _last_log_id(db, job_id)

    _report(db, job_id, token, _steps((20, "late"), (40, "later")))

    row = db.job(job_id)
    assert (row["progress"], row["current_step"]) == (60, "analysis")
    assert [(p, s) for p, s, _, _ in _logged(db, job_id, before)] == [(20, "late"), (40, "later")]


def test_a_step_at_the_current_progress_becomes_the_current_step(db: Db) -> None:
    job_id, token = _claimed(db)
    _report(db, job_id, token, _steps((60, "analysis")))

    _report(db, job_id, token, _steps((60, "still analysing")))

    row = db.job(job_id)
    assert (row["progress"], row["current_step"]) == (60, "still analysing")


def test_an_empty_batch_logs_nothing_and_keeps_the_job_where_it_was(db: Db) -> None:
    job_id, token = _claimed(db)
    before = _last_log_id(db, job_id)

    assert _report(db, job_id, token, []) is True

    row = db.job(job_id)
    assert (row["progress"], row["current_step"]) == (0, "claimed")
    assert _logged(db, job_id, before) == []


@pytest.mark.parametrize(
    "steps",
    [
        [{"progress": 10, "step": "ok"}, {"progress": "abc", "step": "x"}],
        [{"progress": 10, "step": "ok"}, {"progress": None, "step": "x"}],
        [{"progress": 10, "step": "ok"}, None],
        [{"progress": 10, "step": "ok"}, 7],
        [{"progress": 10, "step": "ok"}, {"progress": -1, "step": "x"}],
        [{"progress": 10, "step": "ok"}, {"progress": 10, "step": None}],
    ],
)
def test_one_bad_step_after_good_ones_refuses_the_batch_and_logs_none(
    db: Db, steps: list[Any]
) -> None:
    job_id, token = _claimed(db)
    logged = db.log_count(job_id)

    with pytest.raises(SqlError) as err:
        _report(db, job_id, token, steps)

    assert (err.value.sqlstate, err.value.message) == ("PT400", "invalid_argument")
    assert db.log_count(job_id) == logged
    assert db.job(job_id)["progress"] == 0
