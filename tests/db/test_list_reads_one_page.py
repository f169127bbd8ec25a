"""list_jobs reads about a page of rows per page, with or without the table's statistics
(migration 20261129000200): the planner walks ai_jobs_user_created_idx and stops at the limit,
and a cursor seeks into it, instead of reading and sorting all of the user's jobs.

What a call read is counted by Postgres itself (``pg_stat_xact_user_tables``: the heap rows a
scan fetched or read, within the calling transaction), on the real function, so the test
holds for whichever plan Postgres picks and fails for one that reads the whole set.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support import Db

#: Jobs of the listed user: enough that reading all of them is far from reading a page.
USER_JOBS = 5000
PAGE = 21
#: What one page may read: the page, and the few index entries a filter skipped on the way.
PAGE_READ_BOUND = 3 * PAGE


def _fill(db: Db, db_uri: str, *, analyze: bool = False) -> None:
    """USER_JOBS jobs of u1 (two a second, newest first, so some share a second: the cursor's
    id breaks the tie) among other users' jobs, inserted in one statement so the table has no
    statistics yet, and none later (autovacuum off for it) unless ``analyze``. As the owner:
    only the owner may change a table's settings or analyze it."""
    with psycopg.connect(db_uri, autocommit=True) as owner:
        owner.execute("alter table public.ai_jobs set (autovacuum_enabled = false)")
    db.execute(
        "insert into public.ai_jobs (user_id, type, query, status, created_at)"
        " select case when mod(g, 10) = 0 then 'other' || mod(g, 7) else 'u1' end, 'report', 'q',"
        "  case when mod(g, 100) = 1 then 'queued' else 'completed' end,"
        "  timestamptz '2026-11-01 00:00:00+00' - (g / 2) * interval '1 second'"
        " from generate_series(1, %s) g",
        (USER_JOBS * 10 // 9,),
    )
    if analyze:
        with psycopg.connect(db_uri, autocommit=True) as owner:
            owner.execute("analyze public.ai_jobs")


def _reltuples(db: Db) -> float:
    ((tuples,),) = db.execute(
        "select reltuples from pg_class where oid = 'public.ai_jobs'::regclass"
    )
    return float(tuples)


def _heap_rows_read(db: Db) -> int:
    ((read,),) = db.execute(
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
        " from pg_stat_xact_user_tables where relid = 'public.ai_jobs'::regclass"
    )
    return int(read)


def _page(db: Db, **args: Any) -> tuple[list[dict[str, Any]], int]:
    """One list_jobs page, and how many rows of ai_jobs the call read (counted in one
    transaction: the pending counts are flushed only between transactions)."""
    with db.conn.transaction():
        before = _heap_rows_read(db)
        page = db.rows("list_jobs", user_id="u1", limit=PAGE, **args)
        return page, _heap_rows_read(db) - before


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
def test_every_page_reads_about_a_page_of_rows(db: Db, db_uri: str, analyzed: bool) -> None:
    _fill(db, db_uri, analyze=analyzed)
    assert (_reltuples(db) > 0) == analyzed  # without statistics, as a new table is

    reads: list[int] = []
    cursor: dict[str, Any] = {}
    # past plpgsql's fifth call, where its cached plan may turn generic
    for _ in range(8):
        page, read = _page(db, **cursor)
        reads.append(read)
        last = page[-1]
        cursor = {"before_created_at": last["created_at"], "before_id": last["id"]}

    assert max(reads) <= PAGE_READ_BOUND, reads


def test_a_page_of_a_rare_status_reads_its_matches_not_the_users_jobs(db: Db, db_uri: str) -> None:
    # with statistics the planner reads the few queued jobs through the status index and sorts
    # them; the unfiltered page's enable_sort = off would have walked all 5 000 of the user's
    _fill(db, db_uri, analyze=True)
    ((queued,),) = db.execute(
        "select count(*) from public.ai_jobs where user_id = 'u1' and status = 'queued'"
    )

    page, read = _page(db, statuses=["queued"])

    assert [job["status"] for job in page] == ["queued"] * PAGE
    assert read <= 3 * queued < USER_JOBS // 10


def test_a_status_filter_answers_as_the_newest_pages_filtered(db: Db, db_uri: str) -> None:
    _fill(db, db_uri)
    newest = db.rows("list_jobs", user_id="u1", limit=100)

    for statuses in (["queued"], ["completed"], ["queued", "completed"], []):
        page = db.rows("list_jobs", user_id="u1", limit=100, statuses=statuses)
        expected = [job["id"] for job in newest if job["status"] in statuses]
        assert [job["id"] for job in page][: len(expected)] == expected


def test_the_cursor_pages_through_every_job_once_in_order(db: Db, db_uri: str) -> None:
    _fill(db, db_uri)
    ((expected,),) = db.execute(
        "select array_agg(id::text order by created_at desc, id desc)"
        " from public.ai_jobs where user_id = 'u1'"
    )

    listed: list[str] = []
    cursor: dict[str, Any] = {}
    while page := db.rows("list_jobs", user_id="u1", limit=100, **cursor):
        listed += [job["id"] for job in page]
        cursor = {"before_created_at": page[-1]["created_at"], "before_id": page[-1]["id"]}

    assert len(listed) == len(expected) == USER_JOBS
    assert listed == expected
