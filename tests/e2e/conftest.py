"""End-to-end fixtures: the whole local stack, started once per module on free ports."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.local.postgres import Postgres
from infra.local.stack import LocalStack, StackConfig

FINAL = {"completed", "failed", "cancelled"}
TEST_ENV = {
    "MAX_JOBS_PER_MINUTE": "1000",
    "MAX_ACTIVE_JOBS": "1000",
    "ALLOWED_ORIGINS": "https://dashboard.example",
    "MAX_BODY_BYTES": "8192",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg: Postgres) -> Iterator[LocalStack]:
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("stack"),
        reap_interval_s=0,
        function_env=dict(TEST_ENV),
        database_uri=pg.create_database(f"stack_{uuid.uuid4().hex[:8]}"),
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_unhandled_errors(stack: LocalStack) -> Iterator[None]:
    # A handler that crashed answers 500 and Cloud Tasks would hide it by retrying: make
    # any unhandled exception in the function host fail the test that caused it.
    before = len(stack.log_text("functions"))
    yield
    assert "unhandled error" not in stack.log_text("functions")[before:]


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def wait_for(
    http: httpx.Client,
    job_id: str,
    statuses: set[str] = FINAL,
    timeout_s: float = 60,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/ai-jobs-get/{job_id}", params={"logs": "true"}, headers=headers).json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout_s}s: {job}")


def create(http: httpx.Client, query: str, **extra: Any) -> dict[str, Any]:
    response = http.post("/ai-jobs-create", json={"query": query, **extra})
    assert response.status_code == 202, response.text
    return dict(response.json())
