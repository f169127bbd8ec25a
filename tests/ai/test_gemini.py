"""GeminiWriter with the real google-genai client against the fake Gemini on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.local import fake_gemini
from shared.ai import compose
from shared.ai.facts import FleetFacts
from shared.ai.gemini import GeminiWriter
from shared.ai.results import AIResult
from shared.ai.writers import writer_from_settings
from shared.errors import AIError
from shared.jobs import JobType
from shared.settings import DEFAULT_GEMINI_MODEL, GEMINI_API_VERSION, AISettings

MODEL = DEFAULT_GEMINI_MODEL


@pytest.fixture(scope="module")
def draft(facts: FleetFacts) -> AIResult:
    return compose.draft(JobType.REPORT, facts, "리포트 만들어줘", "ko")


def test_structured_answer(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    narrative = writer.write(draft)

    assert narrative.title == "example title"
    assert fake.calls == 1
    request = fake.requests[0]
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == "fake"
    config = request.body["generationConfig"]
    assert "temperature" not in config, "Gemini 3: leave temperature at its default"
    # google-genai 3.6.1 sends the nested keys in snake_case; proto JSON takes either name
    assert config["thinkingConfig"] in ({"thinkingLevel": "LOW"}, {"thinking_level": "LOW"})
    assert config["maxOutputTokens"] == 8192
    assert config["responseMimeType"] == "application/json"
    assert set(config["responseJsonSchema"]["properties"]) == {
        "title",
        "summary",
        "explanations",
        "actions",
    }
    assert "Korean" in request.body["systemInstruction"]["parts"][0]["text"]


def test_429_then_success_honours_the_retry_hint(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult, sleeps: list[float]
) -> None:
    fake.push(fake_gemini.rate_limited(retry_delay_s=0.2))

    narrative = writer.write(draft)

    assert narrative.summary == "example summary"
    assert fake.calls == 2
    assert sleeps == [0.2]  # the server's RetryInfo, not our backoff


def test_rate_limit_that_outlasts_the_retries_is_retryable(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(*[fake_gemini.rate_limited(0.01)] * 3)
    with pytest.raises(AIError) as caught:
        writer.write(draft)
    assert caught.value.retryable is True
    assert caught.value.retry_after == 0.01
    assert fake.calls == 3


def test_server_errors_are_retried_with_backoff(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult, sleeps: list[float]
) -> None:
    fake.push(fake_gemini.server_error(500), fake_gemini.server_error(503))
    writer.write(draft)
    assert fake.calls == 3
    assert sleeps == [0.01, 0.02]


def test_malformed_model_json_is_permanent(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(*[fake_gemini.malformed()] * 3)
    with pytest.raises(AIError) as caught:
        writer.write(draft)
    assert caught.value.retryable is False
    assert caught.value.details["reason"] == "malformed_output"
    assert fake.calls == 3  # retried in place first: output varies between calls


def test_malformed_once_then_valid_succeeds(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.malformed('{"title": 1}'))
    assert writer.write(draft).title == "example title"
    assert fake.calls == 2


def test_timeout_is_retryable(
    make_writer: Callable[..., GeminiWriter], fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.slow(5), fake_gemini.slow(5))
    writer = make_writer(timeout_s=1, max_retries=1)
    started = time.monotonic()
    with pytest.raises(AIError) as caught:
        writer.write(draft)
    assert caught.value.retryable is True
    assert caught.value.details["reason"] == "timeout"
    assert fake.calls == 2
    # two 1 s timeouts, well under the model's 2 x 5 s, with room for a loaded machine
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_permanent_and_not_retried(
    status: int, writer: GeminiWriter, fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    fake.push(fake_gemini.client_error(status))
    with pytest.raises(AIError) as caught:
        writer.write(draft)
    assert caught.value.retryable is False
    assert caught.value.details["status"] == status
    assert fake.calls == 1


def test_the_default_model_is_the_current_ga_flash_on_the_pinned_version() -> None:
    assert DEFAULT_GEMINI_MODEL == "gemini-3.8-flash"
    assert GEMINI_API_VERSION == "v1beta"
    assert AISettings().gemini_model == DEFAULT_GEMINI_MODEL


def test_settings_choose_the_writer(fake: fake_gemini.FakeGemini) -> None:
    assert writer_from_settings(AISettings()).name == "local"
    assert writer_from_settings(AISettings(writer="local", gemini_api_key="k")).name == "local"
    env = {"GEMINI_API_KEY": "fake", "GEMINI_BASE_URL": fake.base_url}
    chosen = writer_from_settings(AISettings.from_env(env))
    assert isinstance(chosen, GeminiWriter)
    assert chosen.base_url == fake.base_url and chosen.model == MODEL
    assert writer_from_settings(AISettings.from_env(env)) is chosen, "one writer per process"


def test_example_instances_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 3},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "minItems": 2},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "mode": {"enum": ["a", "b"]},
        },
        "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    assert fake_gemini.example_from_schema(schema) == {
        "n": 3,
        "tags": [{"name": "example name"}, {"name": "example name"}],
        "maybe": 0.0,
        "mode": "a",
    }
    openapi = {"type": "OBJECT", "properties": {"ok": {"type": "BOOLEAN"}}}
    assert fake_gemini.example_from_schema(openapi) == {"ok": True}


def test_jobs_writing_at_once_on_a_fresh_instance_share_one_client_and_all_succeed(
    fake: fake_gemini.FakeGemini, draft: AIResult
) -> None:
    # The processor runs several jobs per instance; right after a cold start they reach the
    # writer together. A second client made by a racing thread used to replace the first, and
    # the orphan's __del__ closed the HTTP client under the first thread's call.
    with GeminiWriter(api_key="fake", model=MODEL, base_url=fake.base_url, timeout_s=5) as shared:
        start = threading.Barrier(8)

        def write(_: int) -> str:
            start.wait()
            return shared.write(draft).title

        with ThreadPoolExecutor(max_workers=8) as pool:
            titles = list(pool.map(write, range(8)))

    assert titles == ["example title"] * 8
    assert fake.calls == 8
