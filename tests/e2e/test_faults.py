"""Faults against the running local stack: Gemini errors (through the real google-genai
client and a fake Gemini endpoint), duplicate deliveries, cancel mid-run, a killed worker,
the queue or the database down. Seed TC-06 is here too."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from infra.local import fake_gemini
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack, StackConfig
from shared.tasks import SECRET_HEADER
from tests.e2e.conftest import TEST_ENV, create, wait_for

QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"


@pytest.fixture(scope="module")
def gemini() -> Iterator[fake_gemini.FakeGemini]:
    with fake_gemini.start() as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, gemini: fake_gemini.FakeGemini, pg: Postgres
) -> Iterator[LocalStack]:
    env = {
        **TEST_ENV,
        "AI_WRITER": "gemini",
        "GEMINI_API_KEY": "fake-key",
        "GEMINI_BASE_URL": gemini.base_url,
        "GEMINI_TIMEOUT_S": "20",
        "GEMINI_MAX_RETRIES": "1",
    }
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("faults"),
        reap_interval_s=0,
        function_env=env,
        database_uri=pg.create_database(f"faults_{uuid.uuid4().hex[:8]}"),
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_faults(gemini: fake_gemini.FakeGemini) -> Iterator[None]:
    yield
    while gemini.next_fault() is not None:
        pass


def _progress(http: httpx.Client, job_id: str) -> dict[str, object]:
    return dict(http.get(f"/ai-jobs-get/{job_id}").json())


def _wait_progress(http: httpx.Client, job_id: str, at_least: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = _progress(http, job_id)
        if int(str(job["progress"])) >= at_least and job["status"] == "processing":
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {at_least}%")


def _deliver(stack: LocalStack, job_id: str) -> httpx.Response:
    """A delivery exactly as Cloud Tasks makes it (headers, secret, body)."""
    return httpx.post(
        f"{stack.base_url}/ai-jobs-process",
        json={"jobId": job_id, "dispatch": 1},
        headers={
            SECRET_HEADER: stack.secret,
            "X-CloudTasks-QueueName": "ai-jobs",
            "X-CloudTasks-TaskName": f"job-{job_id}-d1",
            "X-CloudTasks-TaskRetryCount": "0",
            "X-CloudTasks-TaskExecutionCount": "0",
        },
        timeout=60,
    )


def test_completes_with_the_real_genai_client_against_the_fake(
    http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    before = gemini.calls
    job = wait_for(http, create(http, QUERY)["jobId"])
    assert job["status"] == "completed"
    assert gemini.calls == before + 1
    assert job["result"]["markdown"]


def test_gemini_429_is_retried_then_completed(
    http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    gemini.push(fake_gemini.rate_limited(0.2))
    before = gemini.calls
    job = wait_for(http, create(http, QUERY)["jobId"])
    assert job["status"] == "completed"
    assert gemini.calls == before + 2
    assert job["attempts"] == 1, "the writer's own retry absorbed the 429"


def test_retryable_failure_goes_back_to_cloud_tasks_and_the_next_attempt_completes(
    http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    gemini.push(fake_gemini.server_error(503), fake_gemini.server_error(503))
    job = wait_for(http, create(http, QUERY)["jobId"], timeout_s=60)
    assert job["status"] == "completed"
    assert job["attempts"] == 2, "attempt 1 failed retryably; Cloud Tasks delivered again"
    assert any(line["level"] == "error" for line in job["logs"])


def test_tc06_worker_error_fails_the_job_with_the_message(
    http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    gemini.push(fake_gemini.client_error(400, "API key not valid. Please pass a valid API key."))
    job = wait_for(http, create(http, QUERY)["jobId"])
    assert job["status"] == "failed"
    assert "API key not valid" in job["error"]
    assert job["errorCode"]
    assert job["attempts"] == 1, "a permanent error is not retried"
    assert job["result"] is None


def test_cancel_while_processing_stops_the_worker(
    stack: LocalStack, http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    gemini.push(fake_gemini.slow(3.0))
    job_id = create(http, QUERY)["jobId"]
    _wait_progress(http, job_id, 50)
    cancelled = http.post("/ai-jobs-cancel", json={"jobId": job_id})
    assert cancelled.status_code == 200
    time.sleep(4.0)  # the model answers; the worker's next progress write learns of the cancel
    job = wait_for(http, job_id)
    assert job["status"] == "cancelled"
    assert job["result"] is None
    assert max(line["progress"] or 0 for line in job["logs"]) == 50, "no step after the cancel"
    assert f'"jobId": "{job_id}"' in stack.log_text("functions") or job_id in stack.log_text(
        "functions"
    )
    assert "job cancelled; stopping" in stack.log_text("functions")


def test_a_task_delivered_twice_runs_the_ai_work_once(
    stack: LocalStack, http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    stack.kill("tasks-emulator")  # so the only deliveries are ours
    try:
        job_id = create(http, QUERY)["jobId"]
        before = gemini.calls
        barrier = threading.Barrier(3)

        def deliver(_: int) -> str:
            barrier.wait()
            return str(_deliver(stack, job_id).json()["outcome"])

        with ThreadPoolExecutor(max_workers=3) as pool:
            outcomes = sorted(pool.map(deliver, range(3)))
        assert outcomes == ["completed", "nothing_to_do", "nothing_to_do"]
        assert _deliver(stack, job_id).json()["outcome"] == "nothing_to_do"
        assert gemini.calls == before + 1
        job = wait_for(http, job_id)
        assert job["attempts"] == 1
        assert [line["step"] for line in job["logs"]].count("completed") == 1
    finally:
        stack.start_emulator()


@contextmanager
def _short_lease(stack: LocalStack) -> Iterator[None]:
    """The function host with a 2-second lease, restored afterwards."""
    stack.restart_host({"LEASE_SECONDS": "2"})
    try:
        yield
    finally:
        stack.restart_host()


def test_killed_processor_is_recovered_by_lease_expiry_and_the_reaper(
    stack: LocalStack, http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    with _short_lease(stack):
        gemini.push(fake_gemini.slow(6.0))
        job_id = create(http, QUERY)["jobId"]
        _wait_progress(http, job_id, 50)
        stack.kill("functions")  # the instance dies mid-job
        # Drop the task too, so only the reaper can bring the job back.
        client = stack.tasks_client()
        for task in client.list_tasks(parent=stack.queue_path):
            client.delete_task(name=task.name)
        stack.start_host({"LEASE_SECONDS": "2"})
        time.sleep(2.5)  # the dead worker's lease expires
        sweep = stack.reap()
        assert sweep.status_code == 200
        assert sweep.json()["dispatched"] >= 1
        job = wait_for(http, job_id, timeout_s=60)
        assert job["status"] == "completed"
        assert job["attempts"] == 2
        assert [line["step"] for line in job["logs"]].count("completed") == 1


def test_a_live_worker_keeps_its_lease_through_a_slow_model_call(
    stack: LocalStack, http: httpx.Client, gemini: fake_gemini.FakeGemini
) -> None:
    with _short_lease(stack):
        gemini.push(fake_gemini.slow(5.0))
        job_id = create(http, QUERY)["jobId"]
        _wait_progress(http, job_id, 50)
        time.sleep(3.0)  # longer than the lease: only the heartbeat keeps it alive
        assert stack.reap().json()["dispatched"] == 0, "a live worker is not taken over"
        job = wait_for(http, job_id)
        assert job["status"] == "completed"
        assert job["attempts"] == 1


def test_queue_down_at_create_is_processed_later_via_the_reaper(
    stack: LocalStack, http: httpx.Client
) -> None:
    stack.kill("tasks-emulator")
    try:
        response = http.post("/ai-jobs-create", json={"query": QUERY})
        assert response.status_code == 202, "the row is the truth; the task only a nudge"
        job_id = response.json()["jobId"]
        time.sleep(0.5)
        assert _progress(http, job_id)["status"] == "queued"
    finally:
        stack.start_emulator()
    assert stack.reap().json()["dispatched"] >= 1
    assert wait_for(http, job_id)["status"] == "completed"


def test_database_down_is_a_503_with_a_code_and_nothing_is_lost(
    stack: LocalStack, http: httpx.Client
) -> None:
    stack.kill("gateway")
    try:
        for response in (
            http.post("/ai-jobs-create", json={"query": QUERY}),
            http.get("/ai-jobs-list"),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["Retry-After"]
    finally:
        stack.start_gateway()
    assert wait_for(http, create(http, QUERY)["jobId"])["status"] == "completed"
