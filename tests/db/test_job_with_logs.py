"""``get_job_with_logs`` in SQL: the same job and log rows as ``get_job`` and ``list_job_logs``
in one call, with the same ownership check and the same bounds on the page of logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Db, SqlError

ARGS = {"user_id": None, "after_id": 0, "limit": 100}


@pytest.fixture
def db(db_uri: str) -> Iterator[Db]:
    with Db(db_uri) as conn:
        yield conn


def _with_logs(db: Db, steps: int) -> str:
    job = db.processing_job()
    lease = {"job_id": job["id"], "lease_token": job["lease_token"]}
    for step in range(steps):
        assert db.one("report_progress", **lease, progress=step, step=f"s{step}")
    return str(job["id"])


def test_it_answers_what_get_job_and_list_job_logs_answer(db: Db) -> None:
    job_id = _with_logs(db, steps=3)
    both = db.one("get_job_with_logs", **{**ARGS, "job_id": job_id, "user_id": "u1"})
    assert both["job"] == db.one("get_job", job_id=job_id, user_id="u1")
    assert both["logs"] == db.rows("list_job_logs", job_id=job_id, user_id="u1")
    assert len(both["logs"]) == 5  # created, claimed, three steps


def test_the_page_of_logs_is_bounded_as_list_job_logs_bounds_it(db: Db) -> None:
    job_id = _with_logs(db, steps=3)
    every = db.one("get_job_with_logs", **{**ARGS, "job_id": job_id})["logs"]
    for after, limit in ((None, None), (0, 0), (every[1]["id"], 2), (every[-1]["id"], 5)):
        got = db.one("get_job_with_logs", job_id=job_id, user_id=None, after_id=after, limit=limit)
        assert got["logs"] == db.rows(
            "list_job_logs", job_id=job_id, user_id=None, after_id=after, limit=limit
        )
    assert db.one("get_job_with_logs", **{**ARGS, "job_id": job_id, "limit": 0})["logs"] == [
        every[0]
    ]


def test_another_users_job_is_job_not_found(db: Db) -> None:
    job_id = _with_logs(db, steps=1)
    with pytest.raises(SqlError) as refused:
        db.one("get_job_with_logs", **{**ARGS, "job_id": job_id, "user_id": "u2"})
    assert (refused.value.sqlstate, refused.value.message) == ("PT404", "job_not_found")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_browser_roles_cannot_call_it(db_uri: str, role: str) -> None:
    with Db(db_uri, role=role) as browser, pytest.raises(SqlError) as refused:
        browser.one(
            "get_job_with_logs", **{**ARGS, "job_id": "00000000-0000-0000-0000-000000000000"}
        )
    assert refused.value.sqlstate == "42501"
