"""Writers: what turns a result's facts into prose (title, summary, explanations, actions).

``LocalWriter`` writes from templates, deterministically, in the query's language.
``GeminiWriter`` (``shared.ai.gemini``, imported only when used) asks Gemini for the same
``Narrative`` in a structured schema; ``writer_from_settings`` builds it once per process.
``merge_narrative`` puts a narrative into the result and keeps only the parts whose numbers are
all facts, falling back to the local text otherwise. ``can_fall_back`` says which model failures
leave the local narrative in place of failing the job (``GEMINI_FAILURE_POLICY``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from shared.ai.facts import FleetFacts, Incident
from shared.ai.grounding import allowed_numbers, unsupported_numbers
from shared.ai.lang import Language
from shared.ai.results import (
    AIResult,
    AnalysisResult,
    Explanation,
    Narrative,
    OptimizationResult,
    PredictionResult,
    ReportResult,
    WriterInfo,
    items_of,
    with_explanations,
)
from shared.ai.texts import INCIDENT_KINDS, METRIC_NAMES, SEVERITIES, num, t, when
from shared.errors import AIError
from shared.settings import AISettings


class Writer(Protocol):
    """Writes the narrative of a drafted result."""

    name: str

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative: ...


def _pick(language: Language, ko: str, en: str) -> str:
    return ko if language == "ko" else en


# ----------------------------------------------------------------------------- local writer


def _status_sentence(facts: FleetFacts, language: Language) -> str:
    counts = facts.status.counts
    problems = [s for s in facts.status.servers if s.status.value != "normal"]
    if not problems:
        return _pick(
            language,
            f"현재({when(facts.status.at)}) {facts.status.total}대 모두 정상입니다.",
            f"All {facts.status.total} servers are normal now ({when(facts.status.at)}).",
        )
    names = ", ".join(f"{s.server_id}({t(SEVERITIES, s.status.value, language)})" for s in problems)
    return _pick(
        language,
        f"현재({when(facts.status.at)}) {facts.status.total}대 중 "
        f"정상 {counts['normal']}대, 주의 필요: "
        f"{names}.",
        f"Now ({when(facts.status.at)}) {counts['normal']} of {facts.status.total} servers are "
        f"normal; needs attention: {names}.",
    )


def _incident_phrase(incident: Incident, language: Language) -> str:
    kind = t(INCIDENT_KINDS, incident.kind, language)
    if not incident.root_cause.determined:
        return f"{kind}({', '.join(incident.servers)}, {when(incident.onset)})"
    return f"{incident.root_cause.server_id} {kind}({when(incident.onset)})"


def _incidents_sentence(facts: FleetFacts, language: Language) -> str:
    incidents = facts.incidents
    if not incidents:
        return _pick(
            language,
            "지난 24시간 동안 장애는 없었습니다.",
            "There were no incidents in the last 24 hours.",
        )
    listed = ", ".join(_incident_phrase(i, language) for i in incidents)
    ongoing = sum(1 for i in incidents if i.ongoing)
    state = (
        _pick(language, "모두 회복되었습니다", "all have recovered")
        if not ongoing
        else _pick(language, f"{ongoing}건은 진행 중입니다", f"{ongoing} still ongoing")
    )
    return _pick(
        language,
        f"분석 구간({when(facts.window.start)}~{when(facts.window.end)}) 동안 "
        f"{len(incidents)}건의 장애가 "
        f"있었고 {state}: {listed}.",
        f"In the window {when(facts.window.start)}–{when(facts.window.end)} there were "
        f"{len(incidents)} incidents, {state}: {listed}.",
    )


def _trend_sentence(facts: FleetFacts, language: Language) -> str:
    soon = [tr for tr in facts.trends if (tr.hours_to_warning or 0) <= 48]
    if not soon:
        return ""
    parts = ", ".join(
        _pick(
            language,
            f"{tr.server_id} {t(METRIC_NAMES, tr.metric, language)}(약 "
            f"{num(tr.hours_to_warning or 0.0)}시간 뒤)",
            f"{tr.server_id} {t(METRIC_NAMES, tr.metric, language)} (in about "
            f"{num(tr.hours_to_warning or 0.0)} h)",
        )
        for tr in soon
    )
    return _pick(
        language, f" 경고 임계에 다가가는 항목: {parts}.", f" Heading for a warning limit: {parts}."
    )


def _actions(result: AIResult) -> list[str]:
    language = result.language
    recs = result.recommendations if isinstance(result, ReportResult | OptimizationResult) else []
    actions = [r.action_text for r in recs]
    if isinstance(result, ReportResult) and not recs:
        from shared.ai.compose import recommendations

        actions = [
            r.action_text
            for r in recommendations(result.facts, language)
            if r.id.startswith("rec-inc")
        ]
    if isinstance(result, AnalysisResult | PredictionResult):
        from shared.ai.compose import recommendations

        actions = [r.action_text for r in recommendations(result.facts, language)][:5]
    return actions


def _title(result: AIResult) -> str:
    language, facts = result.language, result.facts
    span = (
        f"{when(facts.window.start)}~{when(facts.window.end)}"
        if language == "ko"
        else f"{when(facts.window.start)}–{when(facts.window.end)}"
    )
    if isinstance(result, AnalysisResult):
        return _pick(
            language,
            f"전체 서버 분석 ({facts.window.servers}대, {span})",
            f"Fleet analysis ({facts.window.servers} servers, {span})",
        )
    if isinstance(result, ReportResult):
        extra = _pick(language, " 및 최적화", " and optimisation") if result.recommendations else ""
        return _pick(
            language, f"서버 장애{extra} 리포트 ({span})", f"Incident{extra} report ({span})"
        )
    if isinstance(result, OptimizationResult):
        return _pick(
            language,
            f"서버 최적화 제안 ({facts.window.servers}대)",
            f"Optimisation recommendations ({facts.window.servers} servers)",
        )
    return _pick(language, "리소스 사용량 예측", "Resource forecast")


def _summary(result: AIResult) -> str:
    language, facts = result.language, result.facts
    text = (
        _incidents_sentence(facts, language)
        + " "
        + _status_sentence(facts, language)
        + _trend_sentence(facts, language)
    )
    if isinstance(result, OptimizationResult | ReportResult) and result.recommendations:
        merge = sum(g.servers_saved for g in facts.consolidations)
        text += _pick(
            language,
            f" 최적화 제안 {len(result.recommendations)}건"
            + (f"(통합 시 서버 {merge}대 절감 가능)" if merge else "")
            + ".",
            f" {len(result.recommendations)} optimisation recommendations"
            + (f" (consolidation saves {merge} server(s))" if merge else "")
            + ".",
        )
    return text


def _explanation(result: AIResult, item_id: str) -> str:
    language = result.language
    if isinstance(result, ReportResult):
        incident = next((i for i in result.incidents if i.id == item_id), None)
        if incident is not None:
            # the story compose computed from the order and roles, never a fixed one per kind
            return incident.story or incident.root_cause.text
    if isinstance(result, PredictionResult):
        fc = next(f for f in result.forecasts if f.id == item_id)
        if fc.outlook != "rising":
            return ""  # the forecast's own note says it is flat; no projection to add
        return _pick(
            language,
            f"최근 추세(R² {num(fc.confidence)})가 이어지면 {fc.horizon_hours}시간 뒤 "
            f"{num(fc.projected)}{fc.unit}에 이릅니다.",
            f"If the recent trend (R² {num(fc.confidence)}) holds, it reaches "
            f"{num(fc.projected)}{fc.unit} in {fc.horizon_hours} h.",
        )
    return ""


class LocalWriter:
    """Template prose from the facts: deterministic, no network, Korean or English."""

    name = "local"

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative:
        explanations = [
            Explanation(id=item_id, text=text)
            for item_id, _ in items_of(draft)
            if (text := _explanation(draft, item_id))
        ]
        return Narrative(
            title=_title(draft),
            summary=_summary(draft).strip(),
            explanations=explanations,
            actions=_actions(draft),
        )


# ----------------------------------------------------------------------------- merging


def merge_narrative(
    draft: AIResult,
    narrative: Narrative,
    fallback: Narrative,
    writer_name: str,
    info: WriterInfo | None = None,
) -> AIResult:
    """The draft with the narrative's text; any part stating a number the facts lack is replaced
    by the fallback's (so a model cannot put an invented figure in front of a user)."""
    allowed = allowed_numbers(draft.model_dump(mode="json", by_alias=True), draft.query)

    def grounded(text: str) -> bool:
        return not unsupported_numbers(text, allowed)

    title = (
        narrative.title if narrative.title.strip() and grounded(narrative.title) else fallback.title
    )
    summary = (
        narrative.summary
        if narrative.summary.strip() and grounded(narrative.summary)
        else fallback.summary
    )
    actions = [a for a in narrative.actions if a.strip() and grounded(a)] or fallback.actions
    known = {item_id for item_id, _ in items_of(draft)}
    texts = {e.id: e.text for e in fallback.explanations}
    texts.update(
        {
            e.id: e.text
            for e in narrative.explanations
            if e.id in known and e.text.strip() and grounded(e.text)
        }
    )
    merged = with_explanations(draft, texts)
    return merged.model_copy(
        update={
            "title": title,
            "summary": summary,
            "actions": actions,
            "writer": writer_name,
            "writer_info": info,
        }
    )


# ----------------------------------------------------------------------------- choosing

#: Permanent model failures where the model cannot answer this job: the local narrative
#: (already built from the same facts) stands in. A *rejected* request (400/401/403: a bad
#: key, a malformed request) is a deployment defect and fails the job so that it is seen.
FALLBACK_REASONS = frozenset(
    {"model_unavailable", "blocked", "max_tokens", "stopped", "malformed_output"}
)


def can_fall_back(error: AIError) -> bool:
    """Whether the local narrative may stand in for a failed model call: a permanent "cannot
    answer", or a quota of zero (waiting for it cannot help)."""
    reason = error.details.get("reason")
    if error.details.get("quota") == "zero":
        return True
    return not error.retryable and reason in FALLBACK_REASONS


def writer_info(writer: Writer, fallback: AIError | None = None) -> WriterInfo:
    """What the result says about its writer (``writerInfo`` on the wire)."""
    model = getattr(writer, "model", None)
    if fallback is not None:
        return WriterInfo(
            name="local",
            model=model,
            fallback_reason=fallback.message,
            fallback_code=str(fallback.details.get("reason") or fallback.code),
        )
    return WriterInfo(name="local" if isinstance(writer, LocalWriter) else "gemini", model=model)


@lru_cache(maxsize=4)
def _gemini_writer(settings: AISettings) -> Writer:
    # one writer (and its HTTP connection pool) per process and setting, created lazily and
    # reused by every job the instance runs -- not one per job, never closed
    from shared.ai.gemini import GeminiWriter

    return GeminiWriter.from_settings(settings)


def writer_from_settings(settings: AISettings) -> Writer:
    """Gemini when a key is configured (unless ``AI_WRITER=local``), else the local writer."""
    if settings.use_gemini:
        return _gemini_writer(settings)
    return LocalWriter()
