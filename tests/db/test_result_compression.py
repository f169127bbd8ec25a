"""The job's result column uses lz4 where the server has it (migration 20261127001200), and is
stored uncompressed out of line otherwise (migration 20261129000100: pglz cost a completion
more CPU than anything else): the same migrations apply on Supabase and on a local build
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


def _lz4_supported(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute(
        "select 'lz4' = any (enumvals) from pg_settings where name = 'default_toast_compression'"
    ).fetchone()
    assert row is not None
    return bool(row[0])


def test_the_result_is_stored_uncompressed_exactly_when_the_server_lacks_lz4(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        supported = _lz4_supported(conn)
        storage = conn.execute(
            "select attstorage from pg_attribute"
            " where attrelid = 'public.ai_jobs'::regclass and attname = 'result'"
        ).fetchone()

    assert storage is not None
    # 'x' extended (compressed, then out of line: the type's default), 'e' external
    assert storage[0] == ("x" if supported else "e")


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
            "select result, pg_column_size(result), pg_column_size(result::text::jsonb)"
            " from public.ai_jobs where id = %s",
            (job_id[0],),
        ).fetchone()
        supported = _lz4_supported(conn)

    assert stored is not None
    result_read, size_stored, size_in_memory = stored
    assert result_read == result
    if supported:
        assert size_stored < size_in_memory  # compressed with lz4
    else:
        # out of line as it is: the stored size counts the data without its 4-byte header
        assert size_in_memory - 4 <= size_stored <= size_in_memory
