"""``GET ai-jobs-get/<id>?logs=true`` loaded as Cloud Functions loads it, against the real
gateway: the job and its logs in one request to Supabase, ``logsAfter``, the ETag."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import flask.testing
import pytest

import shared.store
import shared.tasks
from infra.local.gateway import GatewayHandle
from infra.local.host import free_port
from shared.settings import get_settings
from shared.store import JobStore
from tests.support import LIMITS, function_app

FUNCTION = Path(__file__).resolve().parents[2] / "functions" / "ai-jobs-get" / "main.py"
OWNER = {"X-User-Id": "u1"}


def _reset() -> None:
    get_settings.cache_clear()
    shared.store.get_store.cache_clear()
    shared.tasks.get_queue.cache_clear()


@pytest.fixture
def get(gateway: GatewayHandle, service_key: str) -> Iterator[flask.testing.FlaskClient]:
    os.environ.update(
        {
            "SUPABASE_URL": gateway.url,
            "SUPABASE_SERVICE_ROLE_KEY": service_key,
            "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{free_port()}",  # the get never calls it
        }
    )
    _reset()
    yield function_app("get_job", FUNCTION).test_client()
    _reset()


@pytest.fixture
def store(gateway: GatewayHandle, service_key: str) -> JobStore:
    return JobStore(gateway.url, service_key)


@pytest.fixture
def supabase_requests() -> list[str]:
    """The paths of the HTTP requests the get function's store sends (an httpx event hook on
    its own client)."""
    seen: list[str] = []
    session = shared.store.get_store(get_settings()).client.postgrest.session
    session.event_hooks["request"].append(lambda request: seen.append(request.url.path))
    return seen


def _running_job(store: JobStore) -> tuple[uuid.UUID, uuid.UUID]:
    job = store.create_job(
        user_id="u1", job_type="report", query="q", priority="normal", **LIMITS
    ).job
    claimed = store.claim_delivery(job.id, job.dispatch_count, lease_seconds=60).job
    assert claimed is not None and claimed.lease_token is not None
    return job.id, claimed.lease_token


def test_the_job_and_its_logs_come_from_one_request_to_supabase(
    get: flask.testing.FlaskClient, store: JobStore, supabase_requests: list[str]
) -> None:
    job_id, token = _running_job(store)
    assert store.report_steps(job_id, token, [(40, "분석 중")], 60)
    answer = get.get(f"/{job_id}?logs=true", headers=OWNER)
    assert answer.status_code == 200
    assert supabase_requests == ["/rest/v1/rpc/get_job_with_logs"]
    body = answer.get_json()
    assert (body["jobId"], body["status"], body["progress"]) == (str(job_id), "processing", 40)
    expected = [
        log.model_dump(mode="json", by_alias=True, exclude={"job_id"})
        for log in store.get_job_with_logs(job_id, "u1").logs
    ]
    assert body["logs"] == expected
    assert [line["step"] for line in body["logs"]][-1] == "분석 중"
    supabase_requests.clear()
    assert "logs" not in get.get(f"/{job_id}", headers=OWNER).get_json()
    assert supabase_requests == ["/rest/v1/rpc/get_job"]


def test_logs_after_gives_only_newer_lines_and_the_etag_follows_them(
    get: flask.testing.FlaskClient, store: JobStore
) -> None:
    job_id, token = _running_job(store)
    first = get.get(f"/{job_id}?logs=true", headers=OWNER)
    last_id = first.get_json()["logs"][-1]["id"]
    unchanged = get.get(
        f"/{job_id}?logs=true", headers={**OWNER, "If-None-Match": first.headers["ETag"]}
    )
    assert unchanged.status_code == 304
    assert unchanged.headers["ETag"] == first.headers["ETag"]
    assert store.report_steps(job_id, token, [(60, "writing")], 60)
    newer = get.get(
        f"/{job_id}?logs=true&logsAfter={last_id}",
        headers={**OWNER, "If-None-Match": first.headers["ETag"]},
    )
    assert newer.status_code == 200
    assert [line["step"] for line in newer.get_json()["logs"]] == ["writing"]


@pytest.mark.parametrize("after", ["-1", "x", "1.5", str(2**62 + 1)])
def test_a_bad_logs_after_is_a_400_naming_it(get: flask.testing.FlaskClient, after: str) -> None:
    answer = get.get(f"/{uuid.uuid4()}?logs=true&logsAfter={after}", headers=OWNER)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"] == {"field": "logsAfter"}


def test_another_users_job_is_not_found_with_logs_too(
    get: flask.testing.FlaskClient, store: JobStore
) -> None:
    job_id, _ = _running_job(store)
    answer = get.get(f"/{job_id}?logs=true", headers={"X-User-Id": "u2"})
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "job_not_found"
