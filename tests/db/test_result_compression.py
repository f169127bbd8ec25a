"""The job's result column uses lz4 where the server has it, and the server default otherwise
(migration 20261127001200): the same migration applies on Supabase and on a local build
without lz4, and a result reads back unchanged either way."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def test_the_result_column_takes_lz4_exactly_when_the_server_supports_it(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        supported = conn.execute(
            "select 'lz4' = any (enumvals) from pg_settings"
            " where name = 'default_toast_compression'"
        ).fetchone()
        method = conn.execute(
            "select attcompression from pg_attribute"
            " where attrelid = 'public.ai_jobs'::regclass and attname = 'result'"
        ).fetchone()

    assert supported is not None and method is not None
    assert method[0] == ("l" if supported[0] else "")


def test_a_large_result_reads_back_unchanged(db_uri: str) -> None:
    result = {"sections": [{"title": f"server-{i}", "values": list(range(200))} for i in range(40)]}
    with psycopg.connect(db_uri) as conn:
        job_id = conn.execute(
            "insert into public.ai_jobs (type, query, status, result, completed_at)"
            " values ('report', 'q', 'completed', %s, now()) returning id",
            (Jsonb(result),),
        ).fetchone()
        assert job_id is not None
        stored = conn.execute(
            "select result, pg_column_size(result) < octet_length(result::text)"
            " from public.ai_jobs where id = %s",
            (job_id[0],),
        ).fetchone()

    assert stored is not None
    assert stored[0] == result
    assert stored[1]  # stored compressed
