"""create_job's caps decided by bounded existence probes (migration 20261130000100): the same
answers as the counts they replaced, at every boundary, the same rows written, and a refused
create that reads about `cap` index entries however many jobs the user has.

What a call read is counted by Postgres itself (the index entries its index scans returned and
the rows its sequential scans read, ``pg_stat_get_xact_tuples_returned``, within the calling
transaction; a refused call is rolled back to a savepoint, and scan counts are not
transactional), on the real function.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support import Db, SqlError

#: Jobs of the heavy user: far more than any cap below, so reading them all shows.
HEAVY = 300
#: Other users' jobs beside them.
OTHERS = 20_000


def _add_jobs(db: Db, user: str, count: int, *, age_seconds: int, status: str = "queued") -> None:
    """``count`` jobs of ``user`` created ``age_seconds`` ago and later, one statement."""
    db.execute(
        "insert into public.ai_jobs (user_id, type, query, status, created_at)"
        " select %s, 'report', 'q', %s, now() - make_interval(secs => %s) + g * interval '1 ms'"
        " from generate_series(0, %s - 1) g",
        (user, status, age_seconds, count),
    )


def _index_entries_read(db: Db) -> int:
    ((read,),) = db.execute(
        "select sum(pg_stat_get_xact_tuples_returned(x.indexrelid))"
        " + pg_stat_get_xact_tuples_returned('public.ai_jobs'::regclass)"
        " from pg_index x where x.indrelid = 'public.ai_jobs'::regclass"
    )
    return int(read)


def _refused(db: Db, **args: Any) -> tuple[SqlError, int]:
    """The error of a create that must be refused, and how many rows of ai_jobs it read."""
    with db.conn.transaction():
        before = _index_entries_read(db)
        with pytest.raises(SqlError) as err, db.conn.transaction():
            db.new_job(**args)
        return err.value, _index_entries_read(db) - before


@pytest.mark.parametrize("cap", [1, 2, 7])
def test_each_cap_admits_exactly_cap_jobs(db: Db, cap: int) -> None:
    for _ in range(cap):
        db.new_job(user="rate", max_per_minute=cap, max_active=100)
    rate, _ = _refused(db, user="rate", max_per_minute=cap, max_active=100)
    for _ in range(cap):
        db.new_job(user="active", max_per_minute=100, max_active=cap)
    active, _ = _refused(db, user="active", max_per_minute=100, max_active=cap)

    assert (rate.sqlstate, rate.message, rate.detail["limit"]) == ("PT429", "rate_limited", cap)
    assert (active.sqlstate, active.message) == ("PT429", "too_many_active_jobs")
    assert active.detail == {"limit": cap, "retryAfter": 10}


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
def test_a_refused_create_reads_about_cap_entries_not_all_of_the_users_jobs(
    db: Db, db_uri: str, analyzed: bool
) -> None:
    # finished in the last minute (the rate's rows only); unfinished long ago (the active cap's)
    _add_jobs(db, "heavy-recent", HEAVY, age_seconds=30, status="completed")
    _add_jobs(db, "heavy-active", HEAVY, age_seconds=600)
    # and a table of other users' jobs, large enough that reading all of it is not the cheapest
    db.execute(
        "insert into public.ai_jobs (user_id, type, query, status)"
        " select 'other-' || mod(g, 500), 'report', 'q', 'completed'"
        " from generate_series(1, %s) g",
        (OTHERS,),
    )
    if analyzed:
        with psycopg.connect(db_uri, autocommit=True) as owner:  # only the owner may analyze
            owner.execute("analyze public.ai_jobs")

    # past plpgsql's fifth call of each statement, where its cached plan may turn generic
    rates = [_refused(db, user="heavy-recent", max_per_minute=5, max_active=5) for _ in range(8)]
    actives = [_refused(db, user="heavy-active", max_per_minute=5, max_active=5) for _ in range(8)]

    assert {err.message for err, _ in rates} == {"rate_limited"}
    assert {err.message for err, _ in actives} == {"too_many_active_jobs"}
    # the cap's entries and the oldest of the minute; counting read all 300 every time
    assert max(read for _, read in rates) <= 5 + 1, rates
    # the unfinished jobs' probe reads the partial index of unfinished jobs: stopping at the cap
    # where the index is walked (a bitmap scan of it, which a planner with statistics may take,
    # reads the user's unfinished jobs, at most the cap while the cap holds)
    if not analyzed:
        assert max(read for _, read in actives) <= 5 + 1, actives


def test_retry_after_is_when_the_oldest_job_of_the_minute_leaves_it(db: Db) -> None:
    _add_jobs(db, "waiting", 4, age_seconds=50)

    err, _ = _refused(db, user="waiting", max_per_minute=4, max_active=100)

    assert err.detail == {"limit": 4, "windowSeconds": 60, "retryAfter": 10}


def test_jobs_older_than_a_minute_do_not_count_against_the_rate(db: Db) -> None:
    _add_jobs(db, "earlier", HEAVY, age_seconds=120, status="completed")

    assert db.new_job(user="earlier", max_per_minute=1, max_active=1)["status"] == "queued"


def test_a_cap_below_one_is_always_reached_and_a_null_cap_never(db: Db) -> None:
    # as `count(*) >= cap` answered: 0 >= 0 is true, n >= null is not
    zero, _ = _refused(db, user="fresh", max_per_minute=0, max_active=100)
    no_active, _ = _refused(db, user="fresh", max_per_minute=100, max_active=0)
    _add_jobs(db, "uncapped", 20, age_seconds=10)

    job = db.new_job(user="uncapped", max_per_minute=None, max_active=None)

    assert zero.message == "rate_limited"
    assert no_active.message == "too_many_active_jobs"
    assert job["user_id"] == "uncapped"


def test_the_rate_cap_is_checked_before_the_active_cap(db: Db) -> None:
    db.new_job(user="both", max_per_minute=1, max_active=1)

    err, _ = _refused(db, user="both", max_per_minute=1, max_active=1)

    assert err.message == "rate_limited"


def test_a_created_job_is_answered_as_stored_with_its_first_log_row(db: Db) -> None:
    created = db.one(
        "create_job",
        type="analysis",
        query="why is web-03 slow",
        user_id="writer",
        priority="high",
        idempotency_key="key-1",
        request_hash="hash-1",
        complexity="complex",
        estimated_seconds=40,
        metadata={"source": "test"},
        max_attempts=4,
    )
    job = created["job"]

    logs = db.execute(
        "select attempt, level, progress, step, message from public.ai_job_logs where job_id = %s",
        (job["id"],),
    )

    assert created["created"] is True
    assert job == db.job(job["id"])
    assert (job["status"], job["dispatch_count"], job["max_attempts"]) == ("queued", 1, 4)
    assert job["metadata"] == {"source": "test"}
    assert logs == [(0, "info", 0, "queued", "job created")]
