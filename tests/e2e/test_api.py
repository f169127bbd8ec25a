"""The public API over real HTTP against the running local stack (seed TC-01 ... TC-05)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from infra.local.stack import LocalStack
from shared.tasks import SECRET_HEADER
from tests.support import SEED_QUERY, create, preflight, wait_for


def test_tc01_simple_query_is_answered_synchronously(http: httpx.Client) -> None:
    user = {"X-User-Id": f"user-{uuid.uuid4().hex[:8]}"}
    response = http.post("/ai-jobs-create", json={"query": "현재 서버 상태 알려줘"}, headers=user)
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "sync"
    assert body["complexity"] == "simple"
    assert "서버" in body["answer"]
    assert http.get("/ai-jobs-list", headers=user).json()["jobs"] == [], "no job is created"


def test_tc02_complex_query_returns_a_job_id_at_once(http: httpx.Client) -> None:
    response = http.post("/ai-jobs-create", json={"query": SEED_QUERY})
    assert response.status_code == 202
    body = response.json()
    job_id = uuid.UUID(body["jobId"])
    assert body["status"] == "queued"
    assert body["complexity"] == "complex"
    assert body["type"] == "report"
    assert body["estimatedTime"] > 0
    assert body["pollUrl"].endswith(f"/ai-jobs-get/{job_id}")
    assert response.headers["Location"] == body["pollUrl"]
    wait_for(http, str(job_id))


def test_tc03_tc04_progress_rises_while_polling_and_the_result_is_complete(
    http: httpx.Client,
) -> None:
    job_id = create(http, SEED_QUERY)["jobId"]
    job = wait_for(http, job_id)
    assert job["status"] == "completed"
    progress = [line["progress"] for line in job["logs"] if line["progress"] is not None]
    assert progress == sorted(progress), "progress never goes backwards"
    for step in (0, 20, 50, 80, 100):
        assert step in progress
    assert job["progress"] == 100
    result = job["result"]
    assert result["type"] == "report"
    assert result["markdown"].strip()
    assert result["facts"]
    assert job["completedAt"] >= job["startedAt"] >= job["createdAt"]
    assert "pollIntervalSeconds" not in job, "a finished job needs no more polling"


def test_tc05_cancel_a_queued_job(stack: LocalStack, http: httpx.Client) -> None:
    # Stop the emulator so the job cannot start before we cancel it.
    stack.kill("tasks-emulator")
    try:
        job_id = create(http, SEED_QUERY)["jobId"]
        response = http.post("/ai-jobs-cancel", json={"jobId": job_id})
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        again = http.post("/ai-jobs-cancel", json={"jobId": job_id})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "illegal_state"
        assert again.json()["error"]["details"] == {"status": "cancelled"}
    finally:
        stack.start_emulator()
    assert stack.reap().status_code == 200
    assert http.get(f"/ai-jobs-get/{job_id}").json()["status"] == "cancelled"


def test_cancel_a_finished_job_is_a_conflict_carrying_its_status(http: httpx.Client) -> None:
    job_id = create(http, SEED_QUERY)["jobId"]
    wait_for(http, job_id)
    response = http.delete(f"/ai-jobs-cancel/{job_id}")
    assert response.status_code == 409
    assert response.json()["error"]["details"]["status"] == "completed"


def test_polling_is_cheap_with_etag_and_no_store(http: httpx.Client) -> None:
    job_id = create(http, SEED_QUERY)["jobId"]
    wait_for(http, job_id)
    first = http.get(f"/ai-jobs-get/{job_id}")
    assert first.headers["Cache-Control"] == "no-store"
    etag = first.headers["ETag"]
    second = http.get(f"/ai-jobs-get/{job_id}", headers={"If-None-Match": etag})
    assert second.status_code == 304
    assert second.content == b""
    assert http.get(f"/ai-jobs-get?id={job_id}").json()["jobId"] == job_id


def test_idempotency_key_over_http(http: httpx.Client) -> None:
    key = f"k-{uuid.uuid4()}"
    first = http.post(
        "/ai-jobs-create", json={"query": SEED_QUERY}, headers={"Idempotency-Key": key}
    )
    again = http.post(
        "/ai-jobs-create", json={"query": SEED_QUERY}, headers={"Idempotency-Key": key}
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["jobId"] == again.json()["jobId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = http.post(
        "/ai-jobs-create", json={"query": SEED_QUERY + "!"}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    wait_for(http, first.json()["jobId"])


def test_list_sees_only_the_callers_jobs_and_paginates(http: httpx.Client) -> None:
    user = {"X-User-Id": f"user-{uuid.uuid4().hex[:8]}"}
    ids = []
    for _ in range(5):
        response = http.post("/ai-jobs-create", json={"query": SEED_QUERY}, headers=user)
        ids.append(response.json()["jobId"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = http.get("/ai-jobs-list", params=params, headers=user).json()
        seen += [job["jobId"] for job in page["jobs"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert all("result" not in job or job["result"] is None for job in page["jobs"])
    stranger = {"X-User-Id": "someone-else"}
    assert http.get(f"/ai-jobs-get/{ids[0]}", headers=stranger).status_code == 404
    assert http.post("/ai-jobs-cancel", json={"jobId": ids[0]}, headers=stranger).status_code == 404
    for job_id in ids:
        wait_for(http, job_id, headers=user)
    done = http.get("/ai-jobs-list", params={"status": "completed"}, headers=user).json()
    assert len(done["jobs"]) == 5


def test_cors_preflight_and_allowed_origin(http: httpx.Client) -> None:
    asked = preflight(http, "/ai-jobs-create", "content-type, idempotency-key")
    assert asked.status_code == 204
    assert asked.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
    assert "POST" in asked.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in asked.headers["Access-Control-Allow-Headers"]
    foreign = http.get("/ai-jobs-list", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers


BAD_INPUTS = [
    # (method, path, kwargs, status, code)
    (
        "POST",
        "/ai-jobs-create",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "POST",
        "/ai-jobs-create",
        {"json": {"query": "x", "colour": "red"}},
        400,
        "validation_failed",
    ),
    ("POST", "/ai-jobs-create", {"json": {"query": ""}}, 400, "validation_failed"),
    ("POST", "/ai-jobs-create", {"json": {}}, 400, "validation_failed"),
    ("POST", "/ai-jobs-create", {"json": ["query"]}, 400, "validation_failed"),
    (
        "POST",
        "/ai-jobs-create",
        {"json": {"query": "x", "type": "poetry"}},
        400,
        "validation_failed",
    ),
    (
        "POST",
        "/ai-jobs-create",
        {"json": {"query": "x", "options": {"priority": "urgent"}}},
        400,
        "validation_failed",
    ),
    ("POST", "/ai-jobs-create", {"json": {"query": "x" * 9000}}, 413, "payload_too_large"),
    (
        "POST",
        "/ai-jobs-create",
        {"content": b"query=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "unsupported_media_type",
    ),
    (
        "POST",
        "/ai-jobs-create",
        {"json": {"query": "x"}, "headers": {"Idempotency-Key": "bad key with spaces"}},
        400,
        "validation_failed",
    ),
    (
        "POST",
        "/ai-jobs-create",
        {"json": {"query": "x"}, "headers": {"X-User-Id": "bad user!"}},
        400,
        "validation_failed",
    ),
    ("GET", "/ai-jobs-create", {}, 405, "method_not_allowed"),
    ("GET", "/ai-jobs-get/not-a-uuid", {}, 400, "invalid_id"),
    ("GET", "/ai-jobs-get", {}, 400, "invalid_id"),
    ("GET", f"/ai-jobs-get/{uuid.UUID(int=1)}", {}, 404, "job_not_found"),
    ("DELETE", f"/ai-jobs-get/{uuid.UUID(int=1)}", {}, 405, "method_not_allowed"),
    ("GET", "/ai-jobs-list?status=finished", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?type=poetry", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?limit=0", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?limit=abc", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?cursor=%%%", {}, 400, "invalid_cursor"),
    # a well-formed cursor whose parts have the wrong types
    (
        "GET",
        "/ai-jobs-list?cursor=WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgNV0",
        {},
        400,
        "invalid_cursor",
    ),
    ("POST", "/ai-jobs-list", {}, 405, "method_not_allowed"),
    ("POST", "/ai-jobs-cancel", {"json": {"jobId": "nope"}}, 400, "invalid_id"),
    ("POST", "/ai-jobs-cancel", {"json": {"jobId": 42}}, 400, "invalid_id"),
    (
        "POST",
        "/ai-jobs-cancel",
        {"json": {"jobId": str(uuid.UUID(int=2)), "why": "x"}},
        400,
        "validation_failed",
    ),
    ("POST", "/ai-jobs-cancel", {"json": {"jobId": str(uuid.UUID(int=2))}}, 404, "job_not_found"),
    ("GET", "/ai-jobs-cancel", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), BAD_INPUTS)
def test_bad_input_gets_a_precise_4xx(  # noqa: PLR0917 (one parameter per column)
    http: httpx.Client, method: str, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text


def test_processor_refuses_callers_without_the_secret(
    stack: LocalStack, http: httpx.Client
) -> None:
    job_id = str(uuid.uuid4())
    headers = {"X-CloudTasks-QueueName": "ai-jobs", "X-CloudTasks-TaskName": "t"}
    plain = http.post("/ai-jobs-process", json={"jobId": job_id})
    assert plain.status_code == 403
    forged = http.post(
        "/ai-jobs-process", json={"jobId": job_id}, headers={**headers, SECRET_HEADER: "guess"}
    )
    assert forged.status_code == 403
    assert http.post("/ai-jobs-reap").status_code == 403
    allowed = http.post(
        "/ai-jobs-process", json={"jobId": job_id}, headers={**headers, SECRET_HEADER: stack.secret}
    )
    assert allowed.status_code == 200
    assert allowed.json()["outcome"] == "nothing_to_do"
    # a task that can never be valid is dropped with a 2xx (Cloud Tasks retries 4xx too)
    invalid = http.post(
        "/ai-jobs-process", json={"jobId": "nope"}, headers={**headers, SECRET_HEADER: stack.secret}
    )
    assert (invalid.status_code, invalid.json()["outcome"]) == (200, "invalid_task")


def test_cancel_deletes_the_pending_task(stack: LocalStack, http: httpx.Client) -> None:
    client = stack.tasks_client()
    client.pause_queue(name=stack.queue_path)  # tasks wait in the queue, undelivered
    try:
        job_id = create(http, SEED_QUERY)["jobId"]
        pending = [task.name for task in client.list_tasks(parent=stack.queue_path)]
        assert [name.rsplit("/", 1)[-1] for name in pending] == [f"job-{job_id}-d1"]
        assert http.post("/ai-jobs-cancel", json={"jobId": job_id}).status_code == 200
        assert list(client.list_tasks(parent=stack.queue_path)) == []
    finally:
        client.resume_queue(name=stack.queue_path)
    assert http.get(f"/ai-jobs-get/{job_id}").json()["status"] == "cancelled"
