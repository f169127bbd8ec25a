from __future__ import annotations

import subprocess
import sys

import pytest

from shared.ai import pipeline
from shared.ai.grounding import allowed_numbers, unsupported_numbers
from shared.ai.results import (
    AIResult,
    OptimizationResult,
    PredictionResult,
    ReportResult,
    parse_result,
)
from shared.jobs import JobType
from shared.settings import AISettings
from tests.support import SEED_QUERY

QUERIES = {
    JobType.ANALYSIS: "모든 서버 상태를 진단해줘",
    JobType.REPORT: "Write an incident report for the last 24 hours",
    JobType.OPTIMIZATION: "서버 비용 최적화 제안해줘",
    JobType.PREDICTION: "Predict when servers will run out of capacity",
}


def _run(query: str, job_type: JobType | None, settings: AISettings) -> AIResult:
    return pipeline.run(query, job_type, lambda percent, message: True, settings=settings)


@pytest.mark.parametrize("job_type", list(JobType))
def test_each_result_validates_and_states_only_facts(
    job_type: JobType, settings: AISettings
) -> None:
    result = _run(QUERIES[job_type], job_type, settings)

    wire = result.model_dump(mode="json", by_alias=True)
    assert wire["type"] == job_type.value
    assert (
        "markdown" in wire and "facts" in wire and "affectedServers" not in wire
    ) or job_type == JobType.REPORT
    assert parse_result(wire) == result
    facts_only = allowed_numbers(result.facts.model_dump(mode="json", by_alias=True), result.query)
    code_items = allowed_numbers(result.model_dump(mode="json", exclude={"markdown"}), result.query)
    assert unsupported_numbers(result.markdown, code_items) == []
    # the code-built items themselves only repeat fact numbers (forecasts derive from trends);
    # the chart series are samples for drawing, added after the text is written
    item_text = " ".join(
        str(v)
        for k, v in result.model_dump(mode="json", exclude={"facts", "markdown", "series"}).items()
        if k != "query"
    )
    if job_type != JobType.PREDICTION:
        assert unsupported_numbers(item_text, facts_only) == []


def test_a_wrong_number_would_be_caught(settings: AISettings) -> None:
    result = _run(QUERIES[JobType.REPORT], JobType.REPORT, settings)
    allowed = allowed_numbers(result.model_dump(mode="json"), result.query)
    assert unsupported_numbers("db-01 disk I/O peaked at 97.3%", allowed) == [97.3]


def test_prediction_numbers_follow_the_trends(settings: AISettings) -> None:
    result = _run(QUERIES[JobType.PREDICTION], JobType.PREDICTION, settings)
    assert isinstance(result, PredictionResult)
    assert [f.server_id for f in result.forecasts] == [t.server_id for t in result.facts.trends]
    for forecast, trend in zip(result.forecasts, result.facts.trends, strict=True):
        assert forecast.current == trend.current
        assert forecast.hours_to_threshold == trend.hours_to_warning
        expected = min(trend.current + trend.slope_per_hour * forecast.horizon_hours, 100.0)
        assert forecast.projected == pytest.approx(expected, abs=0.05)
        assert f"{forecast.projected:g}" in result.markdown


def test_optimization_recommends_the_consolidation(settings: AISettings) -> None:
    result = _run(QUERIES[JobType.OPTIMIZATION], JobType.OPTIMIZATION, settings)
    assert isinstance(result, OptimizationResult)
    merge = next(r for r in result.recommendations if r.servers == ["web-03", "web-04"])
    group = result.facts.consolidations[0]
    assert f"{group.combined_cpu_p95:g}%" in merge.expected_effect
    assert {"app-03", "storage-01"} <= {s for r in result.recommendations for s in r.servers}


def test_seed_query_reports_the_real_incidents_in_korean(settings: AISettings) -> None:
    result = _run(SEED_QUERY, None, settings)

    assert isinstance(result, ReportResult)
    assert result.language == "ko"
    text = result.markdown
    for kind, server in [
        ("CPU 급증", "app-02"),
        ("패킷 손실", "lb-01"),
        ("메모리 누수", "cache-01"),
        ("디스크 I/O 포화", "db-01"),
    ]:
        assert f"{server} {kind}" in text
    for incident in result.facts.incidents:
        assert all(server in text for server in incident.servers)
    assert set(result.affected_servers) == {s for i in result.facts.incidents for s in i.servers}
    assert result.recommendations  # "최적화" asks for recommendations too
    assert "근본 원인" in text and "타임라인" in text
    assert result.root_cause is not None and result.root_cause.confidence > 0.5


def test_english_query_gets_an_english_report(settings: AISettings) -> None:
    result = _run("Analyze all servers and write an optimization report", None, settings)
    assert result.language == "en"
    assert "lb-01 packet loss" in result.markdown
    assert "근본" not in result.markdown


def test_cli_answers_the_seed_query_in_korean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shared.ai", SEED_QUERY],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("# 서버 장애 및 최적화 리포트")
    assert "db-01 디스크 I/O 포화" in done.stdout
    assert "[ 50%] AI 분석 중" in done.stderr and "[100%] 완료" in done.stderr
