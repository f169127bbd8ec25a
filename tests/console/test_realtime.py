"""The console's live path: a visitor signed in anonymously (the local Auth) follows the job
through Supabase Realtime (the local stand-in), and falls back to polling without losing a
step when the socket drops.

The stack here verifies Bearer tokens (SUPABASE_JWT_SECRET) and hands the console the anon
key; its poll interval is long (30 s), so steps seen within seconds came through Realtime.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local import fake_gemini
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack
from tests.console.pages import (
    LONG,
    RECORD_PROGRESS,
    STEP_NAMES,
    PageErrors,
    ask,
    console_stack,
    slow_answer,
)
from tests.support import SEED_QUERY


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: Postgres, fake: fake_gemini.FakeGemini
) -> Iterator[LocalStack]:
    # Paced (3 s a step): the page counts Realtime as live only once a change reaches it after
    # it subscribed, so the job's steps must still be coming then. Unpaced, a loaded machine
    # could write steps 0-50 (one batch, before the model call) before the page's channel
    # joined, and the next change was the completion (1 CI run failed so).
    yield from console_stack(
        tmp_path_factory,
        pg,
        fake,
        "live",
        poll_interval_s=30,
        jwt_identity=True,
        step_delay_ms=3000,
    )


def _open(browser: Any, stack: LocalStack, sockets: list[Any] | None = None) -> Any:
    context = browser.new_context(locale="ko-KR", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = PageErrors()
    errors.watch(page)
    page.errors = errors
    if sockets is not None:
        # pass every Realtime socket through, keeping a handle to drop it later
        def route(ws: Any) -> None:
            ws.connect_to_server()
            sockets.append(ws)

        page.route_web_socket(re.compile(r".*/realtime/v1/websocket.*"), route)
    page.goto(f"{stack.base_url}/ai-jobs-console/")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#jobs[data-loaded=true]", state="attached")
    return page


def test_a_signed_in_visitor_watches_the_plans_question_through_realtime(
    browser: Any, stack: LocalStack, fake: fake_gemini.FakeGemini, shots: Path
) -> None:
    page = _open(browser, stack)
    fake.push(slow_answer(4))
    page.evaluate(RECORD_PROGRESS)

    ask(page, SEED_QUERY)

    page.wait_for_selector("#mode[data-mode=realtime]", timeout=LONG)
    page.wait_for_selector("#progress[aria-valuenow='50']", timeout=LONG)
    assert "실시간" in page.inner_text("#mode")
    page.screenshot(path=shots / "20-live-running.png", full_page=True)
    page.wait_for_selector("#charts figure canvas", timeout=LONG)
    seen = page.evaluate("window.__progress")
    assert 50 in seen and seen[-1] == 100 and seen == sorted(seen)
    logged = page.locator("#log .log-line").all_inner_texts()
    assert [sum(step in line for line in logged) for step in STEP_NAMES] == [1] * 5, logged
    assert page.locator("#charts figure[data-kind=incident]").count() == 4
    page.screenshot(path=shots / "21-live-report.png", full_page=True)
    page.context.close()
    assert page.errors.errors == []


def test_the_socket_dropping_mid_job_falls_back_to_polling_and_loses_no_step(
    browser: Any, stack: LocalStack, fake: fake_gemini.FakeGemini, shots: Path
) -> None:
    sockets: list[Any] = []
    page = _open(browser, stack, sockets)
    fake.push(slow_answer(8))
    ask(page, SEED_QUERY)
    page.wait_for_selector("#mode[data-mode=realtime]", timeout=LONG)
    page.wait_for_selector("#progress[aria-valuenow='50']", timeout=LONG)

    for socket in sockets:
        socket.close(code=1006, reason="test: connection lost")

    page.wait_for_selector("#mode[data-mode=polling]", timeout=LONG)
    page.screenshot(path=shots / "22-live-dropped.png", full_page=True)
    page.wait_for_selector("#job[data-status=completed]", timeout=LONG)
    logged = page.locator("#log .log-line").all_inner_texts()
    assert [sum(step in line for line in logged) for step in STEP_NAMES] == [1] * 5, logged
    page.context.close()
    # the dropped socket is reported by supabase-js itself; nothing else may have failed
    assert [e for e in page.errors.errors if "WebSocket" not in e] == []


def test_each_visitor_sees_only_their_own_jobs(browser: Any, stack: LocalStack) -> None:
    page = _open(browser, stack)

    assert page.locator("#jobs .job-item").count() == 0
    assert page.is_visible("#jobs-empty")
    page.context.close()
    assert page.errors.errors == []
