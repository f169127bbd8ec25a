"""Opt-in smoke test against the real Gemini API, for whoever deploys: ``make gemini-smoke``.

Skipped without ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``). It sends the project's exact request
(the configured ``GEMINI_MODEL``, default the current GA Flash, on the pinned API version, with
the thinking level and output cap from the settings) and fails on anything but a usable answer:
a model that is gone, a field the API version refuses, a level the model rejects, a refusal or
a cut-off all show up here with the API's own message instead of as a silent local fallback.
Two billed calls; each prints its latency.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from shared.ai import analytics, compose
from shared.ai.fleet import build_synthetic_fleet
from shared.ai.gemini import GeminiWriter
from shared.ai.lang import Language
from shared.ai.results import items_of
from shared.jobs import JobType
from shared.settings import AISettings
from tests.support import SEED_QUERY

pytestmark = pytest.mark.skipif(
    not (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")),
    reason="set GEMINI_API_KEY to run the smoke test against the real Gemini API",
)


def _settings() -> AISettings:
    # the deployed settings, except: real endpoint, and a failure must fail here, not fall back
    env = AISettings.from_env()
    return dataclasses.replace(
        env, writer="gemini", gemini_base_url=None, gemini_failure_policy="fail"
    )


@pytest.mark.parametrize(
    ("job_type", "query", "language"),
    [
        (JobType.REPORT, SEED_QUERY, "ko"),
        (JobType.PREDICTION, "Forecast disk and memory for the next day", "en"),
    ],
)
def test_the_real_model_answers_our_request_with_a_usable_narrative(
    job_type: JobType, query: str, language: Language
) -> None:
    settings = _settings()
    draft = compose.draft(job_type, analytics.analyse(build_synthetic_fleet(42)), query, language)
    with GeminiWriter.from_settings(settings) as writer:
        started = time.monotonic()
        narrative = writer.write(draft, deadline=time.monotonic() + settings.gemini_timeout_s)
        elapsed = time.monotonic() - started
    print(f"\n{settings.gemini_model} {job_type.value}/{language}: {elapsed:.1f}s")
    assert narrative.title.strip() and narrative.summary.strip()
    assert narrative.actions, "the schema asks for actions"
    known = {item_id for item_id, _ in items_of(draft)}
    answered = {e.id for e in narrative.explanations}
    assert not known or answered & known, f"no explanation for any of {sorted(known)}"
