"""The AI job's steps, as the seed lays them out: start 0 → collecting data 20 → AI analysis
50 → formatting 80 → done 100.

``on_progress`` is asked before each step whether to go on; ``False`` (the job was cancelled)
stops the run at once with ``JobCancelled`` and nothing is written. A caller that writes its
steps in batches answers from what it last heard, so it is also asked (``before_model``) right
before the model is called. ``deadline`` (a
``time.monotonic()`` value) ends the run with ``DeadlineExceeded`` before the caller's own
timeout, and bounds the model's request timeout.

``LOCAL_STEP_DELAY_MS`` (local demos only; 0, no wait at all, in tests and production) pauses
after each step but the last, so a person can watch a job that would otherwise end in a third
of a second. The pause is at most 5 s and never outlasts the deadline; a cancel made during it
is seen as any other cancel is, by the next progress write.

The facts and the local narrative exist before the model is asked, so when the model cannot
answer (``writers.can_fall_back``: model gone, answer blocked or cut off, zero quota) the job
completes with the local narrative and ``writerInfo`` says so -- unless
``GEMINI_FAILURE_POLICY=fail``. Retryable failures (5xx, a short or daily quota) still go back
to the processor, which schedules the next attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared import logs
from shared.ai import analytics, compose
from shared.ai.fleet import FleetSource, fleet_source_from_settings
from shared.ai.lang import Language, detect_language, step_message
from shared.ai.render import render_markdown
from shared.ai.results import AIResult, Narrative, WriterInfo
from shared.ai.router import classify, wants_optimisation
from shared.ai.writers import (
    LocalWriter,
    Writer,
    can_fall_back,
    merge_narrative,
    writer_from_settings,
    writer_info,
)
from shared.errors import AIError, DeadlineExceeded, JobCancelled
from shared.jobs import JobType
from shared.settings import AISettings

ProgressCallback = Callable[[int, str], bool]


class _Steps:
    """Reports progress and enforces cancel and deadline between steps."""

    def __init__(
        self,
        on_progress: ProgressCallback,
        language: Language,
        deadline: float | None,
        pause_s: float = 0.0,
    ) -> None:
        self.on_progress = on_progress
        self.language = language
        self.deadline = deadline
        self.pause_s = pause_s

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the AI work ran out of time", details={"step": "deadline"})

    def step(self, percent: int) -> None:
        self.check_deadline()
        message = step_message(percent, self.language)
        if not self.on_progress(percent, message):
            raise JobCancelled("job cancelled", details={"percent": percent})
        if self.pause_s and percent < 100:
            self._pause()

    def _pause(self) -> None:
        """The local pacing: the step stays on screen, but never past the deadline (the next
        step's deadline check then ends the run)."""
        wait = self.pause_s
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - time.monotonic()))
        time.sleep(wait)


def _narrate(
    chosen: Writer,
    draft: AIResult,
    fallback: Narrative,
    *,
    settings: AISettings,
    deadline: float | None,
) -> tuple[Narrative, str, WriterInfo]:
    """The narrative, the writer's name and what the result says about it."""
    if isinstance(chosen, LocalWriter):
        return fallback, chosen.name, writer_info(chosen)
    try:
        narrative = chosen.write(draft, deadline=deadline)
    except AIError as exc:
        if settings.gemini_failure_policy == "fail" or not can_fall_back(exc):
            raise
        logs.warning(
            "model could not answer; the local narrative stands in",
            writer=chosen.name,
            reason=exc.details.get("reason"),
            error=exc.message,
        )
        return fallback, LocalWriter.name, writer_info(chosen, fallback=exc)
    return narrative, chosen.name, writer_info(chosen)


def run(
    query: str,
    job_type: JobType | None,
    on_progress: ProgressCallback,
    *,
    settings: AISettings,
    deadline: float | None = None,
    writer: Writer | None = None,
    fleet: FleetSource | None = None,
    before_model: Callable[[], bool] | None = None,
) -> AIResult:
    """Run one AI job and return its result (with Markdown); see the module docstring.
    ``before_model`` is asked, like ``on_progress``, right before a model is called (the step
    that costs quota), so a caller that batches its progress writes can check for a cancel
    there."""
    language = detect_language(query)
    steps = _Steps(on_progress, language, deadline, settings.local_step_delay_ms / 1000)
    steps.step(0)
    job_type = job_type or classify(query, settings).job_type
    source = fleet or fleet_source_from_settings(settings.fleet_source, settings.fleet_seed)

    steps.step(20)
    fleet_data = source.load()
    facts = analytics.analyse(fleet_data)
    draft = compose.draft(
        job_type, facts, query, language, with_optimisation=wants_optimisation(query)
    )

    steps.step(50)
    local = LocalWriter()
    fallback = local.write(draft)
    chosen = writer or writer_from_settings(settings)
    if not isinstance(chosen, LocalWriter) and before_model is not None and not before_model():
        raise JobCancelled("job cancelled", details={"percent": 50})
    narrative, name, info = _narrate(chosen, draft, fallback, settings=settings, deadline=deadline)
    steps.check_deadline()

    steps.step(80)
    result = merge_narrative(draft, narrative, fallback, name, info)
    result = result.model_copy(
        update={
            "markdown": render_markdown(result),
            "series": analytics.chart_series(fleet_data, facts),
        }
    )

    steps.step(100)
    return result
