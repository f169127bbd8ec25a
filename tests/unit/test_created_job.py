"""What the create path reads from create_job's answer before it enqueues, and the task it sends.

The create path enqueues a new job's task before it validates the job's row (the pickup waits
for nothing the client's answer needs): the id and the dispatch number are read from the
answer at once, the rest only when the job is asked for; the task's body is written directly.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared import errors
from shared.jobs import Job
from shared.store import CreatedJob
from shared.tasks import task_body
from tests.support import job_row


def test_the_id_and_dispatch_number_are_read_without_validating_the_row() -> None:
    row = job_row(dispatch_count=7)
    del row["created_at"]  # a row the model refuses: nothing asked of it yet

    created = CreatedJob(job=row, created=True)

    assert (created.job_id, created.dispatch_count) == (uuid.UUID(row["id"]), 7)
    with pytest.raises(errors.BackendMisconfigured) as refused:
        _ = created.job
    assert refused.value.details["jobId"] == row["id"], "the log names the job that exists"


@pytest.mark.parametrize(
    "change",
    [{"id": "not-a-uuid"}, {"id": None}, {"dispatch_count": 1.5}, {"dispatch_count": "1"}],
    ids=["bad-id", "no-id", "fractional-dispatch", "text-dispatch"],
)
def test_an_answer_without_a_readable_id_and_dispatch_is_refused_before_any_enqueue(
    change: dict[str, Any],
) -> None:
    row = {**job_row(), **change}

    with pytest.raises(errors.BackendMisconfigured):
        CreatedJob(job=row, created=True)


def test_an_answer_missing_the_dispatch_number_is_refused() -> None:
    row = job_row()
    del row["dispatch_count"]

    with pytest.raises(errors.BackendMisconfigured):
        CreatedJob(job=row, created=True)


def test_the_job_asked_for_is_the_row_validated_once() -> None:
    row = job_row()

    created = CreatedJob(job=row, created=False)

    assert created.job == Job.model_validate(row)
    assert created.job is created.job
    assert not created.created


def test_a_job_given_as_a_model_gives_its_own_id_and_dispatch_number() -> None:
    job = Job.model_validate(job_row(dispatch_count=3))

    created = CreatedJob(job=job, created=True)

    assert (created.job_id, created.dispatch_count, created.job) == (job.id, 3, job)


@pytest.mark.parametrize("dispatch", [1, 9, 10, 123_456_789, 2**62])
def test_the_task_body_is_the_bytes_json_dumps_writes(dispatch: int) -> None:
    job_id = uuid.uuid4()

    body = task_body(job_id, dispatch)

    assert body == json.dumps({"jobId": str(job_id), "dispatch": dispatch}).encode()
    assert json.loads(body) == {"jobId": str(job_id), "dispatch": dispatch}
