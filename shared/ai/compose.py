"""Turns facts into a result's skeleton: every item, headline and evidence line, in code.

The writer later adds the narrative (title, summary, explanations, actions); nothing here asks a
model. All numbers are printed with ``texts.num`` straight from the facts.
"""

from __future__ import annotations

from shared.ai.facts import Capacity, Episode, FleetFacts, Incident, Severity, Trend
from shared.ai.lang import Language
from shared.ai.results import (
    AIResult,
    AnalysisResult,
    Finding,
    Forecast,
    OptimizationResult,
    PredictionResult,
    Recommendation,
    ReportIncident,
    ReportResult,
    RootCauseView,
    TimelineEntry,
)
from shared.ai.texts import (
    EVENTS,
    INCIDENT_KINDS,
    METRIC_NAMES,
    SEVERITIES,
    hhmm,
    num,
    t,
    value_with_unit,
    when,
)
from shared.jobs import JobType

FORECAST_HORIZON_HOURS = 24


def _pick(language: Language, ko: str, en: str) -> str:
    return ko if language == "ko" else en


def episode_line(episode: Episode, language: Language) -> str:
    """``db-01 디스크 I/O 96% (12-23 02:30, 평소 22.4%)``."""
    metric = t(METRIC_NAMES, episode.metric, language)
    if episode.metric == "up":
        return _pick(
            language,
            f"{episode.server_id} {when(episode.start)} 응답 없음(다운)",
            f"{episode.server_id} down at {when(episode.start)}",
        )
    peak = value_with_unit(episode.peak, episode.unit)
    base = value_with_unit(episode.baseline, episode.unit)
    limit = ""
    if episode.threshold is not None:
        level = t(SEVERITIES, episode.severity.value, language)
        limit = _pick(
            language,
            f", {level} 임계 {value_with_unit(episode.threshold, episode.unit)} 초과",
            f", over the {level} limit {value_with_unit(episode.threshold, episode.unit)}",
        )
    return _pick(
        language,
        f"{episode.server_id} {metric} 최고 {peak} ({when(episode.peak_at)}, 평소 {base}{limit})",
        f"{episode.server_id} {metric} peaked at {peak} ({when(episode.peak_at)}, usually "
        f"{base}{limit})",
    )


def incident_headline(incident: Incident, language: Language) -> str:
    kind = t(INCIDENT_KINDS, incident.kind, language)
    root = incident.root_cause.server_id
    followers = [s for s in incident.servers if s != root]
    span = (
        f"{when(incident.start)}–{hhmm(incident.recovered_at)}"
        if incident.recovered_at
        else when(incident.start)
    )
    if not followers:
        return f"{root} {kind} ({span})"
    return _pick(
        language,
        f"{root} {kind} → {', '.join(followers)} 영향 ({span})",
        f"{root} {kind} → affected {', '.join(followers)} ({span})",
    )


def root_cause_view(incident: Incident, language: Language) -> RootCauseView:
    cause = incident.root_cause
    root_eps = [
        e for e in incident.episodes if e.server_id == cause.server_id and e.metric == cause.metric
    ]
    followers = [s for s in incident.servers if s != cause.server_id]
    metric = t(METRIC_NAMES, cause.metric, language)
    kind = t(INCIDENT_KINDS, cause.kind, language)
    text = _pick(
        language,
        f"{cause.server_id}의 {metric} 이상({kind})이 먼저 시작되었습니다",
        f"{cause.server_id}'s {metric} went wrong first ({kind})",
    )
    if followers:
        text += _pick(
            language,
            f". {cause.lead_minutes}분 뒤 {', '.join(followers)}이(가) 뒤따랐습니다",
            f"; {', '.join(followers)} followed {cause.lead_minutes} minutes later",
        )
    return RootCauseView(
        server_id=cause.server_id,
        metric=cause.metric,
        text=text + ".",
        evidence=[
            episode_line(e, language)
            for e in root_eps + [e for e in incident.episodes if e not in root_eps]
        ],
        confidence=cause.confidence,
    )


# ----------------------------------------------------------------------------- analysis


def _trend_line(trend: Trend, language: Language) -> str:
    metric = t(METRIC_NAMES, trend.metric, language)
    current = value_with_unit(trend.current, trend.unit)
    warning = value_with_unit(trend.warning, trend.unit)
    slope = f"{num(trend.slope_per_hour)}{trend.unit}"
    hours = num(trend.hours_to_warning or 0.0)
    return _pick(
        language,
        f"{metric} {current}, 시간당 +{slope} 증가 추세 → "
        f"약 {hours}시간 뒤 경고 임계 {warning} 도달 (R² "
        f"{num(trend.r2)})",
        f"{metric} at {current}, rising {slope}/h → warning limit {warning} in about {hours} h "
        f"(R² {num(trend.r2)})",
    )


def _capacity_line(row: Capacity, language: Language) -> str:
    return _pick(
        language,
        f"CPU p95 {num(row.cpu_p95)}%, 메모리 p95 {num(row.memory_p95)}% ({row.cpu_cores}코어, "
        f"{num(row.memory_gb)}GB)",
        f"CPU p95 {num(row.cpu_p95)}%, memory p95 {num(row.memory_p95)}% ({row.cpu_cores} cores, "
        f"{num(row.memory_gb)} GB)",
    )


_VERDICTS = {
    "over_provisioned": ("자원 과다 할당(사용률 낮음)", "over-provisioned (little used)"),
    "under_provisioned": ("자원 부족(사용률 높음)", "under-provisioned (running hot)"),
}


def _finding(facts: FleetFacts, row: Capacity, language: Language) -> Finding:
    server = row.server_id
    incidents = [i for i in facts.incidents if server in i.servers]
    trends = [tr for tr in facts.trends if tr.server_id == server]
    status = next(s for s in facts.status.servers if s.server_id == server)
    severity = max(
        [status.status]
        + [e.severity for i in incidents for e in i.episodes if e.server_id == server],
        key=lambda s: s.rank,
    )
    if trends and severity == Severity.NORMAL:
        severity = Severity.WARNING
    parts = [
        t(INCIDENT_KINDS, i.kind, language)
        if i.root_cause.server_id == server
        else _pick(
            language, f"{i.root_cause.server_id} 장애 영향", f"hit by {i.root_cause.server_id}"
        )
        for i in incidents
    ]
    parts += [
        _pick(
            language,
            f"{t(METRIC_NAMES, tr.metric, language)} 증가 추세",
            f"{t(METRIC_NAMES, tr.metric, language)} rising",
        )
        for tr in trends
    ]
    if row.verdict in _VERDICTS:
        parts.append(_pick(language, *_VERDICTS[row.verdict]))
    headline = ", ".join(parts) if parts else _pick(language, "정상 범위", "within normal range")
    evidence = [
        episode_line(e, language) for i in incidents for e in i.episodes if e.server_id == server
    ]
    evidence += [_trend_line(tr, language) for tr in trends]
    evidence.append(_capacity_line(row, language))
    return Finding(
        id=server,
        server_id=server,
        role=row.role,
        severity=severity,
        headline=headline,
        evidence=evidence,
    )


def analysis_draft(facts: FleetFacts, query: str, language: Language) -> AnalysisResult:
    findings = [_finding(facts, row, language) for row in facts.capacity]
    findings.sort(key=lambda f: -f.severity.rank)  # stable: keeps fleet order within a level
    return AnalysisResult(language=language, query=query, writer="", facts=facts, findings=findings)


# ----------------------------------------------------------------------------- report


def _timeline(incident: Incident, language: Language) -> list[TimelineEntry]:
    cause = incident.root_cause
    entries = []
    seen_servers: set[str] = set()
    for event in incident.timeline:
        is_root = event.server_id == cause.server_id and event.metric == cause.metric
        first_on_server = event.event in {"started", "down"} and event.server_id not in seen_servers
        if not (is_root and event.event != "recovered") and not first_on_server:
            continue
        seen_servers.add(event.server_id)
        metric = t(METRIC_NAMES, event.metric, language)
        what = t(EVENTS, event.event, language)
        value = f" {value_with_unit(event.value, event.unit)}" if event.event == "peak" else ""
        entries.append(
            TimelineEntry(
                at=event.at,
                server_id=event.server_id,
                text=f"{event.server_id} {metric} {what}{value}",
            )
        )
    if incident.recovered_at is not None:
        entries.append(
            TimelineEntry(
                at=incident.recovered_at,
                server_id=cause.server_id,
                text=_pick(
                    language,
                    f"{', '.join(incident.servers)} 정상 회복",
                    f"{', '.join(incident.servers)} back to normal",
                ),
            )
        )
    return entries


def report_draft(
    facts: FleetFacts, query: str, language: Language, *, with_optimisation: bool
) -> ReportResult:
    incidents = [
        ReportIncident(
            id=i.id,
            kind=i.kind,
            headline=incident_headline(i, language),
            severity=i.severity,
            servers=i.servers,
            start=i.start,
            recovered_at=i.recovered_at,
            root_cause=root_cause_view(i, language),
        )
        for i in facts.incidents
    ]
    worst = max(
        facts.incidents, key=lambda i: (i.severity.rank, i.root_cause.confidence), default=None
    )
    timeline = sorted(
        (e for i in facts.incidents for e in _timeline(i, language)), key=lambda e: e.at
    )
    return ReportResult(
        language=language,
        query=query,
        writer="",
        facts=facts,
        affected_servers=list(dict.fromkeys(s for i in facts.incidents for s in i.servers)),
        incidents=incidents,
        timeline=timeline,
        root_cause=None if worst is None else root_cause_view(worst, language),
        recommendations=recommendations(facts, language) if with_optimisation else [],
    )


# ----------------------------------------------------------------------------- optimisation

_INCIDENT_FIXES: dict[str, tuple[str, str, str, str, str]] = {
    # kind -> (ko action, en action, ko effect, en effect, risk)
    "disk_io_saturation": (
        "{s}: 백업을 복제본으로 옮기거나 백업 I/O 대역폭을 제한",
        "{s}: run the backup on a replica or throttle its I/O",
        "백업 시간대의 {f} 응답 지연 제거",
        "no more slow responses on {f} during the backup",
        "low",
    ),
    "memory_leak": (
        "{s}: 메모리 누수 원인 수정, 그 전까지 maxmemory 제한과 계획 재시작",
        "{s}: fix the memory leak; until then cap maxmemory and restart on a schedule",
        "예기치 않은 다운 방지",
        "no unplanned restart",
        "medium",
    ),
    "cpu_spike": (
        "{s}: 최근 배포와 작업 부하 점검, 오토스케일링 기준 조정",
        "{s}: review the latest deploy and workload, tune autoscaling",
        "{f} 응답 지연 재발 방지",
        "{f} stay fast when load jumps",
        "low",
    ),
    "packet_loss": (
        "{s}: NIC·업링크 점검, 다른 로드밸런서로 페일오버 구성",
        "{s}: check the NIC and uplink; configure failover to the other load balancer",
        "{f} 트래픽 손실과 지연 방지",
        "no traffic loss or latency on {f}",
        "medium",
    ),
}


def _incident_recommendation(incident: Incident, language: Language) -> Recommendation | None:
    fix = _INCIDENT_FIXES.get(incident.kind)
    if fix is None:
        return None
    root = incident.root_cause.server_id
    followers = ", ".join(s for s in incident.servers if s != root) or root
    index = 0 if language == "ko" else 1
    return Recommendation(
        id=f"rec-{incident.id}",
        servers=incident.servers,
        action_text=fix[index].format(s=root, f=followers),
        expected_effect=fix[2 + index].format(s=root, f=followers),
        risk=fix[4],  # type: ignore[arg-type]
        evidence=[episode_line(e, language) for e in incident.episodes if e.server_id == root],
    )


def _trend_recommendation(trend: Trend, language: Language) -> Recommendation:
    metric = t(METRIC_NAMES, trend.metric, language)
    critical = num(trend.hours_to_critical) if trend.hours_to_critical is not None else None
    effect = _pick(
        language,
        f"약 {num(trend.hours_to_warning or 0.0)}시간 뒤 경고 임계 도달 예방",
        f"avoids hitting the warning limit in about {num(trend.hours_to_warning or 0.0)} h",
    )
    if critical is not None:
        effect += _pick(
            language, f" (위험 임계까지 약 {critical}시간)", f" (critical in about {critical} h)"
        )
    return Recommendation(
        id=f"rec-{trend.server_id}-{trend.metric}",
        servers=[trend.server_id],
        action_text=_pick(
            language,
            f"{trend.server_id}: {metric} 여유 확보 (증설 또는 정리)",
            f"{trend.server_id}: make room for {metric} (grow or clean up)",
        ),
        expected_effect=effect,
        risk="low",
        evidence=[_trend_line(trend, language)],
    )


def recommendations(facts: FleetFacts, language: Language) -> list[Recommendation]:
    """Capacity, consolidation, trend and incident-prevention recommendations, most urgent first."""
    recs = [r for i in facts.incidents if (r := _incident_recommendation(i, language)) is not None]
    recs += [
        _trend_recommendation(tr, language)
        for tr in facts.trends
        if (tr.hours_to_warning or 0) <= 48
    ]
    by_server = {row.server_id: row for row in facts.capacity}
    for group in facts.consolidations:
        names = ", ".join(group.servers)
        recs.append(
            Recommendation(
                id=f"rec-merge-{'-'.join(group.servers)}",
                servers=group.servers,
                action_text=_pick(
                    language,
                    f"{names} 통합 ({group.datacenter})",
                    f"consolidate {names} ({group.datacenter})",
                ),
                expected_effect=_pick(
                    language,
                    f"서버 {group.servers_saved}대 절감, 통합 후 예상 p95 CPU "
                    f"{num(group.combined_cpu_p95)}%, 메모리 {num(group.combined_memory_p95)}%",
                    f"{group.servers_saved} server(s) fewer; merged p95 about CPU "
                    f"{num(group.combined_cpu_p95)}%, memory {num(group.combined_memory_p95)}%",
                ),
                risk="medium",
                evidence=[f"{s}: {_capacity_line(by_server[s], language)}" for s in group.servers],
            )
        )
    merged = {s for g in facts.consolidations for s in g.servers}
    for row in facts.capacity:
        if row.verdict == "under_provisioned" or (
            row.verdict == "over_provisioned" and row.server_id not in merged
        ):
            grow = row.verdict == "under_provisioned"
            recs.append(
                Recommendation(
                    id=f"rec-size-{row.server_id}",
                    servers=[row.server_id],
                    action_text=_pick(
                        language,
                        f"{row.server_id}: "
                        + ("CPU/메모리 증설 또는 부하 분산" if grow else "더 작은 사양으로 축소"),
                        f"{row.server_id}: "
                        + (
                            "add CPU/memory or spread the load"
                            if grow
                            else "downsize to a smaller machine"
                        ),
                    ),
                    expected_effect=_pick(
                        language,
                        "피크 시간대 여유 확보" if grow else "비용 절감",
                        "headroom at peak" if grow else "lower cost",
                    ),
                    risk="low" if grow else "medium",
                    evidence=[_capacity_line(row, language)],
                )
            )
    return recs


def optimization_draft(facts: FleetFacts, query: str, language: Language) -> OptimizationResult:
    return OptimizationResult(
        language=language,
        query=query,
        writer="",
        facts=facts,
        recommendations=recommendations(facts, language),
    )


# ----------------------------------------------------------------------------- prediction


def forecast(trend: Trend) -> Forecast:
    projected = trend.current + trend.slope_per_hour * FORECAST_HORIZON_HOURS
    if trend.unit == "%":
        projected = min(projected, 100.0)
    return Forecast(
        id=f"fc-{trend.server_id}-{trend.metric}",
        server_id=trend.server_id,
        metric=trend.metric,
        unit=trend.unit,
        current=trend.current,
        slope_per_hour=trend.slope_per_hour,
        horizon_hours=FORECAST_HORIZON_HOURS,
        projected=round(projected, 1),
        threshold=trend.warning,
        hours_to_threshold=trend.hours_to_warning,
        hours_to_critical=trend.hours_to_critical,
        confidence=trend.r2,
    )


def prediction_draft(facts: FleetFacts, query: str, language: Language) -> PredictionResult:
    return PredictionResult(
        language=language,
        query=query,
        writer="",
        facts=facts,
        forecasts=[forecast(tr) for tr in facts.trends],
    )


def draft(
    job_type: JobType,
    facts: FleetFacts,
    query: str,
    language: Language,
    *,
    with_optimisation: bool = False,
) -> AIResult:
    """The result for ``job_type`` with every code-built part filled in and no narrative yet."""
    if job_type == JobType.ANALYSIS:
        return analysis_draft(facts, query, language)
    if job_type == JobType.REPORT:
        return report_draft(facts, query, language, with_optimisation=with_optimisation)
    if job_type == JobType.OPTIMIZATION:
        return optimization_draft(facts, query, language)
    return prediction_draft(facts, query, language)
