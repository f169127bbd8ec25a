"""One result model per job type, plus what a writer contributes (``Narrative``).

Every result carries the ``facts`` it was built from and a Markdown rendering. Fields whose
names end in ``text``/``headline``/``evidence`` are composed in code from the facts; the
``title``, ``summary``, ``explanation`` and ``actions`` fields are the writer's narrative (a
template, or Gemini), checked so that every number it states is one of the facts.
The worker stores ``result.model_dump_json(by_alias=True)`` (the same JSON as
``model_dump(mode="json", by_alias=True)``, serialized once) as the job's result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from shared.ai.facts import FleetFacts, Severity
from shared.ai.lang import Language
from shared.jobs import JobType


class ResultModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Explanation(ResultModel):
    id: str = Field(description="id of the item this explains")
    text: str = Field(description="one or two sentences")


class Narrative(ResultModel):
    """The parts a writer writes; small on purpose (it is also Gemini's response schema)."""

    title: str = Field(description="short title of the answer")
    summary: str = Field(description="3-5 sentence summary for an operator")
    explanations: list[Explanation] = Field(description="one per item id given")
    actions: list[str] = Field(description="concrete next steps, most urgent first")


class WriterInfo(ResultModel):
    """Who wrote the narrative, and why the local writer did when Gemini was asked."""

    name: Literal["gemini", "local"]
    model: str | None = None  #: the Gemini model asked (also when it could not answer)
    fallback_reason: str | None = None  #: why Gemini's answer is not used (None: it is)
    fallback_code: str | None = None  #: machine-readable: blocked, max_tokens, ...


class ChartSeries(ResultModel):
    """Samples of one metric for a chart: an incident's key metric around its window, or a
    forecast's metric since its trend began. Added after the narrative is written, so the
    writer and the grounding check never see these numbers."""

    id: str  #: "<incident id>" or "trend-<server>-<metric>"
    kind: Literal["incident", "trend"]
    server_id: str
    metric: str
    unit: str
    start: datetime  #: time of values[0]
    interval_minutes: int
    values: list[float | None]
    baseline: float | None = None
    threshold: float | None = None  #: the limit crossed (incident) or the warning limit (trend)
    critical: float | None = None
    highlight_start: datetime | None = None  #: the incident's window
    highlight_end: datetime | None = None
    slope_per_hour: float | None = None  #: the trend's fitted line, from its last sample


class _ResultBase(ResultModel):
    language: Language
    query: str
    writer: str  #: "local" or "gemini:<model>"
    writer_info: WriterInfo | None = None
    title: str = ""
    summary: str = ""
    actions: list[str] = Field(default_factory=list)
    markdown: str = ""
    facts: FleetFacts
    series: list[ChartSeries] = Field(default_factory=list)


# ----------------------------------------------------------------------------- analysis


class Finding(ResultModel):
    id: str
    server_id: str
    role: str
    severity: Severity
    headline: str
    evidence: list[str]
    explanation: str = ""


class AnalysisResult(_ResultBase):
    type: Literal[JobType.ANALYSIS] = JobType.ANALYSIS
    findings: list[Finding]
    fleet_wide: list[str] = Field(default_factory=list)  #: one line per fleet-wide event


# ----------------------------------------------------------------------------- report


class TimelineEntry(ResultModel):
    at: datetime
    server_id: str
    text: str


class RootCauseView(ResultModel):
    server_id: str
    metric: str
    text: str
    evidence: list[str]
    confidence: float
    determined: bool = True  #: False: ``candidates`` could not be told apart
    candidates: list[str] = Field(default_factory=list)  #: best first
    confidence_text: str = ""  #: why the confidence is what it is (code-built)


class ReportIncident(ResultModel):
    id: str
    kind: str
    headline: str
    severity: Severity
    servers: list[str]
    start: datetime
    recovered_at: datetime | None
    root_cause: RootCauseView
    story: str = ""  #: the computed order and roles, in words (code-built, not canned)
    explanation: str = ""


class Recommendation(ResultModel):
    id: str
    servers: list[str]
    action_text: str
    expected_effect: str
    risk: Literal["low", "medium", "high"]
    evidence: list[str]
    explanation: str = ""


class ReportResult(_ResultBase):
    type: Literal[JobType.REPORT] = JobType.REPORT
    affected_servers: list[str]
    #: one line per fleet-wide event (code-built); those servers are not "affected" by incidents
    fleet_wide: list[str] = Field(default_factory=list)
    incidents: list[ReportIncident]
    timeline: list[TimelineEntry]
    root_cause: RootCauseView | None  #: of the most severe incident
    recommendations: list[Recommendation] = Field(default_factory=list)


# ----------------------------------------------------------------------------- optimisation


class OptimizationResult(_ResultBase):
    type: Literal[JobType.OPTIMIZATION] = JobType.OPTIMIZATION
    recommendations: list[Recommendation]


# ----------------------------------------------------------------------------- prediction


class Forecast(ResultModel):
    id: str
    server_id: str
    metric: str
    unit: str
    current: float
    slope_per_hour: float
    horizon_hours: int
    projected: float
    threshold: float
    hours_to_threshold: float | None  #: to the warning limit
    hours_to_critical: float | None
    confidence: float  #: the fit's R²
    outlook: str = "rising"  #: rising | flat | falling (a flat metric is answered too)
    note: str = ""  #: what the line says, in words (code-built)
    explanation: str = ""


class PredictionResult(_ResultBase):
    type: Literal[JobType.PREDICTION] = JobType.PREDICTION
    forecasts: list[Forecast]


AIResult = Annotated[
    AnalysisResult | ReportResult | OptimizationResult | PredictionResult,
    Field(discriminator="type"),
]
AI_RESULT_ADAPTER: TypeAdapter[AIResult] = TypeAdapter(AIResult)


def parse_result(data: object) -> AIResult:
    """Validate a stored result (camelCase JSON) back into its model."""
    return AI_RESULT_ADAPTER.validate_python(data)


def items_of(result: AIResult) -> list[tuple[str, str]]:
    """(id, code-built text) of every item a writer should explain."""
    if isinstance(result, AnalysisResult):
        return [(f.id, f.headline) for f in result.findings]
    if isinstance(result, ReportResult):
        items = [(i.id, i.headline) for i in result.incidents]
        return items + [(r.id, r.action_text) for r in result.recommendations]
    if isinstance(result, OptimizationResult):
        return [(r.id, r.action_text) for r in result.recommendations]
    return [(f.id, f"{f.server_id} {f.metric}") for f in result.forecasts]


def with_explanations(result: AIResult, texts: dict[str, str]) -> AIResult:
    """A copy of the result whose items carry the given explanations (by item id)."""

    def fill(item: BaseModel) -> BaseModel:
        item_id = getattr(item, "id", "")
        return item.model_copy(update={"explanation": texts[item_id]}) if item_id in texts else item

    if isinstance(result, AnalysisResult):
        return result.model_copy(update={"findings": [fill(f) for f in result.findings]})
    if isinstance(result, ReportResult):
        return result.model_copy(
            update={
                "incidents": [fill(i) for i in result.incidents],
                "recommendations": [fill(r) for r in result.recommendations],
            }
        )
    if isinstance(result, OptimizationResult):
        return result.model_copy(
            update={"recommendations": [fill(r) for r in result.recommendations]}
        )
    return result.model_copy(update={"forecasts": [fill(f) for f in result.forecasts]})
