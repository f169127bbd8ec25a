from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from infra.local import fake_gemini
from shared.ai import pipeline
from shared.ai.gemini import GeminiWriter
from shared.ai.results import AIResult, Narrative
from shared.errors import DeadlineExceeded, JobCancelled
from shared.settings import AISettings
from tests.support import SEED_QUERY


class RecordingWriter:
    """A writer that records that it was asked (to prove a cancelled run stops before it)."""

    name = "recording"

    def __init__(self) -> None:
        self.calls = 0

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative:
        self.calls += 1
        return Narrative(title="t", summary="s", explanations=[], actions=[])


def recorder(sink: list[tuple[int, str]]) -> Callable[[int, str], bool]:
    """An on_progress that records each step and lets the run go on."""

    def on_progress(percent: int, message: str) -> bool:
        sink.append((percent, message))
        return True

    return on_progress


def test_steps_are_reported_in_order_in_the_query_language(settings: AISettings) -> None:
    seen: list[tuple[int, str]] = []
    pipeline.run(SEED_QUERY, None, recorder(seen), settings=settings)
    assert seen == [
        (0, "작업 시작"),
        (20, "데이터 수집 중"),
        (50, "AI 분석 중"),
        (80, "결과 정리 중"),
        (100, "완료"),
    ]
    english: list[tuple[int, str]] = []
    pipeline.run("analyze all servers", None, recorder(english), settings=settings)
    assert [percent for percent, _ in english] == [0, 20, 50, 80, 100]


@pytest.mark.parametrize("stop_at", [0, 20, 50, 80, 100])
def test_cancel_stops_before_the_next_step(stop_at: int, settings: AISettings) -> None:
    seen: list[int] = []
    writer = RecordingWriter()

    def on_progress(percent: int, message: str) -> bool:
        seen.append(percent)
        return percent != stop_at

    with pytest.raises(JobCancelled):
        pipeline.run(SEED_QUERY, None, on_progress, settings=settings, writer=writer)
    assert seen[-1] == stop_at
    assert writer.calls == (1 if stop_at > 50 else 0)


def test_a_passed_deadline_ends_the_run(settings: AISettings) -> None:
    seen: list[tuple[int, str]] = []
    with pytest.raises(DeadlineExceeded):
        pipeline.run(
            SEED_QUERY,
            None,
            recorder(seen),
            settings=settings,
            deadline=time.monotonic() - 1,
        )
    assert seen == []


def test_the_deadline_bounds_the_model_call(
    fake: fake_gemini.FakeGemini, settings: AISettings
) -> None:
    fake.push(fake_gemini.slow(10))
    started = time.monotonic()
    with (
        GeminiWriter(
            api_key="fake", model="gemini-2.5-flash", base_url=fake.base_url, timeout_s=60
        ) as writer,
        pytest.raises(DeadlineExceeded),
    ):
        pipeline.run(
            SEED_QUERY,
            None,
            lambda p, m: True,
            settings=settings,
            writer=writer,
            deadline=time.monotonic() + 3,
        )
    # well under the model's 10 s: bounded by the 3 s deadline, with room for a loaded machine
    assert time.monotonic() - started < 8
    assert fake.calls == 1


def test_gemini_narrative_is_merged_but_invented_numbers_are_not(
    fake: fake_gemini.FakeGemini, settings: AISettings
) -> None:
    fake.push(
        fake_gemini.answer(
            {
                "title": "서버 리포트",
                "summary": "서버 777대가 모두 다운되었습니다.",  # invented number
                "explanations": [{"id": "inc-4", "text": "db-01 백업이 원인입니다."}],
                "actions": ["db-01 백업 시간을 옮기세요."],
            }
        )
    )
    with GeminiWriter(api_key="fake", model="gemini-2.5-flash", base_url=fake.base_url) as writer:
        result = pipeline.run(SEED_QUERY, None, lambda p, m: True, settings=settings, writer=writer)
    assert result.writer == "gemini:gemini-2.5-flash"
    assert result.title == "서버 리포트"
    assert "777" not in result.summary and "4건의 장애" in result.summary  # fell back to the facts
    assert "db-01 백업이 원인입니다." in result.markdown
    assert result.actions == ["db-01 백업 시간을 옮기세요."]
    prompt = fake.requests[0].body["contents"][0]["parts"][0]["text"]
    assert "db-01 디스크 I/O 포화" in prompt
