"""The idempotency key's uniqueness as a partial unique index (migration 20261128000210): the
same rule as the table constraint it replaced, and plans that no longer take it for a
``user_id = ..`` query on a table without statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import Db, SqlError

INSERT = (
    "insert into public.ai_jobs (user_id, type, query, idempotency_key, request_hash)"
    " values (%s, 'report', 'q', %s, %s) returning id"
)


def test_a_key_is_unique_per_user_and_rows_without_one_are_not_constrained(db: Db) -> None:
    db.execute(INSERT, ("alice", "k1", "h1"))
    db.execute(INSERT, ("bob", "k1", "h1"))  # another user's key
    db.execute(INSERT, ("alice", None, None))
    db.execute(INSERT, ("alice", None, None))

    with pytest.raises(SqlError) as err:
        db.execute(INSERT, ("alice", "k1", "h2"))

    assert err.value.sqlstate == "23505"
    assert "ai_jobs_idempotency_key_unique" in err.value.message


def _plan(db: Db, query: str) -> dict[str, Any]:
    (row,) = db.execute(f"explain (format json) {query}")
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(plan[0]["Plan"])


def _nodes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    below = [node for child in plan.get("Plans", []) for node in _nodes(child)]
    return [(plan["Node Type"], plan.get("Index Name")), *below]


def test_a_page_of_a_users_jobs_is_read_in_order_before_the_table_has_statistics(
    db: Db,
) -> None:
    for _ in range(30):
        db.new_job(user="carol", max_per_minute=100, max_active=100)

    page = _nodes(
        _plan(
            db,
            "select * from public.ai_jobs j where j.user_id = 'carol'"
            " order by j.created_at desc, j.id desc limit 21",
        )
    )
    lookup = _nodes(
        _plan(
            db,
            "select * from public.ai_jobs j where j.user_id = 'carol' and j.idempotency_key = 'k'",
        )
    )

    assert ("Sort", None) not in page
    assert ("Index Scan", "ai_jobs_user_created_idx") in page
    assert ("Index Scan", "ai_jobs_idempotency_key_unique") in lookup
