"""``LOCAL_STEP_DELAY_MS``: the local pause after each step, so a person can watch a job move.

Unset it adds no wait at all; set, it pauses after every step but the last, never longer than
the deadline leaves, and a cancel still stops the run at the next step. Deploying refuses it.
The pauses are recorded (``time.sleep`` replaced by a recorder that still sleeps), never timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from shared.ai import pipeline
from shared.ai.fleet import build_synthetic_fleet
from shared.errors import ConfigError, DeadlineExceeded, JobCancelled
from shared.jobs import JobType
from shared.settings import AISettings, DeploySettings

from .fleets import Given

REQUIRED = {"SUPABASE_URL": "http://127.0.0.1:54321", "SUPABASE_SERVICE_ROLE_KEY": "sk-1"}
QUERY = "Write an incident report for every server"


@pytest.fixture(scope="module")
def fleet() -> Given:
    return Given(build_synthetic_fleet(42))


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pause the pipeline asks for, in seconds (each still slept, at most briefly)."""
    asked: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        real_sleep(min(seconds, 0.05))

    monkeypatch.setattr("shared.ai.pipeline.time.sleep", sleep)
    return asked


def _run(
    fleet: Given,
    delay_ms: int,
    on_progress: Callable[[int, str], bool] = lambda p, m: True,
    deadline: float | None = None,
) -> None:
    settings = AISettings(writer="local", local_step_delay_ms=delay_ms)
    pipeline.run(
        QUERY, JobType.REPORT, on_progress, settings=settings, deadline=deadline, fleet=fleet
    )


def test_unset_the_pipeline_never_pauses(fleet: Given, pauses: list[float]) -> None:
    _run(fleet, 0)

    assert pauses == []
    assert AISettings.from_env({}).local_step_delay_ms == 0


def test_set_it_pauses_after_every_step_but_the_last(fleet: Given, pauses: list[float]) -> None:
    steps: list[int] = []

    def record(percent: int, message: str) -> bool:
        steps.append(percent)
        return True

    _run(fleet, 1500, record)

    assert steps == [0, 20, 50, 80, 100]
    assert pauses == [1.5, 1.5, 1.5, 1.5]


def test_a_cancel_during_a_pause_stops_the_run_at_the_next_step(
    fleet: Given, pauses: list[float]
) -> None:
    answers = iter([True, False])  # cancelled while the first step was on screen

    with pytest.raises(JobCancelled):
        _run(fleet, 1500, lambda percent, message: next(answers))

    assert pauses == [1.5]


def test_a_pause_never_outlasts_the_deadline(fleet: Given, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr("shared.ai.pipeline.time.sleep", sleep)
    deadline = time.monotonic() + 0.3

    with pytest.raises(DeadlineExceeded):
        _run(fleet, 5000, deadline=deadline)

    assert asked and all(p <= 0.3 for p in asked)


@pytest.mark.parametrize("value", ["-1", "5001", "soon"])
def test_a_bad_delay_is_refused_naming_its_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="LOCAL_STEP_DELAY_MS"):
        AISettings.from_env({"LOCAL_STEP_DELAY_MS": value})


def test_deploying_refuses_any_pacing() -> None:
    with pytest.raises(ConfigError, match="LOCAL_STEP_DELAY_MS") as caught:
        DeploySettings.from_env({**REQUIRED, "LOCAL_STEP_DELAY_MS": "1500"})

    assert caught.value.details == {"setting": "LOCAL_STEP_DELAY_MS"}
    assert DeploySettings.from_env(REQUIRED).app.ai.local_step_delay_ms == 0
