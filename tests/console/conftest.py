"""Browser fixtures: the whole local stack (with a fake Gemini that can be made slow or made
to fail), Debian's headless Chromium driven by Playwright, and a page per test.

Chromium comes from Debian (``make browser`` installs it when missing); Playwright never
downloads a browser here: it is launched with ``executable_path``. Screenshots of each state
go to ``.local/screenshots/console/``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local import fake_gemini
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack, StackConfig

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
AXE = REPO / "console" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = REPO / ".local" / "screenshots" / "console"
#: flags for a headless browser in a container, as root, with no network of its own
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    "--disable-dev-shm-usage",
]
#: what a job's Gemini call answers when it should only be slow: an empty narrative makes the
#: pipeline keep the local writer's text, so the report reads as it does with no model
EMPTY_NARRATIVE: dict[str, Any] = {"title": "", "summary": "", "explanations": [], "actions": []}


def slow_answer(seconds: float) -> fake_gemini.Fault:
    return fake_gemini.Fault(delay_s=seconds, answer=EMPTY_NARRATIVE)


@pytest.fixture(scope="module")
def fake() -> Iterator[fake_gemini.FakeGemini]:
    with fake_gemini.start() as server:
        yield server


def console_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg: Postgres,
    fake: fake_gemini.FakeGemini,
    name: str,
    *,
    poll_interval_s: int,
    jwt_identity: bool = False,
) -> Iterator[LocalStack]:
    """A stack for the console: caps out of the way, the model the fake Gemini."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp(f"console-{name}"),
        reap_interval_s=0,
        jwt_identity=jwt_identity,
        database_uri=pg.create_database(f"{name}_{uuid.uuid4().hex[:8]}"),
        function_env={
            "MAX_JOBS_PER_MINUTE": "1000",
            "MAX_ACTIVE_JOBS": "1000",
            "POLL_INTERVAL_S": str(poll_interval_s),
            "AI_WRITER": "gemini",
            "GEMINI_API_KEY": "test-key",
            "GEMINI_BASE_URL": fake.base_url,
            "GEMINI_MAX_RETRIES": "0",
        },
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: Postgres, fake: fake_gemini.FakeGemini
) -> Iterator[LocalStack]:
    yield from console_stack(tmp_path_factory, pg, fake, "stack", poll_interval_s=1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make console-deps` (npm ci in console/)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


class PageErrors:
    """JavaScript errors and CSP violations a page met: a test fails on any."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )


@pytest.fixture
def page(browser: Any, stack: LocalStack) -> Iterator[Any]:
    context = browser.new_context(
        locale="ko-KR", viewport={"width": 1280, "height": 900}, timezone_id="Asia/Seoul"
    )
    opened = context.new_page()
    errors = PageErrors()
    errors.watch(opened)
    opened.errors = errors
    opened.goto(f"{stack.base_url}/ai-jobs-console/")
    opened.wait_for_selector("body[data-ready=true]")
    opened.wait_for_selector("#jobs[data-loaded=true]", state="attached")
    yield opened
    context.close()
    assert errors.errors == []
