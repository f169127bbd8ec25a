"""The processor's answer to Cloud Tasks, on an in-memory store and queue (tests/unit/memory.py).

2xx deletes the task: on success, on a duplicate or cancelled delivery, on a permanent failure
and on a retryable one, whose retry is the job's *next* named task. 503 (slowing the whole
queue) only when the database itself is gone. The AI pipeline is the real one, fed a fleet
source that works, refuses (a closed port: retryable) or does not exist (permanent).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.local.host import free_port
from shared import errors
from shared.ai import pipeline
from shared.ai.lang import step_message
from shared.ai.results import AIResult, Narrative, parse_result
from shared.jobs import Job, JobStatus
from shared.settings import AISettings, Settings
from shared.tasks import task_id
from shared.worker import Delivery, Processor, StepWriter
from tests.support import minimal_settings
from tests.unit.memory import MemoryQueue, MemoryStore


def task(job_id: uuid.UUID, dispatch: int = 1) -> Delivery:
    """A delivery of the job's task ``dispatch``, named as shared.tasks names it."""
    return Delivery(task_name=task_id(job_id, dispatch), retry_count=0, execution_count=1)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/fleet.json"  # nothing listens there now


def settings(fleet_source: str = "synthetic") -> Settings:
    return minimal_settings(ai=AISettings(writer="local", fleet_source=fleet_source))


def arrange(
    fleet_source: str = "synthetic", *, max_attempts: int = 3, down_after: int | None = None
) -> tuple[Processor, MemoryStore, MemoryQueue, Job]:
    store, queue = MemoryStore(down_after=down_after), MemoryQueue()
    job = store.create_job(
        user_id="u1", job_type="report", query="서버 분석 리포트", max_attempts=max_attempts
    ).job
    store.calls = 0
    # Steps wait an hour for the next write: every write here is one the pipeline makes, none
    # the background thread's (its own tests below give it a short wait).
    processor = Processor(store, settings(fleet_source), queue, step_flush_s=3600)  # type: ignore[arg-type]
    return processor, store, queue, job


def claimed(store: MemoryStore, job: Job) -> uuid.UUID:
    token = store.claim_delivery(job.id, job.dispatch_count, 60).job
    assert token is not None and token.lease_token is not None
    return token.lease_token


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for the background writer (bounded; a failure means it never happened)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_job_that_completes_answers_2xx() -> None:
    processor, store, queue, job = arrange()

    answer = processor.process(job.id, task(job.id))

    assert answer == ("completed", 200)
    done = store.jobs[job.id]
    assert (done.status, done.progress, done.lease_token) == (JobStatus.COMPLETED, 100, None)
    assert done.result and done.result["type"] == "report"
    assert queue.tasks == {}


def test_the_completion_stores_the_result_serialized_once_and_logs_the_ai_works_cpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    processor, store, _, job = arrange()

    processor.process(job.id, task(job.id))

    stored = store.jobs[job.id].result
    assert stored == parse_result(stored).model_dump(mode="json", by_alias=True)
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (completed,) = [entry for entry in logged if entry["message"] == "job completed"]
    assert completed["jobId"] == str(job.id)
    assert completed["aiCpuMs"] > 0, "the pipeline's own CPU, measured in its thread"


def test_a_duplicate_delivery_finds_nothing_to_do() -> None:
    processor, _, _, job = arrange()
    processor.process(job.id, task(job.id))

    other = uuid.uuid4()
    assert processor.process(job.id, task(job.id)) == ("nothing_to_do", 200)
    assert processor.process(other, task(other)) == ("nothing_to_do", 200)


def test_a_cancelled_job_is_not_run() -> None:
    processor, store, _, job = arrange()
    store.cancel_job(job.id)

    assert processor.process(job.id, task(job.id)) == ("nothing_to_do", 200)
    assert store.jobs[job.id].attempts == 0


def test_a_retryable_failure_schedules_the_jobs_next_task_and_answers_2xx() -> None:
    processor, store, queue, job = arrange(closed_port_url())

    answer = processor.process(job.id, task(job.id))

    assert answer == ("retry_scheduled", 200)  # never 503: that would slow every user's jobs
    queued = store.jobs[job.id]
    assert (queued.status, queued.attempts, queued.dispatch_count) == (JobStatus.QUEUED, 1, 2)
    assert queued.error_code == "dependency_unavailable"
    assert queue.tasks == {(job.id, 2): processor.settings.retry_min_backoff_s}


def test_the_last_attempt_fails_for_good_and_answers_2xx() -> None:
    processor, store, queue, job = arrange(closed_port_url(), max_attempts=1)

    assert processor.process(job.id, task(job.id)) == ("failed", 200)
    assert store.jobs[job.id].status == JobStatus.FAILED
    assert queue.tasks == {}


def test_a_permanent_error_fails_the_job_at_once(tmp_path: Path) -> None:
    processor, store, queue, job = arrange(str(tmp_path / "no-such-fleet.json"))

    assert processor.process(job.id, task(job.id)) == ("failed", 200)
    failed = store.jobs[job.id]
    assert (failed.status, failed.attempts, failed.error_code) == (
        JobStatus.FAILED,
        1,
        "config_error",
    )
    assert queue.tasks == {}


def test_the_database_gone_mid_run_answers_503() -> None:
    processor, store, queue, job = arrange(down_after=1)  # the claim, then nothing

    assert processor.process(job.id, task(job.id)) == ("retry", 503)
    assert store.jobs[job.id].status == JobStatus.PROCESSING  # the lease expires; reaper
    assert queue.tasks == {}


def test_with_the_queue_down_the_retry_is_left_to_the_reaper() -> None:
    processor, store, queue, job = arrange(closed_port_url())
    queue.down = True

    assert processor.process(job.id, task(job.id)) == ("retry_scheduled", 200)
    released = store.jobs[job.id]
    assert (released.status, released.dispatched_at) == (JobStatus.QUEUED, None)


def test_a_fast_job_takes_two_store_calls_and_logs_every_step_in_order() -> None:
    processor, store, _, job = arrange()

    assert processor.process(job.id, task(job.id)) == ("completed", 200)

    assert store.calls == 2, "the claim, then the completion carrying the five steps"
    steps = [step_message(percent, "ko") for percent in (0, 20, 50, 80, 100)]
    assert [step for job_id, step in store.logs if job_id == job.id] == [
        "claimed",
        *steps,
        "completed",
    ]


def test_an_old_task_delivered_late_is_dropped_without_claiming_the_job() -> None:
    processor, store, queue, job = arrange(closed_port_url())
    processor.process(job.id, task(job.id, 1))  # retryable failure: the retry is task 2
    assert list(queue.tasks) == [(job.id, 2)]
    before = store.jobs[job.id]

    assert processor.process(job.id, task(job.id, 1)) == ("stale_dispatch", 200)
    assert store.jobs[job.id] == before, "not claimed ahead of the retry's time"


def test_a_delivery_that_names_no_task_of_the_job_is_dropped() -> None:
    processor, store, _, job = arrange()
    anonymous = Delivery(task_name=None, retry_count=0, execution_count=1)

    assert processor.process(job.id, anonymous) == ("stale_dispatch", 200)
    assert processor.process(job.id, task(uuid.uuid4())) == ("stale_dispatch", 200)
    assert store.jobs[job.id].status == JobStatus.QUEUED


def test_a_step_before_slow_work_is_written_while_the_work_runs() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)

    with StepWriter(store, job.id, token, 60, flush_after_s=0.01) as writer:  # type: ignore[arg-type]
        assert writer.step(50, "analysis")
        until(lambda: store.jobs[job.id].progress == 50, "the step was never written")
        assert writer.stop() == [], "nothing is left for the completion to carry"
    assert store.jobs[job.id].current_step == "analysis"


def test_a_job_that_ends_before_a_write_could_be_due_starts_no_thread() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    store.calls = 0

    with StepWriter(store, job.id, token, 60, flush_after_s=0.05) as writer:  # type: ignore[arg-type]
        writer.step(0, "start")
        writer.step(100, "done")
        unwritten = writer.stop()
    time.sleep(0.15)  # past the time its thread would have been started

    assert unwritten == [(0, "start"), (100, "done")], "they ride with the completion"
    assert writer._thread is None, "no thread was started for it"
    assert store.calls == 0, "nothing was written in the background"


def test_a_writer_still_running_when_a_write_could_be_due_gets_its_thread() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)

    # 0.5 s: at 50 ms a loaded machine could reach the first assert after the thread started
    with StepWriter(store, job.id, token, 60, flush_after_s=0.5) as writer:  # type: ignore[arg-type]
        assert writer._thread is None, "not before a write could be due"
        writer.step(20, "data")
        until(lambda: store.jobs[job.id].progress == 20, "the step was never written")
        assert writer._thread is not None


def test_a_writer_whose_thread_cannot_start_writes_each_step_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    start = threading.Thread.start

    def refuse_step_writers(thread: threading.Thread) -> None:
        if thread.name == "step-writer":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_step_writers)
    with StepWriter(store, job.id, token, 60, flush_after_s=0.01) as writer:  # type: ignore[arg-type]
        writer.step(10, "data")
        until(lambda: writer._doubt, "the writer never learnt its thread could not start")
        writer.step(40, "analysis")  # written at once, by the pipeline's own thread
        progress_while_running = store.jobs[job.id].progress
        unwritten = writer.stop()  # nothing to join: no error

    assert writer._thread is None
    assert progress_while_running == 40
    assert unwritten == []


def test_a_forked_child_starts_its_own_writer_threads() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    with StepWriter(store, job.id, token, 60, flush_after_s=0.01) as writer:  # type: ignore[arg-type]
        writer.step(10, "parent")  # the process's starter thread now runs
        until(lambda: store.jobs[job.id].progress == 10, "the parent's step was never written")

    pid = os.fork()
    if pid == 0:  # the child: its step must be written by a thread it started itself
        code = 1
        try:
            with StepWriter(store, job.id, token, 60, flush_after_s=0.01) as writer:  # type: ignore[arg-type]
                writer.step(30, "child")
                until(lambda: store.jobs[job.id].progress == 30, "the child's step")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0


def test_a_cancel_seen_by_a_background_write_stops_the_next_step() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    store.cancel_job(job.id)

    with StepWriter(store, job.id, token, 60, flush_after_s=0.01) as writer:  # type: ignore[arg-type]
        until(lambda: not writer.step(20, "data"), "the cancel never reached the pipeline")


def test_the_lease_is_renewed_while_no_step_is_written() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    store.jobs[job.id] = store.jobs[job.id].model_copy(update={"lease_expires_at": None})

    with StepWriter(store, job.id, token, 1):  # type: ignore[arg-type]
        until(lambda: store.jobs[job.id].lease_expires_at is not None, "never renewed")


def test_a_lease_taken_over_makes_the_next_step_raise() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    store.jobs[job.id] = store.jobs[job.id].model_copy(update={"lease_token": uuid.uuid4()})

    with StepWriter(store, job.id, token, 1) as writer, pytest.raises(errors.LeaseLost):  # type: ignore[arg-type]
        until(lambda: not writer.step(20, "data"), "the lease loss never reached the pipeline")


def test_a_cancel_is_seen_before_the_model_is_called_not_a_step_later() -> None:
    store = MemoryStore()
    job = store.create_job(user_id="u1", job_type="report", query="q", max_attempts=3).job
    token = claimed(store, job)
    store.cancel_job(job.id)

    # flush_after_s far away: only the write before the model can learn of the cancel
    with StepWriter(store, job.id, token, 60, flush_after_s=60) as writer:  # type: ignore[arg-type]
        assert writer.step(50, "analysis"), "a waiting step knows nothing yet"
        assert not writer.flush()


class _NeverCalled:
    """A model writer that must not be reached."""

    name = "gemini"

    def __init__(self) -> None:
        self.calls = 0

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative:
        self.calls += 1
        raise AssertionError("the model was called for a cancelled job")


def test_the_pipeline_asks_before_the_model_and_a_cancel_there_spends_no_call() -> None:
    model = _NeverCalled()

    with pytest.raises(errors.JobCancelled):
        pipeline.run(
            "서버 분석 리포트",
            None,
            lambda percent, message: True,
            settings=AISettings(writer="local"),
            writer=model,
            before_model=lambda: False,
        )

    assert model.calls == 0


def test_steps_a_refused_completion_carried_are_written_before_the_failure() -> None:
    processor, store, _, job = arrange()
    store.refuse_completion = errors.PayloadTooLarge("the result is too large")

    assert processor.process(job.id, task(job.id)) == ("failed", 200)

    steps = [step_message(percent, "ko") for percent in (0, 20, 50, 80, 100)]
    assert [step for job_id, step in store.logs if job_id == job.id] == ["claimed", *steps]
    assert store.jobs[job.id].status == JobStatus.FAILED
