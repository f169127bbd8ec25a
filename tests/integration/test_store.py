"""JobStore through the gateway with the real supabase client, including error mapping."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest
from postgrest.exceptions import APIError

from infra.local.gateway import GatewayHandle, make_jwt, start_gateway
from infra.local.host import free_port
from shared import errors
from shared.jobs import JobStatus
from shared.store import (
    CLIENT_TIMEOUT_S,
    SERVER_POOL_ACQUISITION_TIMEOUT_S,
    SERVER_STATEMENT_TIMEOUT_S,
    JobStore,
    map_api_error,
)
from tests.support import JWT_SECRET, LIMITS, mint


@pytest.fixture
def store(gateway: GatewayHandle, service_key: str) -> JobStore:
    return JobStore(gateway.url, service_key)


def _create(store: JobStore, **extra: object) -> uuid.UUID:
    args: dict[str, Any] = {
        "user_id": "u1",
        "job_type": "report",
        "query": "analyse all servers",
        "priority": "normal",
        **LIMITS,
    }
    args.update(extra)
    return store.create_job(**args).job.id


def test_a_job_goes_through_its_whole_life(store: JobStore) -> None:
    created = store.create_job(
        user_id="u1", job_type="report", query="q", priority="high", metadata={"k": "v"}, **LIMITS
    )
    assert created.created
    job = created.job
    assert (created.job_id, created.dispatch_count) == (job.id, job.dispatch_count) == (job.id, 1)
    assert (job.status, job.priority, job.metadata) == (JobStatus.QUEUED, "high", {"k": "v"})
    claimed = store.claim_delivery(job.id, job.dispatch_count, lease_seconds=60).job
    assert claimed is not None
    assert claimed.lease_token is not None
    again = store.claim_delivery(job.id, job.dispatch_count, lease_seconds=60)
    assert again.job is None, "a live lease is not claimed twice"
    assert store.report_steps(job.id, claimed.lease_token, [(50, "AI 분석 중")], lease_seconds=60)
    done = store.complete_job(job.id, claimed.lease_token, '{"markdown": "# ok"}', steps=[])
    assert (done.status, done.progress) == (JobStatus.COMPLETED, 100)
    stored = store.get_job_with_logs(job.id, "u1")
    assert stored.job.result == {"markdown": "# ok"}
    assert [log.progress for log in stored.logs if log.step == "AI 분석 중"] == [50]
    assert stored.job.completed_at is not None


def test_a_completion_before_the_v3_migration_is_applied_falls_back_to_v2(
    store: JobStore, db_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Code deployed before its migration was pushed (deploy.sh --skip-migrations)."""
    job_id = _create(store)
    claimed = store.claim_delivery(job_id, 1, 60).job
    assert claimed is not None and claimed.lease_token is not None
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute("drop function public.complete_job_v3(uuid, uuid, text, jsonb)")

    done = store.complete_job(job_id, claimed.lease_token, '{"markdown": "# 완료"}', [(100, "d")])

    assert (done.status, done.progress) == (JobStatus.COMPLETED, 100)
    assert store.get_job(job_id, "u1").result == {"markdown": "# 완료"}
    with pytest.raises(errors.IllegalTransition):  # v2 fences as v3 does
        store.complete_job(job_id, claimed.lease_token, "{}", steps=[])
    # remembered: the next job's completion goes to v2 without a refused call first
    other = _create(store)
    other_claim = store.claim_delivery(other, 1, 60).job
    assert other_claim is not None and other_claim.lease_token is not None
    store.complete_job(other, other_claim.lease_token, '{"markdown": "# 2"}', steps=[])
    assert store.get_job(other, "u1").result == {"markdown": "# 2"}
    warnings = [line for line in capsys.readouterr().out.splitlines() if "v3 is missing" in line]
    assert len(warnings) == 1, warnings


def test_errors_map_to_the_projects_exceptions(store: JobStore) -> None:
    with pytest.raises(errors.JobNotFound):
        store.get_job(uuid.uuid4(), "u1")

    job_id = _create(store)
    claimed = store.claim_delivery(job_id, 1, 60).job
    assert claimed is not None and claimed.lease_token is not None
    with pytest.raises(errors.LeaseLost):
        store.complete_job(job_id, uuid.uuid4(), "{}", steps=[])
    store.cancel_job(job_id, "u1")
    with pytest.raises(errors.IllegalTransition) as illegal:
        store.cancel_job(job_id, "u1")
    assert illegal.value.details == {"status": "cancelled"}
    assert illegal.value.status == 409
    assert store.report_steps(job_id, claimed.lease_token, [(60, "x")], 60) is False

    keyed: dict[str, Any] = {"user_id": "u2", "priority": "low", "idempotency_key": "k"}
    _create(store, **keyed, query="a", request_hash="h1")
    with pytest.raises(errors.IdempotencyConflict):
        _create(store, **keyed, query="b", request_hash="h2")
    with pytest.raises(errors.RateLimited) as limited:
        for _ in range(3):
            _create(store, user_id="u3", max_per_minute=2)
    assert 1 <= limited.value.retry_after <= 60
    with pytest.raises(errors.ValidationFailed):
        store.list_jobs("u1", statuses=["queued"], limit=500)


def test_pagination_through_the_store(store: JobStore) -> None:
    ids = [_create(store) for _ in range(5)]
    first = store.list_jobs("u1", limit=3)
    assert first.has_more
    last = first.jobs[-1]
    second = store.list_jobs("u1", limit=3, before=(last.created_at, last.id))
    assert not second.has_more
    assert [job.id for job in first.jobs + second.jobs] == list(reversed(ids))


def test_wrong_api_key_is_a_misconfiguration_not_a_client_error(gateway: GatewayHandle) -> None:
    forged = make_jwt("some-other-secret-of-at-least-32-characters!!", "service_role")
    with pytest.raises(errors.BackendMisconfigured) as err:
        JobStore(gateway.url, forged).get_job(uuid.uuid4())
    assert err.value.details["upstream"] == "PGRST301"
    anon = mint("anon")
    with pytest.raises(errors.BackendMisconfigured) as denied:
        JobStore(gateway.url, anon).get_job(uuid.uuid4())
    assert denied.value.details["upstream"] == "42501", "anon may not execute our functions"


def test_a_key_the_project_url_refuses_is_a_misconfiguration(gateway_db: str) -> None:
    """At the project URL the API gateway refuses a key that is not the project's before
    PostgREST sees it: a message and no code, which is still our misconfiguration."""
    forged = make_jwt("some-other-secret-of-at-least-32-characters!!", "service_role")
    with (
        start_gateway(gateway_db, JWT_SECRET, require_api_key=True) as project_url,
        pytest.raises(errors.BackendMisconfigured) as err,
    ):
        JobStore(project_url.url, forged).get_job(uuid.uuid4())
    assert err.value.details["message"] == "Invalid API key"


def test_expired_key_is_a_misconfiguration_pgrst303(gateway: GatewayHandle) -> None:
    expired = mint("service_role", exp=int(time.time()) - 3600)

    with pytest.raises(errors.BackendMisconfigured) as err:
        JobStore(gateway.url, expired).get_job(uuid.uuid4())

    assert err.value.details["upstream"] == "PGRST303"


def test_a_key_naming_a_missing_role_is_a_misconfiguration_22023(gateway: GatewayHandle) -> None:
    stray = mint("service_role_typo")

    with pytest.raises(errors.BackendMisconfigured) as err:
        JobStore(gateway.url, stray).get_job(uuid.uuid4())

    assert err.value.details["upstream"] == "22023"


def test_other_invalid_parameter_values_stay_the_callers_error() -> None:
    error = APIError({"code": "22023", "message": "invalid value for parameter", "details": None})

    assert isinstance(map_api_error(error), errors.ValidationFailed)


def test_the_client_waits_longer_than_the_server_may_work(db_uri: str, store: JobStore) -> None:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "select rolconfig from pg_roles where rolname = 'authenticator'"
        ).fetchone()
    assert row is not None
    configured = dict(item.split("=", 1) for item in row[0])

    assert configured["statement_timeout"] == f"{SERVER_STATEMENT_TIMEOUT_S:g}s"
    assert configured["lock_timeout"] == f"{SERVER_STATEMENT_TIMEOUT_S:g}s"
    read_timeout = store.client.postgrest.session.timeout.read
    assert read_timeout == CLIENT_TIMEOUT_S
    assert read_timeout > SERVER_POOL_ACQUISITION_TIMEOUT_S + SERVER_STATEMENT_TIMEOUT_S


def test_unknown_function_is_a_misconfiguration(store: JobStore) -> None:
    with pytest.raises(errors.BackendMisconfigured) as err:
        store.rpc("no_such_function", {"p_x": 1})
    assert err.value.details["upstream"] == "PGRST202"


def test_database_down_is_dependency_unavailable(service_key: str) -> None:
    with pytest.raises(errors.DatabaseUnavailable) as err:
        JobStore(f"http://127.0.0.1:{free_port()}", service_key).get_job(uuid.uuid4())
    assert err.value.status == 503
    assert err.value.retryable
