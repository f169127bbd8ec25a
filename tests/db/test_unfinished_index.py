"""ai_jobs_unfinished_idx holds what the queries on unfinished jobs read (migration
20261201000100): (status, created_at), not the updated_at that every write changes and no query
reads; the reaper's queued sweep reads the queued jobs in created_at order up to its limit
instead of reading and sorting all of them.

What a sweep read is counted by Postgres itself (``pg_stat_xact_user_tables``, within the calling
transaction), on the real function, as tests/db/test_list_reads_one_page.py counts a page.
"""

from __future__ import annotations

import psycopg

from tests.support import Db

#: Queued jobs whose task may be lost: far more than one sweep takes.
QUEUED = 3000
LIMIT = 10


def _heap_rows_read(db: Db) -> int:
    ((read,),) = db.execute(
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
        " from pg_stat_xact_user_tables where relid = 'public.ai_jobs'::regclass"
    )
    return int(read)


def test_the_unfinished_index_holds_status_and_created_at_of_unfinished_jobs(db: Db) -> None:
    ((definition,),) = db.execute(
        "select pg_get_indexdef('public.ai_jobs_unfinished_idx'::regclass)"
    )
    assert str(definition).endswith(
        "USING btree (status, created_at) WHERE (status = ANY (ARRAY['queued'::text,"
        " 'processing'::text]))"
    )
    indexed = db.execute(
        "select a.attname from pg_index i"
        " join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)"
        " where i.indrelid = 'public.ai_jobs'::regclass"
    )
    assert "updated_at" not in {str(name) for (name,) in indexed}, "changed by every write"


def test_the_queued_sweep_reads_about_its_limit_in_created_at_order(db: Db, db_uri: str) -> None:
    db.execute(
        "insert into public.ai_jobs (user_id, type, query, status, created_at)"
        " select 'u' || mod(g, 7), 'report', 'q', 'queued',"
        "  timestamptz '2026-11-01 00:00:00+00' + g * interval '1 second'"
        " from generate_series(1, %s) g",
        (QUEUED,),
    )
    with psycopg.connect(db_uri, autocommit=True) as owner:  # only the owner may analyze
        owner.execute("analyze public.ai_jobs")
    before = _heap_rows_read(db)
    swept = db.rows("reap_jobs_v2", queued_grace_seconds=0, limit=LIMIT)
    read = _heap_rows_read(db) - before

    assert [row["action"] for row in swept] == ["dispatch"] * LIMIT
    oldest = db.execute("select id from public.ai_jobs order by created_at limit %s", (LIMIT,))
    assert {str(row["job_id"]) for row in swept} == {str(i) for (i,) in oldest}
    assert read <= 3 * LIMIT, f"{read} rows read for a sweep of {LIMIT}"
