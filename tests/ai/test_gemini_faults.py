"""Why a Gemini answer stopped, quotas that are not worth waiting for, and the pinned API
version: the real google-genai client against the fake Gemini, each fault scripted."""

from __future__ import annotations

from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from infra.local import fake_gemini
from shared.ai import compose
from shared.ai.facts import FleetFacts
from shared.ai.gemini import QUOTA_RETRY_DEFAULT_S, GeminiWriter, thinking_config
from shared.ai.results import AIResult
from shared.errors import AIError
from shared.jobs import JobType
from shared.settings import DEFAULT_GEMINI_MODEL, GEMINI_API_VERSION

MODEL = DEFAULT_GEMINI_MODEL


@pytest.fixture(scope="module")
def draft(facts: FleetFacts) -> AIResult:
    return compose.draft(JobType.ANALYSIS, facts, "analyse every server", "en")


def _failure(writer: GeminiWriter, draft: AIResult) -> AIError:
    with pytest.raises(AIError) as caught:
        writer.write(draft)
    return caught.value


# ----------------------------------------------------------------------------- stop reasons


@pytest.mark.parametrize(
    "finish", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"]
)
def test_a_refused_answer_is_permanent_with_the_real_reason_and_not_retried(
    finish: str, writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.stopped(finish))

    failure = _failure(writer, draft)

    assert failure.retryable is False
    assert failure.details["reason"] == "blocked"
    assert finish in failure.message
    assert fake.calls == 1, "the same prompt would be refused again: one billed call"


@pytest.mark.parametrize("block", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "OTHER"])
def test_a_blocked_prompt_is_permanent_with_the_block_reason(
    block: str, writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.blocked_prompt(block))

    failure = _failure(writer, draft)

    assert (failure.retryable, failure.details["reason"]) == (False, "blocked")
    assert f"blocked the prompt ({block})" in failure.message
    assert fake.calls == 1


def test_max_tokens_is_its_own_case_and_names_the_thinking_spent(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.stopped("MAX_TOKENS", text='{"title": "Fleet analy'))

    failure = _failure(writer, draft)

    assert (failure.retryable, failure.details["reason"]) == (False, "max_tokens")
    assert "maxOutputTokens" in failure.message and "800" in failure.message
    assert fake.calls == 1


def test_another_stop_reason_is_permanent_too(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.stopped("OTHER"))
    failure = _failure(writer, draft)
    assert (failure.retryable, failure.details["reason"]) == (False, "stopped")
    assert fake.calls == 1


def test_an_empty_answer_that_stopped_normally_is_retried_like_malformed_output(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.stopped("STOP", text=""))
    assert writer.write(draft).title == "example title"
    assert fake.calls == 2


# ----------------------------------------------------------------------------- quotas


def test_a_daily_quota_is_handed_to_the_processor_with_the_server_hint_without_sleeping(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult, sleeps: list[float]
) -> None:
    fake.push(fake_gemini.rate_limited(7200, per="day", limit=250))

    failure = _failure(writer, draft)

    assert failure.retryable is True
    assert failure.retry_after == 7200
    assert failure.details == {"reason": "quota_exhausted", "quota": "daily", "status": 429}
    assert sleeps == [] and fake.calls == 1


def test_a_zero_quota_is_not_waited_for_either(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult, sleeps: list[float]
) -> None:
    fake.push(fake_gemini.rate_limited(31, per="minute", limit=0))

    failure = _failure(writer, draft)

    assert (failure.retryable, failure.retry_after) == (True, 31)
    assert failure.details["quota"] == "zero"
    assert sleeps == [] and fake.calls == 1


def test_a_daily_quota_without_a_hint_retries_in_an_hour(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.rate_limited(None, per="day"))
    assert _failure(writer, draft).retry_after == QUOTA_RETRY_DEFAULT_S


def test_a_per_minute_quota_is_still_waited_for_within_the_call(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult, sleeps: list[float]
) -> None:
    fake.push(fake_gemini.rate_limited(0.2, per="minute", limit=10))
    assert writer.write(draft).title == "example title"
    assert sleeps == [0.2] and fake.calls == 2


# ----------------------------------------------------------------------------- model, request


def test_a_shut_down_model_is_permanent_as_model_unavailable(
    fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.retired.add("gemini-2.5-flash")
    with GeminiWriter(api_key="fake", model="gemini-2.5-flash", base_url=fake.base_url) as old:
        failure = _failure(old, draft)
    assert (failure.retryable, failure.details["reason"]) == (False, "model_unavailable")
    assert failure.message == "Gemini model gemini-2.5-flash is not available (HTTP 404)"
    assert fake.calls == 1


def test_a_thinking_level_the_model_does_not_take_is_rejected_like_the_api_does(
    fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    with GeminiWriter(
        api_key="fake", model=MODEL, base_url=fake.base_url, thinking_level="minimal"
    ) as writer:
        failure = _failure(writer, draft)
    assert (failure.retryable, failure.details) == (False, {"reason": "rejected", "status": 400})


def test_gemini_2_models_get_a_thinking_budget_and_gemini_3_a_level_never_both() -> None:
    assert thinking_config("gemini-2.5-flash", "low").model_dump(exclude_none=True) == {
        "thinking_budget": 1024
    }
    assert thinking_config(MODEL, "medium").model_dump(exclude_none=True) == {
        "thinking_level": types.ThinkingLevel.MEDIUM
    }
    both: dict[str, Any] = {"contents": [{}], "generationConfig": {"thinkingConfig": {}}}
    both["generationConfig"]["thinkingConfig"] = {"thinkingLevel": "LOW", "thinkingBudget": 10}
    assert fake_gemini.request_error(MODEL, both) is not None


def test_the_fake_serves_only_the_pinned_api_version(fake: fake_gemini.FakeGemini) -> None:
    other = "v1" if GEMINI_API_VERSION != "v1" else "v1beta"
    client = genai.Client(
        api_key="fake", http_options=types.HttpOptions(base_url=fake.base_url, api_version=other)
    )
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="hello")
    client.close()
    assert caught.value.code == 404


def test_the_sdk_version_variable_does_not_move_the_writer_off_the_pinned_version(
    monkeypatch: pytest.MonkeyPatch, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1")
    with GeminiWriter(api_key="fake", model=MODEL, base_url=fake.base_url) as writer:
        writer.write(draft)
    assert fake.requests[-1].path == f"/{GEMINI_API_VERSION}/models/{MODEL}:generateContent"
