"""The Python client and its command line against the running local stack."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import pytest

from client import AIJobsClient, APIError
from infra.local.stack import LocalStack
from tests.support import REPO_ROOT, SEED_QUERY


def test_create_wait_list_cancel(stack: LocalStack) -> None:
    user = f"client-{uuid.uuid4().hex[:8]}"
    with AIJobsClient(stack.base_url, user_id=user) as jobs:
        created = jobs.create(SEED_QUERY, priority="high", idempotency_key="k1")
        assert (
            jobs.create(SEED_QUERY, priority="high", idempotency_key="k1")["jobId"]
            == (created["jobId"])
        )
        lines: list[dict[str, Any]] = []
        job = jobs.wait(created["jobId"], poll_interval_s=0.1, on_log=lines.append)
        assert job["status"] == "completed"
        assert job["priority"] == "high"
        progress = [line["progress"] for line in lines if line["progress"] is not None]
        assert progress == sorted(progress) and progress[-1] == 100
        assert [j["jobId"] for j in jobs.list()] == [created["jobId"]]
        with pytest.raises(APIError) as finished:
            jobs.cancel(created["jobId"])
        assert (finished.value.status, finished.value.code) == (409, "illegal_state")
        assert finished.value.details == {"status": "completed"}
        with pytest.raises(APIError) as missing:
            jobs.get(str(uuid.uuid4()))
        assert missing.value.code == "job_not_found"


def test_command_line_answers_and_follows(stack: LocalStack) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client", "--base-url", stack.base_url, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    simple = run("submit", "현재 서버 상태 알려줘")
    assert simple.returncode == 0, simple.stderr
    assert "서버" in simple.stdout
    followed = run("submit", SEED_QUERY, "--wait", "--poll", "0.2")
    assert followed.returncode == 0, followed.stderr
    assert "50% AI 분석 중" in followed.stdout
    assert "db-01" in followed.stdout
    bad = run("get", "not-a-uuid")
    assert bad.returncode == 2
    assert "invalid_id" in bad.stderr
