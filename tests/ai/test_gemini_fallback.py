"""A model that cannot answer does not fail the job: the pipeline completes it with the local
narrative (built from the same facts before the call) and the result says which writer wrote
it and why -- unless ``GEMINI_FAILURE_POLICY=fail``. Real google-genai against the fake."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from infra.local import fake_gemini
from shared.ai import pipeline
from shared.ai.gemini import GeminiWriter
from shared.ai.writers import LocalWriter
from shared.errors import AIError
from shared.settings import DEFAULT_GEMINI_MODEL, AISettings
from tests.support import SEED_QUERY

MODEL = DEFAULT_GEMINI_MODEL
LOCAL = LocalWriter()


@pytest.fixture
def writer(fake: fake_gemini.FakeGemini) -> Iterator[GeminiWriter]:
    with GeminiWriter(api_key="fake", model=MODEL, base_url=fake.base_url, max_retries=1) as w:
        yield w


def _run(writer: GeminiWriter, settings: AISettings) -> dict[str, object]:
    result = pipeline.run(SEED_QUERY, None, lambda p, m: True, settings=settings, writer=writer)
    stored: dict[str, object] = result.model_dump(mode="json", by_alias=True)
    return stored


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (fake_gemini.stopped("SAFETY"), "blocked"),
        (fake_gemini.blocked_prompt("PROHIBITED_CONTENT"), "blocked"),
        (fake_gemini.stopped("MAX_TOKENS", text='{"title": "'), "max_tokens"),
        (fake_gemini.model_gone(MODEL), "model_unavailable"),
        (fake_gemini.rate_limited(30, limit=0), "quota_exhausted"),
    ],
)
def test_a_model_that_cannot_answer_leaves_the_local_narrative_and_says_why(
    fault: fake_gemini.Fault,
    code: str,
    writer: GeminiWriter,
    fake: fake_gemini.FakeGemini,
    settings: AISettings,
) -> None:
    fake.push(fault)

    stored = _run(writer, settings)

    assert stored["writer"] == "local"
    info = stored["writerInfo"]
    assert isinstance(info, dict)
    assert info["name"] == "local" and info["model"] == MODEL
    assert info["fallbackCode"] == code
    assert str(info["fallbackReason"]).startswith("Gemini")
    assert stored["markdown"] and stored["summary"]
    local = pipeline.run(SEED_QUERY, None, lambda p, m: True, settings=settings, writer=LOCAL)
    assert stored["summary"] == local.summary, "the local narrative, not a half answer"
    assert fake.calls == 1


def test_the_fallback_is_logged_through_shared_logs(
    writer: GeminiWriter,
    fake: fake_gemini.FakeGemini,
    settings: AISettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.push(fake_gemini.stopped("RECITATION"))
    _run(writer, settings)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    warning = next(line for line in lines if line["severity"] == "WARNING")
    assert warning["reason"] == "blocked" and "RECITATION" in warning["error"]


def test_the_fail_policy_fails_the_job_instead(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini
) -> None:
    fake.push(fake_gemini.stopped("SAFETY"))
    strict = AISettings(writer="local", gemini_failure_policy="fail")
    with pytest.raises(AIError) as caught:
        _run(writer, strict)
    assert (caught.value.retryable, caught.value.details["reason"]) == (False, "blocked")


def test_a_rejected_request_still_fails_the_job_so_a_bad_key_is_seen(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, settings: AISettings
) -> None:
    fake.push(fake_gemini.client_error(400, "API key not valid. Please pass a valid API key."))
    with pytest.raises(AIError) as caught:
        _run(writer, settings)
    assert caught.value.details["reason"] == "rejected"


def test_a_daily_quota_goes_back_to_the_processor_with_its_retry_hint(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, settings: AISettings
) -> None:
    fake.push(fake_gemini.rate_limited(5400, per="day"))
    with pytest.raises(AIError) as caught:
        _run(writer, settings)
    assert (caught.value.retryable, caught.value.retry_after) == (True, 5400)


def test_an_answer_says_gemini_wrote_it_and_which_model(
    writer: GeminiWriter, fake: fake_gemini.FakeGemini, settings: AISettings
) -> None:
    stored = _run(writer, settings)
    assert stored["writer"] == f"gemini:{MODEL}"
    assert stored["writerInfo"] == {
        "name": "gemini",
        "model": MODEL,
        "fallbackReason": None,
        "fallbackCode": None,
    }


def test_the_local_writer_by_choice_has_no_fallback_reason(settings: AISettings) -> None:
    result = pipeline.run(SEED_QUERY, None, lambda p, m: True, settings=settings)
    assert result.writer_info is not None
    assert result.writer_info.model_dump() == {
        "name": "local",
        "model": None,
        "fallback_reason": None,
        "fallback_code": None,
    }


def test_the_failure_policy_setting_is_read_and_checked() -> None:
    assert AISettings.from_env({}).gemini_failure_policy == "fallback"
    assert AISettings.from_env({"GEMINI_FAILURE_POLICY": "fail"}).gemini_failure_policy == "fail"
    with pytest.raises(Exception, match="GEMINI_FAILURE_POLICY"):
        AISettings.from_env({"GEMINI_FAILURE_POLICY": "ignore"})
