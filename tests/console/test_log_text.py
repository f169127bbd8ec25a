"""Every log line the database writes is shown in the visitor's language by the console.

The rows are real: the SQL functions write them on real Postgres (created, claimed, each of
the pipeline's steps in either language, completed, cancelled with and without a reason, a
retryable and a final failure, the reaper's redispatch and its give-up). Node imports the
console's ``i18n.js`` as it is and words each row in Korean and in English; a row it does not
know keeps its own text, and that is checked too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from typing import Any

import pytest

from shared.ai.lang import STEP_MESSAGES, Language
from tests.support import REPO_ROOT as REPO
from tests.support import Db

MODULE = REPO / "console" / "src" / "i18n.js"
SCRIPT = """
const m = await import(process.argv[1]);
const rows = JSON.parse(process.argv[2]);
console.log(JSON.stringify(rows.map((row) => ({
  ko: m.logText(row, 'ko'), en: m.logText(row, 'en'), message: row.message,
}))));
"""
HANGUL = range(0xAC00, 0xD7A4)


def _worded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    run = subprocess.run(
        ["node", "--input-type=module", "-e", SCRIPT, str(MODULE), json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


def _run_steps(db: Db, language: Language) -> None:
    job = db.processing_job()
    for percent in sorted(STEP_MESSAGES):
        step = STEP_MESSAGES[percent][language]
        assert db.one(
            "report_progress",
            job_id=job["id"],
            lease_token=job["lease_token"],
            progress=percent,
            step=step,
        )
    db.one("complete_job", job_id=job["id"], lease_token=job["lease_token"], result={})


def _fail(db: Db, job: dict[str, Any], error: str, code: str, *, retryable: bool = False) -> None:
    db.one(
        "fail_job",
        job_id=job["id"],
        lease_token=job["lease_token"],
        error=error,
        error_code=code,
        retryable=retryable,
    )


def _every_kind_of_row(db: Db) -> list[dict[str, Any]]:
    _run_steps(db, "ko")
    _run_steps(db, "en")
    db.one("cancel_job", job_id=db.new_job()["id"])
    db.one("cancel_job", job_id=db.processing_job()["id"], reason="asked twice by mistake")
    failing = db.processing_job()
    _fail(db, failing, "model answered 503", "model_unavailable", retryable=True)
    _fail(db, db.one("claim_job", job_id=failing["id"]), "ran out of time", "deadline_exceeded")
    db.processing_job(lease_seconds=0)  # its worker died: redispatched
    exhausted = db.new_job(max_attempts=1)
    db.one("claim_job", job_id=exhausted["id"], lease_seconds=0)  # and no attempts left
    db.rows("reap_jobs_v2")
    found = db.execute("select to_jsonb(l) from public.ai_job_logs l order by l.id")
    return [row[0] for row in found]


@pytest.fixture
def db(db_uri: str) -> Any:
    with Db(db_uri) as connected:
        yield connected


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by make console-deps")
def test_every_line_the_database_writes_is_worded_in_either_language(db: Db) -> None:
    rows = _every_kind_of_row(db)

    worded = _worded(rows)

    keys = [w["ko"]["key"] for w in worded]
    assert None not in keys, [w["message"] for w in worded if w["ko"]["key"] is None]
    assert {w["ko"]["key"] for w in worded} == {
        *(f"step-{p}" for p in STEP_MESSAGES),
        "created",
        "claimed",
        "finished",
        "cancelledByClient",
        "cancelled",
        "retrying",
        "failed",
        "redispatch",
        "lost",
    }
    for w in worded:
        assert w["ko"]["key"] == w["en"]["key"]
        assert any(ord(c) in HANGUL for c in w["ko"]["text"]), w
        assert not any(ord(c) in HANGUL for c in w["en"]["text"]) or w["message"] in w["en"]["text"]
    # the pipeline's steps read the same whichever language the question was in
    steps = [w for w in worded if w["ko"]["key"].startswith("step-")]
    assert [w["ko"]["text"] for w in steps[:5]] == [w["ko"]["text"] for w in steps[5:]]
    assert [w["en"]["text"] for w in steps[5:]] == [STEP_MESSAGES[p]["en"] for p in STEP_MESSAGES]
    # what only the row says (codes, counts, a visitor's reason) is carried over
    texts = " ".join(w["ko"]["text"] for w in worded)
    for kept in ("model_unavailable", "deadline_exceeded", "asked twice by mistake", "1번째"):
        assert kept in texts


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by make console-deps")
def test_a_line_the_console_does_not_know_keeps_its_own_text() -> None:
    row = {
        "id": 1,
        "job_id": str(uuid.uuid4()),
        "level": "info",
        "progress": 50,
        "step": "model_answer",
        "message": "the model answered in 2.1 s",
        "data": None,
    }

    [worded] = _worded([row])

    assert worded["ko"] == worded["en"] == {"key": None, "text": "the model answered in 2.1 s"}
