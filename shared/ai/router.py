"""The complexity router: decides whether a query is answered at once or becomes a job.

``classify`` scores a query from Korean and English cues (analysis, report, forecast, root
cause, optimisation, every server, time ranges, multi-step connectives; status, current values
and greetings pull the score down), its length and how many questions it asks. The score maps
to a level with the thresholds from settings (``ROUTER_MEDIUM_SCORE``,
``ROUTER_COMPLEX_SCORE``); the strongest cue names the job type. ``answer_simple`` answers a
simple query from the fleet's status summary.

This runs on the create function's hot path: it imports neither numpy nor google.genai.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shared.ai import analytics
from shared.ai.facts import FleetFacts, ServerStatus
from shared.ai.fleet import SyntheticFleetSource, fleet_source_from_settings
from shared.ai.lang import Language, detect_language
from shared.ai.texts import METRIC_NAMES, SEVERITIES, t, when
from shared.jobs import Complexity, JobType
from shared.settings import AISettings


@dataclass(frozen=True)
class Cue:
    name: str
    weight: float
    job_type: JobType | None
    pattern: re.Pattern[str]


def _cue(name: str, weight: float, job_type: JobType | None, *patterns: str) -> Cue:
    return Cue(name, weight, job_type, re.compile("|".join(patterns), re.IGNORECASE))


CUES: tuple[Cue, ...] = (
    _cue(
        "report",
        3.0,
        JobType.REPORT,
        r"리포트",
        r"보고서",
        r"\breport",
        r"write[- ]?up",
        r"post[- ]?mortem",
        r"포스트모템",
    ),
    _cue(
        "root_cause",
        3.0,
        JobType.REPORT,
        r"근본\s*원인",
        r"원인",
        r"root[- ]cause",
        r"\bwhy\b",
        r"왜",
        r"what caused",
        r"rca\b",
    ),
    _cue(
        "forecast",
        3.0,
        JobType.PREDICTION,
        r"예측",
        r"전망",
        r"예상",
        r"forecast",
        r"predict",
        r"언제쯤",
        r"when will",
        r"run out",
        r"부족해질",
        r"will .* (?:reach|hit|fill)",
        r"다음\s*주",
        r"내일",
        r"tomorrow",
        r"next (?:week|month)",
    ),
    _cue(
        "optimisation",
        3.0,
        JobType.OPTIMIZATION,
        r"최적화",
        r"절감",
        r"비용",
        r"optimi[sz]",
        r"cost",
        r"right[- ]?siz",
        r"consolidat",
        r"통합",
        r"줄일",
        r"낭비",
        r"over[- ]?provision",
        r"증설",
        r"capacity plan",
        r"용량\s*계획",
        r"scale down",
        r"downsiz",
    ),
    _cue(
        "analysis",
        3.0,
        JobType.ANALYSIS,
        r"분석",
        r"진단",
        r"점검",
        r"analy[sz]",
        r"diagnos",
        r"investigat",
        r"inspect",
        r"deep[- ]dive",
        r"audit",
        r"살펴",
        r"anomal",
        r"이상\s*징후",
        r"패턴",
        r"pattern",
        r"correlat",
        r"상관",
    ),
    _cue("trend", 1.5, JobType.PREDICTION, r"추세", r"트렌드", r"trend", r"증가\s*추이", r"growth"),
    _cue(
        "all_servers",
        2.0,
        None,
        r"모든\s*서버",
        r"전체\s*서버",
        r"전\s*서버",
        r"서버\s*전체",
        r"전체",
        r"all (?:the )?servers",
        r"every server",
        r"entire fleet",
        r"whole fleet",
        r"all nodes",
        r"fleet[- ]wide",
        r"across (?:all|the fleet)",
    ),
    _cue(
        "time_range",
        1.0,
        None,
        r"지난\s*\d*\s*(?:시간|일|주|달)",
        r"최근\s*\d*\s*(?:시간|일|주|달)",
        r"어제",
        r"24\s*시간",
        r"일주일",
        r"한\s*달",
        r"\blast \d* ?(?:hours?|days?|weeks?|months?)",
        r"past \d* ?(?:hours?|days?|weeks?)",
        r"yesterday",
        r"next \d+ ?(?:hours?|days?)",
        r"overnight",
        r"since",
        r"밤사이",
        r"새벽",
    ),
    _cue(
        "incident",
        1.0,
        JobType.REPORT,
        r"장애",
        r"incident",
        r"outage",
        r"타임라인",
        r"timeline",
        r"무슨 일",
        r"what happened",
    ),
    _cue("compare", 1.0, JobType.ANALYSIS, r"비교", r"compare", r"versus", r"\bvs\.?\b", r"차이"),
    _cue(
        "recommend",
        1.5,
        JobType.OPTIMIZATION,
        r"추천",
        r"제안",
        r"권장",
        r"recommend",
        r"suggest",
        r"개선",
        r"improve",
    ),
)
PER_SERVER = _cue("per_server", 1.0, None, r"서버별", r"per[- ]server", r"each server", r"for each")
MULTI_STEP = re.compile(
    r"하고|한\s*(?:다음|뒤|후)|그리고|그\s*다음|후에|및|그런\s*다음"
    r"|, ?then\b|\band then\b|\bthen\b|\balso\b|\bafter that\b|\bplus\b|\bas well as\b"
    r"|\band (?:write|make|create|give|suggest|recommend|predict|build)",
    re.IGNORECASE,
)
SIMPLE = _cue(
    "status",
    -2.0,
    None,
    r"상태",
    r"현재",
    r"지금",
    r"몇\s*대",
    r"몇\s*%",
    r"얼마",
    r"안녕",
    r"고마",
    r"감사",
    r"\bstatus\b",
    r"\bcurrent(?:ly)?\b",
    r"\bright now\b",
    r"\bnow\b",
    r"\bhi\b",
    r"\bhello\b",
    r"\bthanks?\b",
    r"how many",
    r"\bis .* (?:up|down|ok)\b",
    r"살아\s*있",
    r"켜져",
)
_TYPE_ORDER = (JobType.REPORT, JobType.OPTIMIZATION, JobType.PREDICTION, JobType.ANALYSIS)
_BASE_SECONDS = {Complexity.SIMPLE: 2, Complexity.MEDIUM: 15, Complexity.COMPLEX: 35}
_TYPE_SECONDS = {
    JobType.ANALYSIS: 0,
    JobType.REPORT: 10,
    JobType.OPTIMIZATION: 5,
    JobType.PREDICTION: 5,
}


@dataclass(frozen=True)
class Classification:
    level: Complexity
    job_type: JobType
    score: float
    estimated_seconds: int
    reasons: list[str] = field(default_factory=list)


def _structure_score(query: str) -> tuple[float, list[str]]:
    score, reasons = 0.0, []
    steps = len(MULTI_STEP.findall(query))
    if steps:
        score += min(steps, 2) * 1.0
        reasons.append(f"multi_step:{steps}")
    length = len(query)
    if length > 60:
        extra = min((length - 60) / 60, 2.0)
        score += extra
        reasons.append(f"length:{length}")
    questions = query.count("?") + query.count("？")
    if questions > 1:
        score += min(questions - 1, 2) * 1.0
        reasons.append(f"questions:{questions}")
    return score, reasons


def classify(query: str, settings: AISettings) -> Classification:
    """Level, inferred job type and estimated duration of ``query``."""
    score, reasons = _structure_score(query)
    weights: dict[JobType, float] = {}
    for cue in (*CUES, PER_SERVER):
        if cue.pattern.search(query):
            score += cue.weight
            reasons.append(cue.name)
            if cue.job_type is not None:
                weights[cue.job_type] = weights.get(cue.job_type, 0.0) + cue.weight
    if SIMPLE.pattern.search(query):
        score += SIMPLE.weight
        reasons.append(SIMPLE.name)
    score = max(score, 0.0)
    if score >= settings.router_complex_score:
        level = Complexity.COMPLEX
    elif score >= settings.router_medium_score:
        level = Complexity.MEDIUM
    else:
        level = Complexity.SIMPLE
    job_type = max(_TYPE_ORDER, key=lambda jt: (weights.get(jt, 0.0), -_TYPE_ORDER.index(jt)))
    if not weights:
        job_type = JobType.ANALYSIS
    seconds = _BASE_SECONDS[level] + (_TYPE_SECONDS[job_type] if level != Complexity.SIMPLE else 0)
    return Classification(
        level=level,
        job_type=job_type,
        score=round(score, 2),
        estimated_seconds=seconds,
        reasons=reasons,
    )


def wants_optimisation(query: str) -> bool:
    """Whether the query asks for optimisation too (a report then carries recommendations)."""
    return bool(CUES[3].pattern.search(query))


# ----------------------------------------------------------------------------- simple answers


@dataclass(frozen=True)
class SimpleAnswer:
    answer: str  #: Markdown in the query's language
    data: dict[str, Any]  #: JSON-able status facts the answer was built from


@lru_cache(maxsize=4)
def _synthetic_facts(seed: int) -> FleetFacts:
    return analytics.analyse(SyntheticFleetSource(seed=seed).load())


def fleet_facts(settings: AISettings) -> FleetFacts:
    """The facts about the configured fleet (the synthetic fleet's are computed once)."""
    if settings.fleet_source == "synthetic":
        return _synthetic_facts(settings.fleet_seed)
    return analytics.analyse(
        fleet_source_from_settings(settings.fleet_source, settings.fleet_seed).load()
    )


def _server_line(row: ServerStatus, language: Language) -> str:
    state = t(SEVERITIES, row.status.value, language)
    alerts = ", ".join(t(METRIC_NAMES, m, language) for m in row.alerts)
    line = f"**{row.server_id}** ({state}): CPU {row.cpu:g}%, " + (
        f"메모리 {row.memory:g}%, 디스크 {row.disk:g}%, 응답 {row.response_ms:g} ms"
        if language == "ko"
        else f"memory {row.memory:g}%, disk {row.disk:g}%, response {row.response_ms:g} ms"
    )
    return line + (f" — {alerts}" if alerts else "")


def answer_simple(query: str, settings: AISettings) -> SimpleAnswer:
    """An immediate answer from the status summary; servers named in the query come first."""
    language = detect_language(query)
    facts = fleet_facts(settings)
    status = facts.status
    lowered = query.lower()
    named = [row for row in status.servers if row.server_id.lower() in lowered]
    shown = named or [row for row in status.servers if row.status.value != "normal"]
    counts = status.counts
    if language == "ko":
        head = (
            f"현재({when(status.at)}) 서버 {status.total}대: 정상 {counts['normal']}, 경고 "
            f"{counts['warning']}, "
            f"위험 {counts['critical']}, 다운 {counts['down']}. "
            f"평균 CPU {status.avg_cpu:g}%, 메모리 "
            f"{status.avg_memory:g}%."
        )
        tail = f"지난 24시간 장애 {status.incidents_24h}건(진행 중 {status.ongoing_incidents}건)."
    else:
        head = (
            f"Now ({when(status.at)}) {status.total} servers: {counts['normal']} normal, "
            f"{counts['warning']} warning, "
            f"{counts['critical']} critical, {counts['down']} down. Average CPU "
            f"{status.avg_cpu:g}%, memory {status.avg_memory:g}%."
        )
        tail = (
            f"Incidents in the last 24 h: {status.incidents_24h} "
            f"({status.ongoing_incidents} ongoing)."
        )
    lines = [head, "", *[f"- {_server_line(row, language)}" for row in shown], "", tail]
    data = status.model_dump(mode="json", by_alias=True)
    data["servers"] = [row.model_dump(mode="json", by_alias=True) for row in shown]
    return SimpleAnswer(answer="\n".join(lines).replace("\n\n\n", "\n\n"), data=data)
