"""End to end on the whole local stack (functions with SUPABASE_JWT_SECRET, so a Bearer access
token acts as its ``sub``): visitors signed in anonymously through the local Auth create jobs
over HTTP and follow them through Realtime with the official clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from client import AIJobsClient
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack
from tests.realtime.listen import until
from tests.support import REPO_ROOT, SEED_QUERY, local_stack, mint, wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg: Postgres) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory, pg, "stack", jwt_identity=True) as running:
        yield running


class Visitor:
    """A browser-like visitor: supabase-py signed in anonymously, subscribed with no filter."""

    def __init__(
        self, client: AsyncClient, http: httpx.AsyncClient, user_id: str, token: str
    ) -> None:
        self.client = client
        self.http = http
        self.user_id = user_id
        self.token = token
        self.rows: list[dict[str, Any]] = []
        self.subscribed = False

    @classmethod
    async def sign_in(cls, stack: LocalStack) -> Visitor:
        http = httpx.AsyncClient(timeout=30)
        client = await acreate_client(
            stack.api_url, stack.anon_key, AsyncClientOptions(httpx_client=http)
        )
        session = (await client.auth.sign_in_anonymously()).session
        assert session is not None
        visitor = cls(client, http, session.user.id, session.access_token)
        channel = client.channel(f"visitor-{visitor.user_id}")
        for event, table in (("*", "ai_jobs"), ("INSERT", "ai_job_logs")):
            channel.on_postgres_changes(
                event,  # type: ignore[arg-type]
                callback=lambda payload: visitor.rows.append(dict(payload["data"])),
                table=table,
                schema="public",
            )
        channel.on_system(lambda p: setattr(visitor, "subscribed", True))
        await channel.subscribe()
        await until(lambda: visitor.subscribed)
        return visitor

    def create_job(self, stack: LocalStack, query: str = SEED_QUERY) -> str:
        response = httpx.post(
            f"{stack.base_url}/ai-jobs-create",
            json={"query": query},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["jobId"])

    def job_rows(self, job_id: str) -> list[dict[str, Any]]:
        return [
            r["record"]
            for r in self.rows
            if r["table"] == "ai_jobs" and r["record"]["id"] == job_id
        ]

    def completed(self, job_id: str) -> bool:
        return any(row["status"] == "completed" for row in self.job_rows(job_id))

    async def close(self) -> None:
        await self.client.remove_all_channels()
        await self.client.realtime.close()
        await self.http.aclose()


def test_a_visitor_follows_its_job_to_completion_and_another_sees_none_of_it(
    stack: LocalStack,
) -> None:
    async def scenario() -> tuple[Visitor, Visitor, str, str]:
        first, second = await Visitor.sign_in(stack), await Visitor.sign_in(stack)
        job_id = await asyncio.to_thread(first.create_job, stack)
        await until(lambda: first.completed(job_id), timeout_s=60)
        # the second visitor's own job, written after: once it has that, it has everything
        own = await asyncio.to_thread(second.create_job, stack)
        await until(lambda: second.completed(own), timeout_s=60)
        await first.close()
        await second.close()
        return first, second, job_id, own

    first, second, job_id, own = asyncio.run(scenario())

    rows = first.job_rows(job_id)
    assert rows[0]["status"] == "queued" and rows[-1]["status"] == "completed"
    progress = [row["progress"] for row in rows]
    assert progress == sorted(progress) and progress[-1] == 100
    logs = [r["record"] for r in first.rows if r["table"] == "ai_job_logs"]
    steps = [
        log["progress"] for log in logs if log["job_id"] == job_id and log["progress"] is not None
    ]
    assert steps == sorted(steps) and {0, 20, 50, 80, 100} <= set(steps)
    assert {r["record"].get("user_id") for r in first.rows if r["table"] == "ai_jobs"} == {
        first.user_id
    }
    seen_by_second = {r["record"].get("id") for r in second.rows if r["table"] == "ai_jobs"}
    assert seen_by_second == {own}
    assert {r["record"]["job_id"] for r in second.rows if r["table"] == "ai_job_logs"} == {own}


def test_watch_through_realtime_gives_what_polling_gives(stack: LocalStack) -> None:
    tasks = stack.tasks_client()
    with AIJobsClient.signed_in(stack.base_url, stack.api_url, stack.anon_key) as jobs:
        # The job runs only once the watch has subscribed: a change committed before the
        # subscription is not delivered (Realtime's slot starts with its first subscriber),
        # and an unpaced job could finish before it.
        tasks.pause_queue(name=stack.queue_path)
        try:
            job_id = jobs.create(SEED_QUERY)["jobId"]
            pushed_lines: list[dict[str, Any]] = []
            with ThreadPoolExecutor(1) as pool:
                watching = pool.submit(jobs.watch, job_id, on_log=pushed_lines.append)
                wait_until(lambda: jobs.last_signal is not None or watching.done(), "the watch")
                tasks.resume_queue(name=stack.queue_path)
                watched = watching.result()
        finally:
            tasks.resume_queue(name=stack.queue_path)
        polled_lines: list[dict[str, Any]] = []
        polled = jobs.wait(job_id, poll_interval_s=0.1, on_log=polled_lines.append)
        signal = jobs.last_signal

    assert watched == polled and watched["status"] == "completed"
    assert pushed_lines == polled_lines and pushed_lines[-1]["progress"] == 100
    assert signal is not None and signal.received_at  # it was pushed, not polled


def test_submit_wait_on_the_command_line_follows_through_realtime(stack: LocalStack) -> None:
    followed = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "--base-url",
            stack.base_url,
            "--supabase-url",
            stack.api_url,
            "--anon-key",
            stack.anon_key,
            "submit",
            SEED_QUERY,
            "--wait",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert followed.returncode == 0, followed.stderr
    assert "50% AI 분석 중" in followed.stdout
    assert "completed" in followed.stdout


def _subject(token: str | None) -> str:
    assert token is not None
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def test_a_saved_session_brings_the_same_visitor_back_and_refreshes_a_stale_token(
    stack: LocalStack, tmp_path: Path
) -> None:
    session_file = tmp_path / "client-session.json"
    urls = (stack.base_url, stack.api_url, stack.anon_key)
    with AIJobsClient.signed_in(*urls, session_file=session_file) as first:
        job_id = first.create(SEED_QUERY)["jobId"]
        visitor = _subject(first.bearer_token)
    with AIJobsClient.signed_in(*urls, session_file=session_file) as again:
        assert _subject(again.bearer_token) == visitor
        assert again.get(job_id)["jobId"] == job_id  # their own job, found on the next run

    saved = json.loads(session_file.read_text())
    stale = mint("authenticated", sub=visitor, exp=int(time.time()) - 5)
    session_file.write_text(json.dumps({**saved, "access_token": stale}))
    with AIJobsClient.signed_in(*urls, session_file=session_file) as refreshed:
        assert refreshed.bearer_token != stale
        assert _subject(refreshed.bearer_token) == visitor
        assert refreshed.get(job_id)["jobId"] == job_id
