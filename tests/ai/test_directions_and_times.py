"""The words and times a report uses agree with the facts, on every fleet the tests know.

Direction: a metric that fell is never said to have "peaked" (Korean 최고), a fleet-wide shift
rose or fell as its sign says, a forecast that rises or falls says so. Time: an incident's
headline, the summary, the order sentence and the timeline name the same minute for the same
event (a signal leaving its baseline at its onset, the recovery at its first normal sample).

The fleets: the synthetic one, the held-out labelled one (also renamed and reversed), one whose
traffic drops (on one chain and on the whole fleet), generated stress fleets, and Hypothesis
fleets whose traffic rises or falls at random.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ai import pipeline
from shared.ai.facts import FleetFacts
from shared.ai.fleet import Fleet, build_synthetic_fleet
from shared.ai.lang import Language
from shared.ai.results import AIResult, PredictionResult, ReportResult
from shared.ai.texts import METRIC_NAMES, t
from shared.jobs import JobType
from shared.settings import AISettings

from .fleets import (
    Change,
    FleetPlan,
    Given,
    Spec,
    build,
    fleet_of,
    heldout_raw,
    reversed_heldout,
    stress_plan,
)

BOUNDED = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
_ID = r"[\w.-]+"
#: the words a reader takes for "went up" / "went down", written here, not taken from the code
RISE = {"ko": ("최고",), "en": ("peaked at",)}
DROP = {"ko": ("최저",), "en": ("fell to",)}
SHIFT = {"ko": {"상승": 1, "하락": -1}, "en": {"rose": 1, "fell": -1}}
QUERIES: dict[Language, dict[JobType, str]] = {
    "ko": {
        JobType.REPORT: "모든 서버 장애 리포트 만들어줘",
        JobType.ANALYSIS: "모든 서버 분석해줘",
        JobType.PREDICTION: "메모리와 디스크 사용량 예측해줘",
    },
    "en": {
        JobType.REPORT: "Write an incident report for every server",
        JobType.ANALYSIS: "Analyse every server",
        JobType.PREDICTION: "Forecast memory and disk usage",
    },
}


def _dropping_traffic(factor: float = 0.3, fleet_wide: float = 0.35) -> Fleet:
    """A load balancer's inbound traffic drops and its web servers' follow; later the whole
    fleet's outbound traffic drops at once."""
    specs = [
        Spec("lb-1", "load_balancer"),
        Spec("web-1", "web"),
        Spec("web-2", "web"),
        Spec("app-1", "application"),
        Spec("db-1", "database"),
    ]
    changes = [
        Change("lb-1", "netIn", 30.4, 8, factor),
        Change("lb-1", "responseMs", 30.4, 8, 4.0),
        Change("web-1", "netIn", 31.3, 7, factor),
        Change("web-2", "netIn", 31.6, 7, factor),
        *[Change(s.id, "netOut", 50.5, 6, fleet_wide) for s in specs],
    ]
    return fleet_of(build(FleetPlan(servers=specs, changes=changes)))


def _stress(n: int) -> Fleet:
    return fleet_of(build(stress_plan(n)[0]))


FLEETS: dict[str, Callable[[], Fleet]] = {
    "synthetic": lambda: build_synthetic_fleet(42),
    "heldout": lambda: fleet_of(heldout_raw()),
    "heldout-reversed": reversed_heldout,
    "traffic-drop": _dropping_traffic,
    **{f"stress-{n}": partial(_stress, n) for n in (3, 7)},
}


def _answer(fleet: Fleet, job_type: JobType, language: Language) -> AIResult:
    return pipeline.run(
        QUERIES[language][job_type],
        job_type,
        lambda p, m: True,
        settings=AISettings(writer="local"),
        fleet=Given(fleet),
    )


# ----------------------------------------------------------------------------- direction


def direction_claims(result: AIResult) -> list[tuple[str, str, float, int]]:
    """(server, metric, value, +1/-1) of every "<server> <metric> <peak|low word> <value>"."""
    language = result.language
    names = {t(METRIC_NAMES, m, language): m for m in METRIC_NAMES}
    metric = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    words = {w: 1 for w in RISE[language]} | {w: -1 for w in DROP[language]}
    word = "|".join(re.escape(w) for w in words)
    found = re.findall(rf"({_ID}) ({metric}) ({word}) ([\d.]+)", result.markdown)
    return [(s, names[m], float(v), words[w]) for s, m, w, v in found]


def assert_directions_follow_the_data(result: AIResult) -> int:
    """Every direction word agrees with the sign of the change it names; returns how many."""
    facts: FleetFacts = result.facts
    episodes = [e for i in facts.incidents for e in i.episodes]
    claims = direction_claims(result)
    for server, metric, value, sign in claims:
        named = [e for e in episodes if (e.server_id, e.metric, e.peak) == (server, metric, value)]
        assert named, (server, metric, value)
        assert all((e.peak - e.baseline >= 0) == (sign > 0) for e in named), (
            server,
            metric,
            value,
            sign,
        )
    shifts = SHIFT[result.language]
    for event in facts.fleet_wide:
        said_in = re.compile(rf"(?:Fleet-wide event|전체 공통 이벤트) {event.id}:")
        for line in (line for line in result.markdown.splitlines() if said_in.search(line)):
            said = [sign for word, sign in shifts.items() if word in line]
            assert said == [1 if event.direction > 0 else -1], line
    if isinstance(result, PredictionResult):
        for fc in result.forecasts:
            rising = re.search(r"rising|증가", fc.note)
            falling = re.search(r"falling|감소", fc.note)
            assert not (rising and falling), fc.note
            if rising:
                assert fc.slope_per_hour > 0, fc.note
            if falling:
                assert fc.slope_per_hour < 0, fc.note
    return len(claims)


@pytest.mark.parametrize("language", ["ko", "en"])
@pytest.mark.parametrize("fleet_name", list(FLEETS))
def test_every_direction_word_agrees_with_the_sign_of_its_change(
    fleet_name: str, language: Language
) -> None:
    fleet = FLEETS[fleet_name]()

    checked = sum(
        assert_directions_follow_the_data(_answer(fleet, job_type, language))
        for job_type in (JobType.REPORT, JobType.ANALYSIS, JobType.PREDICTION)
    )

    assert checked > 0  # every one of these fleets has incidents whose extremes are shown


def test_a_traffic_drop_is_called_a_low_and_a_fall_never_a_peak() -> None:
    for language in ("ko", "en"):
        result = _answer(_dropping_traffic(), JobType.REPORT, language)

        signs = {(s, m): sign for s, m, _, sign in direction_claims(result)}

        assert signs[("lb-1", "net_in")] == signs[("web-1", "net_in")] == -1
        assert signs[("lb-1", "response_ms")] == 1
        fleet_wide = next(line for line in result.markdown.splitlines() if "fw-1" in line)
        assert ("하락" if language == "ko" else "fell") in fleet_wide


@BOUNDED
@given(
    factor=st.sampled_from([0.2, 0.35, 2.5, 4.0]),
    fleet_wide=st.sampled_from([0.3, 3.0]),
    language=st.sampled_from(["ko", "en"]),
)
def test_traffic_that_rises_or_falls_is_worded_by_its_sign(
    factor: float, fleet_wide: float, language: Language
) -> None:
    result = _answer(_dropping_traffic(factor, fleet_wide), JobType.REPORT, language)

    checked = assert_directions_follow_the_data(result)

    assert checked > 0
    assert result.facts.fleet_wide  # the shift on the whole fleet was found and worded


# ----------------------------------------------------------------------------- time

_SPAN = re.compile(r"\((\d\d-\d\d) (\d\d:\d\d)(?:–(\d\d:\d\d))?\)$")
_ORDER = re.compile(
    r"^(?:Order in which signals left their baseline|기준선을 벗어난 순서|Left its baseline|"
    r"기준선 이탈): (.*)\.$"
)
_ROW = re.compile(r"^\| (\d\d-\d\d) (\d\d:\d\d) \| (.*) \|$")
_LEFT = re.compile(rf"^({_ID}) .*(?:left its baseline|기준선 이탈)$")
_DOWN = re.compile(rf"^({_ID}) (?:stopped answering \(down\)|응답 없음\(다운\))$")
_BACK = re.compile(r"(?:back to normal|정상 회복)$")


def _sections(markdown: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], str]:
    """(headline, story) per incident, the timeline rows (date, HH:MM, text), the summary."""
    lines = markdown.splitlines()
    incidents = [
        (line, lines[n + 1]) for n, line in enumerate(lines) if re.match(r"^### \d+\. ", line)
    ]
    rows = [(m[1], m[2], m[3]) for line in lines if (m := _ROW.match(line))]
    return incidents, rows, lines[2]


def _order_times(story: str) -> list[tuple[list[str], str]]:
    """(servers, HH:MM) of each group the order sentence names."""
    sentence = re.split(r"(?<=\.) ", story)[0]
    m = _ORDER.match(sentence)
    assert m, story
    groups = re.split(r", then |, 이어서 ", m.group(1))
    return [
        (re.findall(rf"({_ID}) \(", group), re.search(r"(\d\d:\d\d)$", group).group(1))  # type: ignore[union-attr]
        for group in groups
    ]


def assert_one_time_per_event(result: ReportResult) -> int:
    incidents, rows, summary = _sections(result.markdown)
    assert len(incidents) == len(result.facts.incidents)
    left = {(m.group(1), date, hhmm) for date, hhmm, text in rows if (m := _LEFT.match(text))}
    down = {(m.group(1), date, hhmm) for date, hhmm, text in rows if (m := _DOWN.match(text))}
    back = {(date, hhmm) for date, hhmm, text in rows if _BACK.search(text)}
    checked = 0
    for headline, story in incidents:
        span = _SPAN.search(headline)
        assert span, headline
        date, start, end = span.groups()
        groups = _order_times(story)
        # the headline's start is the first group's time in the text ...
        assert groups[0][1] == start, (headline, story)
        # ... the time the summary gives the incident ...
        assert f"{date} {start})" in summary, (headline, summary)
        # ... and every server's row in the timeline is at the time the text gives it
        for servers, at in groups:
            for server in servers:
                assert (server, at) in {(s, hhmm) for s, _, hhmm in left | down}, (server, at)
                checked += 1
        assert any((server, date, start) in left | down for server in groups[0][0])
        if end is not None:
            assert any(hhmm == end for _, hhmm in back), (headline, back)
    # a server down is stated at the same minute in the evidence and in the timeline
    evidence_down = re.findall(
        rf"- ({_ID}) (?:down at (\d\d-\d\d \d\d:\d\d)|(\d\d-\d\d \d\d:\d\d) 응답 없음\(다운\))",
        result.markdown,
    )
    for server, en_at, ko_at in evidence_down:
        assert (server, *(en_at or ko_at).split()) in down, (server, en_at or ko_at, down)
        checked += 1
    return checked


@pytest.mark.parametrize("language", ["ko", "en"])
@pytest.mark.parametrize("fleet_name", list(FLEETS))
def test_headline_summary_text_and_timeline_name_the_same_time_for_each_event(
    fleet_name: str, language: Language
) -> None:
    result = _answer(FLEETS[fleet_name](), JobType.REPORT, language)
    assert isinstance(result, ReportResult)

    checked = assert_one_time_per_event(result)

    assert checked >= len(result.facts.incidents) > 0


def test_the_timeline_table_has_a_header_row_in_the_reports_language() -> None:
    headers: tuple[tuple[Language, str], ...] = (
        ("ko", "| 시각 | 내용 |"),
        ("en", "| Time | Event |"),
    )
    for language, header in headers:
        result = _answer(build_synthetic_fleet(42), JobType.REPORT, language)

        lines = result.markdown.splitlines()
        at = lines.index(header)

        assert lines[at + 1] == "|---|---|" and _ROW.match(lines[at + 2])
        assert "| | |" not in lines
