"""Many requests at once in one instance, as ``--concurrency`` > 1 sends them (deploy.sh).

functions_framework's gunicorn serves a gen2 instance's requests on a pool of threads, so the
process-wide objects are shared between them: the settings, the store with its Supabase
client and pooled httpx client, and the queue with its gRPC channel. Here one process loads
the create, get and cancel functions as Cloud Functions does and drives each from 16 threads
at once against the real gateway and Cloud Tasks emulator; nothing may be lost, duplicated,
mixed up between requests, or created twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import functions_framework
import pytest
from google.cloud import tasks_v2

import shared.store
import shared.tasks
from infra.local.gateway import GatewayHandle
from infra.local.tasks_emulator import EmulatorHandle, start_emulator
from shared.functions import ENTRY_POINTS as FUNCTION_TARGETS
from shared.settings import get_settings
from shared.tasks import emulator_client
from tests.support import REPO_ROOT, SEED_QUERY

FUNCTIONS = REPO_ROOT / "functions"
QUEUE = "projects/p/locations/asia-northeast1/queues/ai-jobs"
THREADS = 16
PER_THREAD = 4


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    with start_emulator("127.0.0.1", 0, queues=[QUEUE]) as handle:
        yield handle


@pytest.fixture
def tasks(emulator: EmulatorHandle) -> Iterator[Any]:
    client = emulator_client(emulator.address)
    client.pause_queue(name=QUEUE)  # keep every task pending, to count them
    yield client
    client.transport.close()


@pytest.fixture
def app(
    gateway: GatewayHandle, service_key: str, emulator: EmulatorHandle
) -> Iterator[Callable[[str], flask.Flask]]:
    os.environ.update(
        {
            "SUPABASE_URL": gateway.url,
            "SUPABASE_SERVICE_ROLE_KEY": service_key,
            "CLOUD_TASKS_EMULATOR_HOST": emulator.address,
            "GCP_PROJECT": "p",
            "TASKS_LOCATION": "asia-northeast1",
            "PROCESSOR_URL": "http://127.0.0.1:9/ai-jobs-process",
            "AI_WRITER": "local",
            "MAX_JOBS_PER_MINUTE": "10000",
            "MAX_ACTIVE_JOBS": "10000",
        }
    )
    _reset()

    def load(name: str) -> flask.Flask:
        target = FUNCTION_TARGETS[name]
        return functions_framework.create_app(target, str(FUNCTIONS / name / "main.py"))  # type: ignore[no-any-return,no-untyped-call]

    yield load
    _reset()


def _reset() -> None:
    for cached in (get_settings, shared.store.get_store, shared.tasks.get_queue):
        cached.cache_clear()


def _burst(call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` for THREADS * PER_THREAD values of i, THREADS at a time, all released
    together so the first calls race to create the lazy clients."""
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> list[Any]:
        start.wait()
        return [call(thread * PER_THREAD + k) for k in range(PER_THREAD)]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return [result for batch in pool.map(worker, range(THREADS)) for result in batch]


def test_concurrent_creates_each_write_one_job_and_one_task(
    app: Callable[[str], flask.Flask], tasks: Any
) -> None:
    create = app("ai-jobs-create")
    responses = _burst(
        lambda i: create.test_client().post(
            "/",
            json={"query": SEED_QUERY, "metadata": {"i": i}},
            headers={"X-User-Id": f"u{i % 3}"},
        )
    )
    assert [r.status_code for r in responses] == [202] * (THREADS * PER_THREAD)
    job_ids = {r.get_json()["jobId"] for r in responses}
    assert len(job_ids) == THREADS * PER_THREAD
    names = [
        task.name for task in tasks.list_tasks(request=tasks_v2.ListTasksRequest(parent=QUEUE))
    ]
    assert sorted(name.rsplit("/tasks/job-", 1)[1][:36] for name in names) == sorted(job_ids)


def test_concurrent_reads_and_cancels_each_see_their_own_job(
    app: Callable[[str], flask.Flask], tasks: Any
) -> None:
    create, get = app("ai-jobs-create").test_client(), app("ai-jobs-get")
    owners = {}
    for i in range(THREADS):
        response = create.post("/", json={"query": SEED_QUERY}, headers={"X-User-Id": f"user-{i}"})
        owners[response.get_json()["jobId"]] = f"user-{i}"
    jobs = sorted(owners)

    def read(i: int) -> tuple[str, int, str]:
        job_id = jobs[i % len(jobs)]
        response = get.test_client().get(
            f"/{job_id}?logs=true", headers={"X-User-Id": owners[job_id]}
        )
        return job_id, response.status_code, response.get_json()["jobId"]

    assert all(status == 200 and asked == seen for asked, status, seen in _burst(read))
    cancel = app("ai-jobs-cancel")
    cancelled = _burst(
        lambda i: (
            cancel.test_client()
            .post(
                "/",
                json={"jobId": jobs[i % len(jobs)]},
                headers={"X-User-Id": owners[jobs[i % len(jobs)]]},
            )
            .status_code
        )
    )
    # each job is cancelled once; the other calls on it find it final (409), none fails
    assert sorted(set(cancelled)) == [200, 409]
    assert cancelled.count(200) == len(jobs)
    assert list(tasks.list_tasks(request=tasks_v2.ListTasksRequest(parent=QUEUE))) == []
