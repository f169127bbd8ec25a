"""shared.tasks.TaskQueue against the emulator: the production client's create/lookup/delete
and how it behaves while Cloud Tasks is unreachable."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infra.local.stack import free_port
from infra.local.tasks_emulator import OFF, EmulatorHandle, QueueConfig, start_emulator
from shared import errors
from shared.settings import Settings
from shared.tasks import TaskQueue
from tests.emulator.target import TEST_MIN_DEADLINE_S, Reply, Target
from tests.support import wait_until

PROJECT, LOCATION, QUEUE = "test-project", "asia-northeast1", "ai-jobs"
QUEUE_PATH = f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"


def _settings(host: str, target_url: str, queue: str = QUEUE) -> Settings:
    return Settings(
        supabase_url="http://127.0.0.1:1",
        supabase_service_key="unused",
        project_id=PROJECT,
        tasks_location=LOCATION,
        tasks_queue=queue,
        tasks_emulator_host=host,
        processor_url=f"{target_url}/ai-jobs-process",
        processor_secret="s3cret",
        # the shortest pair the settings accept (the job's deadline inside the margin)
        dispatch_deadline_s=31,
        job_deadline_s=1.0,
    )


def _emulator(port: int) -> EmulatorHandle:
    return start_emulator(
        port=port,
        queues=[QueueConfig(QUEUE_PATH)],
        min_dispatch_deadline_s=TEST_MIN_DEADLINE_S,
        throttle=OFF,
    )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def queue(port: int, target: Target) -> Iterator[TaskQueue]:
    with _emulator(port):
        yield TaskQueue(_settings(f"127.0.0.1:{port}", target.url))


def test_thirty_concurrent_enqueues_while_cloud_tasks_is_down_all_say_queue_unavailable(
    port: int, target: Target
) -> None:
    queue = TaskQueue(_settings(f"127.0.0.1:{port}", target.url))

    def enqueue(_: int) -> str:
        try:
            queue.enqueue(uuid.uuid4(), 1, budget_s=0.5)
        except errors.QueueUnavailable as exc:
            return exc.code
        return "enqueued"

    with ThreadPoolExecutor(max_workers=30) as pool:
        outcomes = list(pool.map(enqueue, range(30)))

    # Not one ValueError('Cannot invoke RPC on closed channel!') from a channel closed under it.
    assert outcomes == ["queue_unavailable"] * 30
    with _emulator(port):
        assert queue.enqueue(uuid.uuid4(), 1, budget_s=5.0) is True, "a fresh channel"
        target.wait_for(1)


def test_a_queue_that_does_not_exist_is_logged_as_an_error_an_operator_must_fix(
    port: int, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = TaskQueue(_settings(f"127.0.0.1:{port}", target.url, queue="no-such-queue"))
    with _emulator(port), pytest.raises(errors.QueueUnavailable) as caught:
        # NotFound comes back at once; the budget only has to outlast a loaded machine
        missing.enqueue(uuid.uuid4(), 1, budget_s=10.0)

    assert caught.value.details == {"upstream": "NotFound", "refused": True}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [line["severity"] for line in lines if line.get("upstream") == "NotFound"] == ["ERROR"]


def test_already_exists_counts_only_while_the_task_is_pending(
    queue: TaskQueue, target: Target
) -> None:
    # Held until released: with a 0.3 s delay a slow second enqueue found the task already run.
    target.behaviour = lambda received, index: Reply(200, delay_s=60)
    job_id = uuid.uuid4()

    assert queue.enqueue(job_id, 1) is True
    assert queue.enqueue(job_id, 1) is True, "a retry after a lost reply: still pending"
    target.wait_for(1)
    target.release.set()
    wait_until(lambda: not queue.exists(job_id, 1), "the task to run and go")

    assert queue.enqueue(job_id, 1) is False, "a spent name will not run again"
    received = target.wait_for(1)[0]
    assert received.headers["x-cloudtasks-taskname"] == f"job-{job_id}-d1"
    assert received.headers["x-ai-jobs-secret"] == "s3cret"


def test_a_delayed_enqueue_is_scheduled_after_the_delay(queue: TaskQueue, target: Target) -> None:
    job_id = uuid.uuid4()
    before = time.time()
    assert queue.enqueue(job_id, 2, delay_s=120) is True
    task = queue._call("get_task", name=queue.task_path(job_id, 2))
    assert task.schedule_time.timestamp() >= before + 120
    assert target.received == []


def test_delete_removes_every_pending_task_of_the_job(queue: TaskQueue, target: Target) -> None:
    job_id, other = uuid.uuid4(), uuid.uuid4()
    for dispatch in (1, 2, 3):
        queue.enqueue(job_id, dispatch, delay_s=60)
    queue.enqueue(other, 1, delay_s=60)

    assert queue.delete(job_id, 3) == 3
    assert not any(queue.exists(job_id, dispatch) for dispatch in (1, 2, 3))
    assert queue.exists(other, 1), "another job's task stays"


def _refusals_of(queue: TaskQueue) -> list[Exception]:
    """The errors of the queue's calls to Cloud Tasks (each attempt is one call), as they come."""
    refused: list[Exception] = []
    call = queue._call

    def counted(method: str, **kwargs: Any) -> Any:
        try:
            return call(method, **kwargs)
        except Exception as exc:
            refused.append(exc)
            raise

    queue._call = counted  # type: ignore[method-assign]
    return refused


def test_an_enqueue_retries_while_cloud_tasks_is_unavailable_and_succeeds_once_it_is_back(
    port: int, target: Target
) -> None:
    queue = TaskQueue(_settings(f"127.0.0.1:{port}", target.url))
    refused = _refusals_of(queue)
    handles: list[EmulatorHandle] = []

    # the emulator comes up only once an attempt was refused (not while the first one is
    # still importing and connecting: it would then simply succeed)
    def start_later() -> None:
        wait_until(lambda: bool(refused), "a refused attempt")
        time.sleep(0.2)
        handles.append(_emulator(port))

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        # a budget long enough for a loaded machine: the emulator is up well inside it
        assert queue.enqueue(uuid.uuid4(), 1, budget_s=20.0) is True
    finally:
        starter.join()
        for handle in handles:
            handle.stop()
    assert refused, "refused at first, then retried"
    target.wait_for(1)


def test_an_enqueue_that_stays_unavailable_gives_up_with_api_cores_timeout_error(
    port: int, target: Target
) -> None:
    queue = TaskQueue(_settings(f"127.0.0.1:{port}", target.url))
    refused = _refusals_of(queue)
    with pytest.raises(errors.QueueUnavailable) as caught:
        queue.enqueue(uuid.uuid4(), 1, budget_s=0.5)

    # as google-api-core's Retry ends it: RetryError, UNAVAILABLE its cause; not a refusal
    assert caught.value.details == {"upstream": "RetryError", "refused": False}
    assert len(refused) > 1, "UNAVAILABLE is retried within the budget"
    assert target.received == []
