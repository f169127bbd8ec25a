"""Browser fixtures: the whole local stack (with a fake Gemini that can be made slow or made
to fail), Debian's headless Chromium driven by Playwright, and a page per test.

Chromium comes from Debian (``make browser`` installs it when missing); Playwright never
downloads a browser here: it is launched with ``executable_path``. Screenshots of each state
go to ``.local/screenshots/console/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local import fake_gemini
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack
from tests.console.pages import AXE, CHROMIUM, CHROMIUM_ARGS, SHOTS, PageErrors, console_stack


@pytest.fixture(scope="module")
def fake() -> Iterator[fake_gemini.FakeGemini]:
    with fake_gemini.start() as server:
        yield server


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
