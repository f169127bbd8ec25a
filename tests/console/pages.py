"""What the console's browser tests share (tests import it; the fixtures are in the conftest):
Debian's Chromium and its flags, the accessibility scanner, the fake Gemini's slow answer, the
console's own stack, the steps a job shows and how a person asks a question."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import fake_gemini
from infra.local.postgres import Postgres
from infra.local.stack import LocalStack
from tests.support import NO_CAPS, REPO_ROOT, gemini_env, local_stack

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
AXE = REPO_ROOT / "console" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = REPO_ROOT / ".local" / "screenshots" / "console"
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


def console_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg: Postgres,
    fake: fake_gemini.FakeGemini,
    name: str,
    *,
    poll_interval_s: int,
    jwt_identity: bool = False,
    step_delay_ms: int = 0,
) -> Iterator[LocalStack]:
    """A stack for the console: caps out of the way, the model the fake Gemini; jobs paced by
    ``step_delay_ms`` (LOCAL_STEP_DELAY_MS) when a test needs steps spread out in time."""
    env = {
        **NO_CAPS,
        "POLL_INTERVAL_S": str(poll_interval_s),
        "LOCAL_STEP_DELAY_MS": str(step_delay_ms),
        **gemini_env(fake.base_url, GEMINI_MAX_RETRIES="0"),
    }
    with local_stack(
        tmp_path_factory, pg, f"console_{name}", env, jwt_identity=jwt_identity
    ) as running:
        yield running


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


STEP_NAMES = ["작업 시작", "데이터 수집 중", "AI 분석 중", "결과 정리 중", "완료"]
LONG = 60_000  # ms: how long a wait may take on a busy 2-core machine before it is a failure

# records every value the progress bar shows, so a test can tell the steps came one by one
RECORD_PROGRESS = """() => {
  window.__progress = [];
  window.__marker = 'no reload';
  const bar = document.getElementById('progress');
  new MutationObserver(() => window.__progress.push(Number(bar.getAttribute('aria-valuenow'))))
    .observe(bar, { attributes: true, attributeFilter: ['aria-valuenow'] });
}"""


def ask(page: Any, question: str) -> None:
    page.fill("#query", question)
    page.click("#submit")
