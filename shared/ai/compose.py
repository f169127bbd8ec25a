"""Turns facts into a result's skeleton: every item, headline and evidence line, in code.

The writer later adds the narrative (title, summary, explanations, actions); nothing here asks a
model. All numbers are printed with ``texts.num`` straight from the facts.

One time per event, the same wherever it is named: a signal (or a server) went wrong at its
*onset* (interpolated; ``Incident.onset`` for the incident as a whole) in the headline, the
summary, the order sentence, the evidence and the timeline; an extreme at the sample where it
was measured (``peak_at``); a recovery at the first normal sample (``recovered_at``).
Direction words (peak or low, rose or fell) follow the sign of the change (``texts.signed``).
"""

from __future__ import annotations

from datetime import timedelta

from shared.ai.analytics import TREND_MAX_HOURS, TREND_METRICS, TREND_MIN_R2
from shared.ai.facts import (
    Candidate,
    Capacity,
    Episode,
    FleetFacts,
    FleetWideEvent,
    Incident,
    Severity,
    Trend,
)
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
    EXTREMES,
    INCIDENT_KINDS,
    METRIC_NAMES,
    ROLES,
    SEVERITIES,
    SHIFTS,
    hhmm,
    num,
    signed,
    t,
    value_with_unit,
    when,
)
from shared.jobs import JobType

FORECAST_HORIZON_HOURS = 24


def _pick(language: Language, ko: str, en: str) -> str:
    return ko if language == "ko" else en


def episode_line(episode: Episode, language: Language) -> str:
    """``db-01 디스크 I/O 최고 96% (12-23 02:30, 평소 22.4%)``; a drop is ``최저``/``fell to``."""
    metric = t(METRIC_NAMES, episode.metric, language)
    if episode.metric == "up":
        return _pick(
            language,
            f"{episode.server_id} {when(episode.onset)} 응답 없음(다운)",
            f"{episode.server_id} down at {when(episode.onset)}",
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
    extreme = signed(EXTREMES, episode.direction, language)
    return _pick(
        language,
        f"{episode.server_id} {metric} {extreme} {peak} ({when(episode.peak_at)}, 평소 {base}"
        f"{limit})",
        f"{episode.server_id} {metric} {extreme} {peak} ({when(episode.peak_at)}, usually "
        f"{base}{limit})",
    )


def incident_headline(incident: Incident, language: Language) -> str:
    kind = t(INCIDENT_KINDS, incident.kind, language)
    cause = incident.root_cause
    root = cause.server_id
    followers = [s for s in incident.servers if s != root]
    span = (
        f"{when(incident.onset)}–{hhmm(incident.recovered_at)}"
        if incident.recovered_at
        else when(incident.onset)
    )
    if not cause.determined:
        return _pick(
            language,
            f"{kind}: {', '.join(incident.servers)} (근본 원인 미확정) ({span})",
            f"{kind} on {', '.join(incident.servers)} (root cause undetermined) ({span})",
        )
    if not followers:
        return f"{root} {kind} ({span})"
    return _pick(
        language,
        f"{root} {kind} → {', '.join(followers)} 영향 ({span})",
        f"{root} {kind} → affected {', '.join(followers)} ({span})",
    )


def _roles(facts: FleetFacts) -> dict[str, str]:
    return {row.server_id: row.role for row in facts.capacity}


def _who(servers: list[str], roles: dict[str, str], language: Language) -> str:
    """``a, b (web), c (database)``: servers grouped by role, each group with its role."""
    groups: dict[str, list[str]] = {}
    for server in servers:
        groups.setdefault(roles.get(server, ""), []).append(server)
    return ", ".join(
        f"{', '.join(members)} ({t(ROLES, role, language)})" for role, members in groups.items()
    )


def _same_moment(a: Candidate, b: Candidate) -> bool:
    """Onsets less than a minute apart are "at the same time": never "0 minutes later"."""
    return abs(a.onset - b.onset) < timedelta(minutes=1)


def onset_groups(incident: Incident) -> list[list[Candidate]]:
    """The servers in the order their signals left the baseline, those within a minute of the
    group's first together: the order sentence and the timeline both name a group's members
    at the group's first onset, so the two never disagree by a minute."""
    groups: list[list[Candidate]] = []
    for candidate in sorted(incident.root_cause.candidates, key=lambda c: c.onset):
        if groups and _same_moment(groups[-1][0], candidate):
            groups[-1].append(candidate)
        else:
            groups.append([candidate])
    return groups


def order_sentence(incident: Incident, roles: dict[str, str], language: Language) -> str:
    """The servers in the order their signals left the baseline, from the computed onsets."""
    ranked = incident.root_cause.candidates
    groups = onset_groups(incident)
    parts = []
    for group in groups:
        members = ", ".join(
            f"{c.server_id} ({t(ROLES, c.role, language)}: {t(METRIC_NAMES, c.metric, language)})"
            for c in group
        )
        together = len(group) > 1
        at = hhmm(group[0].onset)
        parts.append(
            _pick(
                language,
                f"{members}{' 동시에' if together else ''} {at}",
                f"{members}{' together' if together else ''} at {at}",
            )
        )
    if len(parts) == 1 and len(ranked) == 1:
        return _pick(
            language,
            f"기준선 이탈: {parts[0]}.",
            f"Left its baseline: {parts[0]}.",
        )
    return _pick(
        language,
        f"기준선을 벗어난 순서: {', 이어서 '.join(parts)}.",
        f"Order in which signals left their baseline: {', then '.join(parts)}.",
    )


def links_sentences(incident: Incident, roles: dict[str, str], language: Language) -> list[str]:
    """What the topology says about the root: who calls it (in front), what it calls (behind)."""
    root = incident.root_cause.server_id
    callers = [link.caller for link in incident.links if link.callee == root]
    callees = [link.callee for link in incident.links if link.caller == root]
    lines = []
    if callers:
        lines.append(
            _pick(
                language,
                f"{_who(callers, roles, language)}은(는) {root}을(를) 직접 호출하는 앞단입니다.",
                f"{_who(callers, roles, language)} call {root} directly: they are in front of it.",
            )
        )
    if callees:
        lines.append(
            _pick(
                language,
                f"{root}은(는) {_who(callees, roles, language)}을(를) 호출합니다(뒷단).",
                f"{root} calls {_who(callees, roles, language)}: they are behind it.",
            )
        )
    return lines


def _cause_sentence(incident: Incident, roles: dict[str, str], language: Language) -> str:
    cause = incident.root_cause
    root, role = cause.server_id, t(ROLES, roles.get(cause.server_id, ""), language)
    kind = t(INCIDENT_KINDS, cause.kind, language)
    if not cause.determined:
        tied = [c.server_id for c in cause.candidates if cause.candidates[0].score - c.score < 0.3]
        return _pick(
            language,
            f"근본 원인 미확정: 근거가 {_who(tied, roles, language)}을(를) 구분하지 못합니다.",
            f"Root cause undetermined: the evidence does not separate "
            f"{_who(tied, roles, language)}.",
        )
    metric = t(METRIC_NAMES, cause.metric, language)
    first = min(cause.candidates, key=lambda c: c.onset)
    best = cause.candidates[0]
    text = _pick(
        language,
        f"{root}({role})이(가) 근본 원인입니다: {kind}.",
        f"{root} ({role}) is the root cause: {kind}.",
    )
    if len(cause.candidates) == 1:
        return text
    if first.server_id == root or _same_moment(first, best):
        return text + _pick(
            language,
            f" {metric}이(가) 가장 먼저, 다음 서버보다 {num(cause.lead_minutes)}분 앞서 "
            f"기준선을 벗어났습니다.",
            f" Its {metric} left its baseline first, {num(cause.lead_minutes)} minutes before "
            f"the next server.",
        )
    if first.server_id in best.explains:
        return text + _pick(
            language,
            f" {first.server_id}이(가) 먼저 움직였지만 토폴로지상 {root}의 문제로 설명됩니다.",
            f" {first.server_id} moved earlier, but through the topology {root}'s trouble "
            f"accounts for it.",
        )
    return text + _pick(
        language,
        f" 먼저 움직인 서버는 {first.server_id}이지만 {root}이(가) 강도와 위치에서 앞섭니다.",
        f" {first.server_id} moved earlier; {root} ranks first on strength and position.",
    )


def _explains_sentence(incident: Incident, language: Language) -> str:
    best = incident.root_cause.candidates[0] if incident.root_cause.candidates else None
    if best is None or not best.explains or not incident.root_cause.determined:
        return ""
    return _pick(
        language,
        f"토폴로지상 {best.server_id}의 문제가 {', '.join(best.explains)}의 이상을 설명합니다.",
        f"Through the topology, {best.server_id}'s trouble accounts for "
        f"{', '.join(best.explains)}.",
    )


def confidence_sentence(incident: Incident, language: Language) -> str:
    """Why the confidence is what it is, from the margin the ranking left."""
    cause = incident.root_cause
    reason = cause.confidence_reason
    if reason == "single_server" or len(cause.candidates) < 2:
        return _pick(
            language,
            f"영향받은 서버가 {cause.server_id} 하나뿐이라 비교할 후보가 없습니다.",
            f"Only {cause.server_id} was affected, so there is no other candidate to weigh.",
        )
    second = cause.candidates[1].server_id
    if reason == "tie":
        return _pick(
            language,
            f"상위 후보 간 점수 차가 {num(cause.margin)}에 불과해 구분되지 않습니다.",
            f"The top candidates' scores differ by only {num(cause.margin)}, which does not "
            f"separate them.",
        )
    margin = _pick(
        language,
        "뚜렷한 차이" if reason == "clear_margin" else "근소한 차이",
        "a clear margin" if reason == "clear_margin" else "a narrow margin",
    )
    return _pick(
        language,
        f"{cause.server_id}이(가) 다음 후보 {second}보다 점수가 {num(cause.margin)} 높습니다"
        f"({margin}; 기준선 이탈 시각, 토폴로지상 위치, 강도, 지속 시간).",
        f"{cause.server_id} scores {num(cause.margin)} above the runner-up {second} "
        f"({margin}; from onset time, place in the topology, strength and duration).",
    )


def incident_story(incident: Incident, roles: dict[str, str], language: Language) -> str:
    """The incident told from the computed order and roles, never a fixed story per kind."""
    parts = [order_sentence(incident, roles, language)]
    parts += links_sentences(incident, roles, language)
    if explains := _explains_sentence(incident, language):
        parts.append(explains)
    return " ".join(parts)


def root_cause_view(incident: Incident, language: Language, roles: dict[str, str]) -> RootCauseView:
    cause = incident.root_cause
    root_eps = [
        e for e in incident.episodes if e.server_id == cause.server_id and e.metric == cause.metric
    ]
    return RootCauseView(
        server_id=cause.server_id,
        metric=cause.metric,
        text=_cause_sentence(incident, roles, language),
        evidence=[
            episode_line(e, language)
            for e in root_eps + [e for e in incident.episodes if e not in root_eps]
        ],
        confidence=cause.confidence,
        determined=cause.determined,
        candidates=[c.server_id for c in cause.candidates],
        confidence_text=confidence_sentence(incident, language),
    )


def fleet_wide_line(event: FleetWideEvent, language: Language) -> str:
    """One fleet-wide event: a common cause, not an incident chained through servers."""
    metric = t(METRIC_NAMES, event.metric, language)
    span = f"{when(event.start)}–{hhmm(event.end)}"
    count = len(event.servers)
    share = num(round(event.share * 100))
    change = num(event.median_change)
    moved = signed(SHIFTS, event.direction, language)
    return _pick(
        language,
        f"전체 공통 이벤트 {event.id}: {span} 서버 {count}대({share}%, "
        f"{', '.join(event.datacenters)})에서 {metric}이(가) 동시에 "
        f"{moved}(중앙값 {change}배). 한 서버에서 시작된 연쇄가 아니라 "
        f"공통 원인(공유 네트워크, 모니터링, 트래픽 변화)을 점검하세요.",
        f"Fleet-wide event {event.id}: {metric} {moved} on {count} servers "
        f"({share}%, {', '.join(event.datacenters)}) at once, {span} (median x{change}). It is "
        f"not a chain from one server: look for a common cause (shared network, monitoring, "
        f"traffic).",
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


def _incident_part(incident: Incident, server: str, language: Language) -> str:
    cause = incident.root_cause
    if cause.server_id == server and cause.determined:
        return t(INCIDENT_KINDS, incident.kind, language)
    if not cause.determined:
        return _pick(
            language,
            f"{incident.id} 장애에 포함 (근본 원인 미확정)",
            f"part of {incident.id} (root cause undetermined)",
        )
    return _pick(language, f"{cause.server_id} 장애 영향", f"hit by {cause.server_id}")


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
    parts = [_incident_part(i, server, language) for i in incidents]
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
    # a fleet-wide shift is noted, but does not make this server a problem of its own
    evidence += [
        _pick(
            language,
            f"전체 공통 이벤트 {ev.id}에 포함 ({t(METRIC_NAMES, ev.metric, language)})",
            f"part of fleet-wide event {ev.id} ({t(METRIC_NAMES, ev.metric, language)})",
        )
        for ev in facts.fleet_wide
        if server in ev.servers
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
    return AnalysisResult(
        language=language,
        query=query,
        writer="",
        facts=facts,
        findings=findings,
        fleet_wide=[fleet_wide_line(ev, language) for ev in facts.fleet_wide],
    )


# ----------------------------------------------------------------------------- report


def _timeline(incident: Incident, language: Language) -> list[TimelineEntry]:
    """Each server at the onset of its lead signal (the times the order sentence names), any
    server down at its onset, the root signal's extreme where it was measured, the recovery."""
    cause = incident.root_cause
    entries = [
        TimelineEntry(
            at=group[0].onset,
            server_id=c.server_id,
            text=f"{c.server_id} {t(EVENTS, 'down', language)}"
            if c.metric == "up"
            else f"{c.server_id} {t(METRIC_NAMES, c.metric, language)} "
            f"{t(EVENTS, 'left_baseline', language)}",
        )
        for group in onset_groups(incident)
        for c in group
    ]
    leads = {(c.server_id, c.metric) for c in cause.candidates}
    for e in incident.episodes:
        if e.metric == "up" and (e.server_id, e.metric) not in leads:
            entries.append(
                TimelineEntry(
                    at=e.onset,
                    server_id=e.server_id,
                    text=f"{e.server_id} {t(EVENTS, 'down', language)}",
                )
            )
        if e.metric != "up" and (e.server_id, e.metric) == (cause.server_id, cause.metric):
            metric = t(METRIC_NAMES, e.metric, language)
            extreme = signed(EXTREMES, e.direction, language)
            entries.append(
                TimelineEntry(
                    at=e.peak_at,
                    server_id=e.server_id,
                    text=f"{e.server_id} {metric} {extreme} {value_with_unit(e.peak, e.unit)}",
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
    return sorted(entries, key=lambda e: e.at)


def report_draft(
    facts: FleetFacts, query: str, language: Language, *, with_optimisation: bool
) -> ReportResult:
    roles = _roles(facts)
    incidents = [
        ReportIncident(
            id=i.id,
            kind=i.kind,
            headline=incident_headline(i, language),
            severity=i.severity,
            servers=i.servers,
            start=i.onset,  # the time the headline shows
            recovered_at=i.recovered_at,
            root_cause=root_cause_view(i, language, roles),
            story=incident_story(i, roles, language),
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
        root_cause=None if worst is None else root_cause_view(worst, language, roles),
        fleet_wide=[fleet_wide_line(ev, language) for ev in facts.fleet_wide],
        recommendations=recommendations(facts, language) if with_optimisation else [],
    )


# ----------------------------------------------------------------------------- optimisation

_Fix = tuple[str, str, str, str, str]  # (ko action, en action, ko effect, en effect, risk)

#: One fix per incident kind ({s} = the root, {f} = the servers it affected). Every kind in
#: ``texts.INCIDENT_KINDS`` has one (a test enumerates them).
_INCIDENT_FIXES: dict[str, _Fix] = {
    "disk_io_saturation": (
        "{s}: 대량 I/O 작업(백업·배치)을 복제본으로 옮기거나 I/O 대역폭을 제한",
        "{s}: move bulk I/O (backup, batch) to a replica or throttle its I/O",
        "{f} 응답 지연 방지",
        "{f} stay fast while the bulk job runs",
        "low",
    ),
    "memory_leak": (
        "{s}: 메모리 누수 원인 수정, 그 전까지 메모리 상한과 계획 재시작",
        "{s}: fix the memory leak; until then cap its memory and restart on a schedule",
        "예기치 않은 다운 방지",
        "no unplanned restart",
        "medium",
    ),
    "memory_pressure": (
        "{s}: 메모리를 가장 많이 쓰는 프로세스 확인, 메모리 증설 또는 작업 분산",
        "{s}: find what holds the memory; add memory or spread the work",
        "{f} 스와핑·지연 방지",
        "no swapping or slow answers on {f}",
        "medium",
    ),
    "cpu_spike": (
        "{s}: 최근 배포와 작업 부하 점검, 오토스케일링 기준 조정",
        "{s}: review the latest deploy and workload, tune autoscaling",
        "{f} 응답 지연 재발 방지",
        "{f} stay fast when load jumps",
        "low",
    ),
    "cpu_saturation": (
        "{s}: CPU 증설 또는 인스턴스 추가로 부하 분산, 장시간 점유 작업 확인",
        "{s}: add CPU or instances to spread the load; find the long-running work",
        "{f} 지속 지연 해소",
        "{f} no longer slow for hours",
        "medium",
    ),
    "packet_loss": (
        "{s}: NIC·업링크 점검, 다른 경로로 페일오버 구성",
        "{s}: check the NIC and uplink; configure failover to another path",
        "{f} 트래픽 손실과 지연 방지",
        "no traffic loss or latency on {f}",
        "medium",
    ),
    "server_down": (
        "{s}: 중단 원인(로그·OOM·하드웨어) 확인, 헬스체크와 자동 재시작·이중화 구성",
        "{s}: find why it stopped (logs, OOM, hardware); add health checks, auto-restart and "
        "redundancy",
        "{f} 중단 시간 단축",
        "shorter outages for {f}",
        "medium",
    ),
    "slow_response": (
        "{s}: 느린 요청 추적(트레이싱·슬로 쿼리 로그), 타임아웃과 커넥션 풀 점검",
        "{s}: trace the slow requests (tracing, slow-query log); check timeouts and "
        "connection pools",
        "{f} 응답 시간 회복",
        "{f} answer at their usual speed",
        "low",
    ),
    "high_load": (
        "{s}: 실행 대기 작업 확인, 동시성 제한 또는 인스턴스 추가",
        "{s}: look at the run queue; limit concurrency or add instances",
        "{f} 처리 지연 방지",
        "no queueing delay on {f}",
        "low",
    ),
    "traffic_surge": (
        "{s}: 유입 트래픽 출처 확인, 속도 제한·캐싱 적용, 뒷단 용량 확장 기준 조정",
        "{s}: find where the extra traffic comes from; rate-limit or cache it and scale what "
        "is behind it",
        "{f}까지 과부하 전파 방지",
        "the surge no longer overloads {f}",
        "medium",
    ),
    "traffic_anomaly": (
        "{s}: 트래픽 변화 원인(배포·라우팅·클라이언트) 확인",
        "{s}: find what changed the traffic (deploy, routing, clients)",
        "{f} 트래픽 이상 재발 방지",
        "no repeat of the traffic change on {f}",
        "low",
    ),
    "disk_space": (
        "{s}: 오래된 로그·파일 정리, 디스크 증설과 사용률 알림 설정",
        "{s}: clean up old logs and files; grow the disk and alert on usage",
        "디스크 가득 참으로 인한 중단 방지",
        "no outage from a full disk",
        "low",
    ),
    "anomaly": (
        "{s}: 이상 구간의 로그와 변경 이력 확인",
        "{s}: read the logs and change history for the abnormal stretch",
        "원인 파악 후 재발 방지",
        "the cause found before it repeats",
        "low",
    ),
}

#: Where a role changes what the fix is (a cache under memory pressure evicts, it does not swap).
_ROLE_FIXES: dict[tuple[str, str], _Fix] = {
    ("memory_pressure", "cache"): (
        "{s}: maxmemory와 만료·축출 정책 점검, 큰 키 정리 또는 캐시 메모리 증설",
        "{s}: check maxmemory and the eviction/expiry policy; trim large keys or give the "
        "cache more memory",
        "{f} 캐시 미스·지연 방지",
        "no cache misses or slow answers on {f}",
        "low",
    ),
    ("slow_response", "database"): (
        "{s}: 슬로 쿼리와 잠금 대기 확인, 인덱스·쿼리 개선",
        "{s}: look at slow queries and lock waits; fix indexes and queries",
        "{f} 응답 시간 회복",
        "{f} answer at their usual speed",
        "low",
    ),
    ("packet_loss", "load_balancer"): (
        "{s}: NIC·업링크 점검, 다른 로드밸런서로 페일오버 구성",
        "{s}: check the NIC and uplink; configure failover to another load balancer",
        "{f} 트래픽 손실과 지연 방지",
        "no traffic loss or latency on {f}",
        "medium",
    ),
}


def fix_for(kind: str, role: str) -> _Fix:
    """The fix for an incident kind on a server of this role (every kind has one)."""
    return _ROLE_FIXES.get((kind, role)) or _INCIDENT_FIXES.get(kind) or _INCIDENT_FIXES["anomaly"]


def _incident_recommendation(
    incident: Incident, roles: dict[str, str], language: Language
) -> Recommendation:
    cause = incident.root_cause
    root = cause.server_id
    fix = fix_for(incident.kind, roles.get(root, ""))
    if cause.determined:
        target = root
        followers = ", ".join(s for s in incident.servers if s != root) or root
    else:
        target = " / ".join(c.server_id for c in cause.candidates[:3])
        followers = ", ".join(incident.servers)
    index = 0 if language == "ko" else 1
    action = fix[index].format(s=target, f=followers)
    if not cause.determined:
        action = _pick(
            language,
            f"근본 원인 미확정 — 후보를 각각 점검: {action}",
            f"root cause undetermined — check each candidate: {action}",
        )
    return Recommendation(
        id=f"rec-{incident.id}",
        servers=incident.servers,
        action_text=action,
        expected_effect=fix[2 + index].format(s=target, f=followers),
        risk=fix[4],  # type: ignore[arg-type]
        evidence=[episode_line(e, language) for e in incident.episodes if e.server_id == root],
    )


def _fleet_wide_recommendation(event: FleetWideEvent, language: Language) -> Recommendation:
    metric = t(METRIC_NAMES, event.metric, language)
    return Recommendation(
        id=f"rec-{event.id}",
        servers=event.servers,
        action_text=_pick(
            language,
            f"{event.id}: 모든 서버가 공유하는 것(네트워크 경로, 모니터링 에이전트, 유입 "
            f"트래픽)을 먼저 점검 — 개별 서버 튜닝으로는 해결되지 않음",
            f"{event.id}: check what every server shares (network path, monitoring agent, "
            f"incoming traffic) before tuning any one server",
        ),
        expected_effect=_pick(
            language,
            f"전체 {metric} 변화의 공통 원인 제거",
            f"removes the common cause of the fleet-wide {metric} change",
        ),
        risk="low",
        evidence=[fleet_wide_line(event, language)],
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
    roles = _roles(facts)
    recs = [_incident_recommendation(i, roles, language) for i in facts.incidents]
    recs += [_fleet_wide_recommendation(ev, language) for ev in facts.fleet_wide]
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


#: Words that name a metric in a question (lower case; Korean and English).
_METRIC_CUES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "processor", "씨피유", "프로세서"),
    "memory": ("memory", "ram", "mem ", "메모리", "램"),
    # not "용량" alone: "사용량" (usage) contains it
    "disk": ("disk", "storage", "space", "디스크", "저장 공간", "저장공간", "디스크 용량"),
    "disk_io": ("i/o", "iops", "io ", "입출력"),
    "response_ms": ("response", "latency", "응답", "지연"),
    "load": ("load average", "load ", "부하"),
}
#: A line that changes less than this per day (in the metric's unit), or less than 2 % of its
#: level, is flat.
FLAT_PER_DAY = 1.0


def asked_metrics(query: str) -> list[str]:
    """The metrics a question names, in a fixed order (none: the question is general)."""
    text = f"{query.lower()} "
    return [metric for metric, cues in _METRIC_CUES.items() if any(c in text for c in cues)]


def asked_servers(query: str, facts: FleetFacts) -> list[str]:
    text = query.lower()
    return [row.server_id for row in facts.capacity if row.server_id.lower() in text]


def outlook_of(trend: Trend) -> str:
    """rising | falling | flat (moves less than ``FLAT_PER_DAY`` or 2 % of its level a day) |
    unclear (the line moves but fits the samples poorly)."""
    per_day = trend.slope_per_hour * 24
    if abs(per_day) < max(FLAT_PER_DAY, 0.02 * abs(trend.current)):
        return "flat"
    if trend.r2 < TREND_MIN_R2:
        return "unclear"
    return "rising" if per_day > 0 else "falling"


def forecast_note(trend: Trend, language: Language) -> str:
    """What the line says about the limits, for a rising, flat or falling metric alike."""
    metric = t(METRIC_NAMES, trend.metric, language)
    current = value_with_unit(trend.current, trend.unit)
    warning = value_with_unit(trend.warning, trend.unit)
    slope = f"{num(trend.slope_per_hour)}{trend.unit}"
    days = num(TREND_MAX_HOURS // 24)
    outlook = outlook_of(trend)
    if trend.current >= trend.warning:
        return _pick(
            language,
            f"{trend.server_id} {metric} {current}: 이미 경고 임계 {warning} 이상입니다.",
            f"{trend.server_id} {metric} at {current}: already at or above the warning limit "
            f"{warning}.",
        )
    if outlook == "unclear":
        return _pick(
            language,
            f"{trend.server_id} {metric} {current}: 뚜렷한 추세 없음(R² {num(trend.r2)}). "
            f"기울기 시간당 {slope}"
            + (
                f", 이대로라면 약 {num(trend.hours_to_warning)}시간 뒤 경고 임계 {warning} "
                f"도달(적합도가 낮아 참고용)."
                if trend.hours_to_warning is not None
                else f", 이 기울기로는 {days}일 안에 임계에 도달하지 않습니다."
            ),
            f"{trend.server_id} {metric} at {current}: no clear trend (R² {num(trend.r2)}). "
            f"The fitted slope is {slope}/h"
            + (
                f": warning limit {warning} in about {num(trend.hours_to_warning)} h if it "
                f"held, but the line fits poorly."
                if trend.hours_to_warning is not None
                else f": no threshold within {days} days at that slope."
            ),
        )
    if outlook == "rising" and trend.hours_to_warning is not None:
        return _pick(
            language,
            f"{trend.server_id} {metric} {current}, 시간당 {slope} 증가: 약 "
            f"{num(trend.hours_to_warning)}시간 뒤 경고 임계 {warning} 도달.",
            f"{trend.server_id} {metric} at {current}, rising {slope}/h: warning limit "
            f"{warning} in about {num(trend.hours_to_warning)} h.",
        )
    state = {
        "rising": ("완만히 증가", "rising slowly"),
        "flat": ("변화 없음(평탄)", "flat"),
        "falling": ("감소", "falling"),
    }[outlook]
    return _pick(
        language,
        f"{trend.server_id} {metric} {current}, {state[0]}(기울기 시간당 {slope}, R² "
        f"{num(trend.r2)}): 현재 기울기로는 {days}일 안에 임계에 도달하지 않습니다.",
        f"{trend.server_id} {metric} {state[1]} at {current} (slope {slope}/h, R² "
        f"{num(trend.r2)}): no threshold within {days} days at the current slope.",
    )


def forecast(trend: Trend, language: Language = "en") -> Forecast:
    projected = trend.current + trend.slope_per_hour * FORECAST_HORIZON_HOURS
    if trend.unit == "%":
        projected = min(max(projected, 0.0), 100.0)
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
        outlook=outlook_of(trend),
        note=forecast_note(trend, language),
    )


def _forecast_lines(facts: FleetFacts, query: str) -> list[Trend]:
    """The asked-for metrics (and servers) whether they trend or not; else the rising ones;
    with nothing rising and nothing asked, the fullest server per metric."""
    metrics = asked_metrics(query)
    servers = asked_servers(query, facts)
    if metrics or servers:
        chosen = [
            o
            for o in facts.outlooks
            if (not metrics or o.metric in metrics) and (not servers or o.server_id in servers)
        ]
        if not metrics:  # a server asked about: its rising metrics, else all its lines
            chosen = [o for o in chosen if outlook_of(o) == "rising"] or chosen
        return sorted(
            chosen,
            key=lambda o: (
                o.hours_to_warning is None,
                o.hours_to_warning or 0.0,
                -o.current,
                o.metric,
                o.server_id,
            ),
        )
    if facts.trends:
        return list(facts.trends)
    fullest: dict[str, Trend] = {}
    for o in facts.outlooks:
        if o.metric not in TREND_METRICS:
            continue  # "capacity": the fullest CPU, memory and disk, not the slowest answer
        if o.metric not in fullest or o.current > fullest[o.metric].current:
            fullest[o.metric] = o
    return list(fullest.values())


def prediction_draft(facts: FleetFacts, query: str, language: Language) -> PredictionResult:
    return PredictionResult(
        language=language,
        query=query,
        writer="",
        facts=facts,
        forecasts=[forecast(tr, language) for tr in _forecast_lines(facts, query)],
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
