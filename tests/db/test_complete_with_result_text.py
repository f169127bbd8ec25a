"""Migration 20261128000100 on real Postgres: complete_job_v3 takes the result as JSON text and
stores what complete_job_v2 stored for the same result, with v2's fencing and step logging."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from shared.ai import pipeline
from shared.jobs import JobType
from shared.settings import AISettings
from tests.support import Db, SqlError

LEASE = 60


def _claimed(db: Db) -> tuple[str, str]:
    job = db.new_job()
    claim = db.one("claim_job_v3", job_id=job["id"], dispatch=1, lease_seconds=LEASE)
    return str(job["id"]), str(claim["job"]["lease_token"])


def _steps(*pairs: tuple[int, str]) -> Jsonb:
    return Jsonb([{"progress": progress, "step": step} for progress, step in pairs])


def _log(db: Db, job_id: str) -> list[tuple[int | None, str]]:
    rows = db.execute(
        "select progress, step from public.ai_job_logs where job_id = %s order by id", (job_id,)
    )
    return [(row[0], row[1]) for row in rows]


def _complete(db: Db, job_id: str, token: str, text: str, steps: Jsonb | None = None) -> Any:
    return db.one(
        "complete_job_v3",
        job_id=job_id,
        lease_token=token,
        result_json=text,
        steps=steps if steps is not None else _steps(),
    )


def test_a_report_stored_from_its_text_equals_the_one_stored_from_its_dicts(db: Db) -> None:
    report = pipeline.run(
        "모든 서버 분석하고 리포트 만들어줘",
        JobType.REPORT,
        lambda _percent, _step: True,
        settings=AISettings.from_env({"AI_WRITER": "local"}),
    )
    as_dicts = report.model_dump(mode="json", by_alias=True)
    old_id, old_token = _claimed(db)
    new_id, new_token = _claimed(db)

    db.one("complete_job_v2", job_id=old_id, lease_token=old_token, result=as_dicts, steps=_steps())
    _complete(db, new_id, new_token, report.model_dump_json(by_alias=True))

    rows = db.execute(
        "select a.result = b.result from public.ai_jobs a, public.ai_jobs b"
        " where a.id = %s and b.id = %s",
        (old_id, new_id),
    )
    assert rows[0][0] is True, "the same jsonb, field for field"
    assert db.job(new_id)["result"] == as_dicts


def test_completion_logs_the_unwritten_steps_first_and_does_not_echo_the_result(db: Db) -> None:
    job_id, token = _claimed(db)

    done = _complete(
        db, job_id, token, '{"markdown": "# 보고서"}', _steps((80, "formatting"), (100, "done"))
    )

    assert (done["status"], done["progress"], done["lease_token"]) == ("completed", 100, None)
    assert done["result"] is None, "the result the caller sent is not sent back"
    assert db.job(job_id)["result"] == {"markdown": "# 보고서"}
    assert _log(db, job_id) == [
        (0, "queued"),
        (0, "claimed"),
        (80, "formatting"),
        (100, "done"),
        (100, "completed"),
    ]


def test_a_result_that_is_not_json_is_refused_and_nothing_is_written(db: Db) -> None:
    job_id, token = _claimed(db)
    before = db.job(job_id)
    logged = db.log_count(job_id)

    with pytest.raises(SqlError) as err:
        _complete(db, job_id, token, '{"markdown": ', _steps((100, "done")))

    assert err.value.sqlstate == "22P02"
    assert db.job(job_id) == before
    assert db.log_count(job_id) == logged


def test_only_the_lease_holder_completes_and_a_cancelled_job_stays_cancelled(db: Db) -> None:
    job_id, token = _claimed(db)
    with pytest.raises(SqlError) as stranger:
        _complete(db, job_id, str(uuid.uuid4()), "{}")
    assert (stranger.value.sqlstate, stranger.value.message) == ("PT409", "lease_lost")

    db.one("cancel_job", job_id=job_id)
    with pytest.raises(SqlError) as late:
        _complete(db, job_id, token, "{}")
    assert (late.value.message, late.value.detail["status"]) == ("illegal_state", "cancelled")
    assert db.job(job_id)["status"] == "cancelled"

    missing = str(uuid.uuid4())
    with pytest.raises(SqlError) as unknown:
        _complete(db, missing, missing, "{}")
    assert (unknown.value.sqlstate, unknown.value.message) == ("PT404", "job_not_found")
