"""Markdown for a result, in the result's language; numbers come from the result's fields."""

from __future__ import annotations

from shared.ai.lang import Language
from shared.ai.results import (
    AIResult,
    AnalysisResult,
    Forecast,
    OptimizationResult,
    PredictionResult,
    Recommendation,
    ReportResult,
    RootCauseView,
)
from shared.ai.texts import LABELS, METRIC_NAMES, RISKS, SEVERITIES, num, t, when

_ICONS = {"normal": "🟢", "warning": "🟡", "critical": "🔴", "down": "⚫"}


def _h(level: int, key: str, language: Language) -> str:
    return f"{'#' * level} {t(LABELS, key, language)}"


def _bullets(lines: list[str], indent: str = "") -> list[str]:
    return [f"{indent}- {line}" for line in lines]


def _root_cause(view: RootCauseView, language: Language) -> list[str]:
    conf = f"{t(LABELS, 'confidence', language)} {num(round(view.confidence * 100))}%"
    lines = [f"**{t(LABELS, 'root_cause', language)}** ({conf}): {view.text}"]
    if view.confidence_text:
        lines.append(f"  - {t(LABELS, 'why_confidence', language)}: {view.confidence_text}")
    return lines + _bullets(view.evidence, "  ")


def _fleet_wide(lines: list[str], language: Language) -> list[str]:
    if not lines:
        return []
    return ["", _h(2, "fleet_wide", language), *_bullets(lines)]


def _recommendation(rec: Recommendation, language: Language) -> list[str]:
    lines = [
        f"- **{rec.action_text}**",
        f"  - {t(LABELS, 'expected_effect', language)}: {rec.expected_effect}",
        f"  - {t(LABELS, 'risk', language)}: {t(RISKS, rec.risk, language)}",
        *_bullets([f"{t(LABELS, 'evidence', language)}: {line}" for line in rec.evidence], "  "),
    ]
    if rec.explanation:
        lines.append(f"  - {rec.explanation}")
    return lines


def _analysis(result: AnalysisResult) -> list[str]:
    lang = result.language
    lines = [_h(2, "findings", lang)]
    for f in result.findings:
        lines.append(
            f"- {_ICONS[f.severity.value]} **{f.server_id}** "
            f"({t(SEVERITIES, f.severity.value, lang)}): {f.headline}"
        )
        lines += _bullets(f.evidence, "  ")
        if f.explanation:
            lines.append(f"  - {f.explanation}")
    return lines + _fleet_wide(result.fleet_wide, lang)


def _report(result: ReportResult) -> list[str]:
    lang = result.language
    lines = [
        f"**{t(LABELS, 'affected', lang)}**: "
        f"{', '.join(result.affected_servers) or t(LABELS, 'none', lang)}",
        "",
    ]
    lines.append(_h(2, "incidents", lang))
    for number, incident in enumerate(result.incidents, 1):
        icon = _ICONS[incident.severity.value]
        lines += ["", f"### {number}. {icon} {incident.headline}"]
        # the writer's explanation when it gave one, else the story computed from the facts
        if incident.explanation or incident.story:
            lines.append(incident.explanation or incident.story)
        lines += _root_cause(incident.root_cause, lang)
    lines += _fleet_wide(result.fleet_wide, lang)
    # a GFM table needs a header row: "| | |" rendered an empty <thead> above the rows
    header = f"| {t(LABELS, 'time', lang)} | {t(LABELS, 'event', lang)} |"
    lines += ["", _h(2, "timeline", lang), "", header, "|---|---|"]
    lines += [f"| {when(entry.at)} | {entry.text} |" for entry in result.timeline]
    if result.recommendations:
        lines += ["", _h(2, "recommendations", lang)]
        for rec in result.recommendations:
            lines += _recommendation(rec, lang)
    return lines


def _optimization(result: OptimizationResult) -> list[str]:
    lines = [_h(2, "recommendations", result.language)]
    for rec in result.recommendations:
        lines += _recommendation(rec, result.language)
    return lines


def _forecast(fc: Forecast, language: Language) -> str:
    metric = t(METRIC_NAMES, fc.metric, language)
    to_warning = "-" if fc.hours_to_threshold is None else f"{num(fc.hours_to_threshold)}h"
    to_critical = "-" if fc.hours_to_critical is None else f"{num(fc.hours_to_critical)}h"
    return (
        f"| {fc.server_id} | {metric} | {num(fc.current)}{fc.unit} | "
        f"{'+' if fc.slope_per_hour >= 0 else ''}{num(fc.slope_per_hour)}{fc.unit}/h "
        f"| {num(fc.projected)}{fc.unit} | {to_warning} | {to_critical} | {num(fc.confidence)} |"
    )


def _prediction(result: PredictionResult) -> list[str]:
    lang = result.language
    header = (
        "| 서버 | 지표 | 현재 | 추세 | 24시간 뒤 | 경고까지 | 위험까지 | R² |"
        if lang == "ko"
        else "| Server | Metric | Now | Trend | In 24 h | To warning | To critical | R² |"
    )
    lines = [_h(2, "forecasts", lang), "", header, "|---|---|---|---|---|---|---|---|"]
    lines += [_forecast(fc, lang) for fc in result.forecasts]
    lines += [""] if result.forecasts else []
    for fc in result.forecasts:
        text = " ".join(part for part in (fc.note, fc.explanation) if part)
        if text:
            lines.append(f"- **{fc.server_id}**: {text}")
    return lines


def render_markdown(result: AIResult) -> str:
    lang = result.language
    lines = [f"# {result.title}", "", result.summary, ""]
    if isinstance(result, AnalysisResult):
        lines += _analysis(result)
    elif isinstance(result, ReportResult):
        lines += _report(result)
    elif isinstance(result, OptimizationResult):
        lines += _optimization(result)
    else:
        lines += _prediction(result)
    if result.actions:
        lines += ["", _h(2, "actions", lang)]
        lines += [f"{i}. {action}" for i, action in enumerate(result.actions, 1)]
    window = result.facts.window
    lines += [
        "",
        f"_{t(LABELS, 'window', lang)}: {when(window.start)} – {when(window.end)}, "
        f"{window.servers} servers, {window.interval_minutes} min · "
        f"{t(LABELS, 'facts_note', lang)}_",
    ]
    return "\n".join(lines) + "\n"
