"""The AI tests' fixtures: the synthetic fleet's facts, a fake Gemini, and the real Gemini writer
(google-genai) talking to it with its sleeps recorded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infra.local import fake_gemini
from shared.ai import analytics
from shared.ai.facts import FleetFacts
from shared.ai.fleet import build_synthetic_fleet
from shared.ai.gemini import GeminiWriter
from shared.settings import DEFAULT_GEMINI_MODEL, AISettings


@pytest.fixture(scope="session")
def facts() -> FleetFacts:
    return analytics.analyse(build_synthetic_fleet(42))


@pytest.fixture
def settings() -> AISettings:
    return AISettings(writer="local")


@pytest.fixture
def fake() -> Iterator[fake_gemini.FakeGemini]:
    yield from fake_gemini.running()


@pytest.fixture
def sleeps() -> list[float]:
    """Every pause the writer takes between attempts (a test's pauses are cut to 50 ms)."""
    return []


@pytest.fixture
def make_writer(
    fake: fake_gemini.FakeGemini, sleeps: list[float]
) -> Iterator[Callable[..., GeminiWriter]]:
    """``make_writer(**overrides)``: the real Gemini writer on the fake, closed after the test."""
    opened: list[GeminiWriter] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    def make(**overrides: Any) -> GeminiWriter:
        options: dict[str, Any] = {
            "api_key": "fake",
            "model": DEFAULT_GEMINI_MODEL,
            "base_url": fake.base_url,
            "timeout_s": 5,
            "max_retries": 2,
            "backoff_s": 0.01,
            "sleep": sleep,
        }
        opened.append(GeminiWriter(**{**options, **overrides}))
        return opened[-1]

    yield make
    for writer in opened:
        writer.close()


@pytest.fixture
def writer(make_writer: Callable[..., GeminiWriter]) -> GeminiWriter:
    return make_writer()
