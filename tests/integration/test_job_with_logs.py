"""``JobStore.get_job_with_logs`` through the gateway with the real supabase client: one call
answers what ``get_job`` and ``list_job_logs`` answer separately, with the same ownership."""

from __future__ import annotations

import uuid

import pytest

from infra.local.gateway import GatewayHandle
from shared import errors
from shared.jobs import JobLog
from shared.store import JobStore
from tests.support import LIMITS


@pytest.fixture
def store(gateway: GatewayHandle, service_key: str) -> JobStore:
    return JobStore(gateway.url, service_key)


def _job_with_progress(store: JobStore, steps: int) -> uuid.UUID:
    job = store.create_job(
        user_id="u1", job_type="report", query="q", priority="normal", metadata={"k": [1]}, **LIMITS
    ).job
    claimed = store.claim_delivery(job.id, job.dispatch_count, lease_seconds=60).job
    assert claimed is not None and claimed.lease_token is not None
    for step in range(1, steps + 1):
        assert store.report_steps(job.id, claimed.lease_token, [(step * 10, f"step {step}")], 60)
    result = '{"markdown": "# 보고서", "nested": {"a": 1}}'
    store.complete_job(job.id, claimed.lease_token, result, steps=[])
    return job.id


def test_one_call_returns_what_get_job_and_list_job_logs_return(store: JobStore) -> None:
    job_id = _job_with_progress(store, steps=3)
    both = store.get_job_with_logs(job_id, "u1")
    assert both.job == store.get_job(job_id, "u1")
    # list_job_logs stays in SQL for instances of the previous release; no store method calls it
    rows = store.rpc(
        "list_job_logs",
        {"p_job_id": str(job_id), "p_user_id": "u1", "p_after_id": 0, "p_limit": 100},
    )
    assert both.logs == [JobLog.model_validate(row) for row in rows]
    assert [log.step for log in both.logs][2:5] == ["step 1", "step 2", "step 3"]


def test_logs_after_an_id_and_the_limit_are_honoured(store: JobStore) -> None:
    job_id = _job_with_progress(store, steps=4)
    every = store.get_job_with_logs(job_id, "u1").logs
    after = store.get_job_with_logs(job_id, "u1", after_id=every[1].id).logs
    assert after == every[2:]
    assert store.get_job_with_logs(job_id, "u1", limit=2).logs == every[:2]
    assert store.get_job_with_logs(job_id, "u1", after_id=every[-1].id).logs == []


def test_another_users_job_or_an_unknown_id_is_not_found(store: JobStore) -> None:
    job_id = _job_with_progress(store, steps=1)
    with pytest.raises(errors.JobNotFound):
        store.get_job_with_logs(job_id, "someone-else")
    with pytest.raises(errors.JobNotFound):
        store.get_job_with_logs(uuid.uuid4(), "u1")
    assert store.get_job_with_logs(job_id, None).job.id == job_id  # the service's own view
