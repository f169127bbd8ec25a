"""Shared helpers for the AI tests: the synthetic fleet's facts and a fake Gemini."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local import fake_gemini
from shared.ai import analytics
from shared.ai.facts import FleetFacts
from shared.ai.fleet import build_synthetic_fleet
from shared.settings import AISettings

SEED_QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"


@pytest.fixture(scope="session")
def facts() -> FleetFacts:
    return analytics.analyse(build_synthetic_fleet(42))


@pytest.fixture
def settings() -> AISettings:
    return AISettings(writer="local")


@pytest.fixture
def fake() -> Iterator[fake_gemini.FakeGemini]:
    yield from fake_gemini.running()
