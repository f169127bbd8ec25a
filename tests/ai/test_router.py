from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shared.ai.router import answer_simple, classify
from shared.jobs import Complexity, JobType
from shared.settings import AISettings
from tests.support import REPO_ROOT, SEED_QUERY

LABELLED = Path(__file__).resolve().parent.parent / "data" / "router_labelled.jsonl"


def test_seed_query_is_a_complex_report(settings: AISettings) -> None:
    got = classify(SEED_QUERY, settings)
    assert got.level == Complexity.COMPLEX
    assert got.job_type == JobType.REPORT
    assert got.estimated_seconds > classify("서버 상태 어때?", settings).estimated_seconds
    assert "all_servers" in got.reasons


def test_status_questions_are_simple(settings: AISettings) -> None:
    for query in ("지금 서버 상태 어때?", "Is db-01 up?", "안녕하세요"):
        assert classify(query, settings).level == Complexity.SIMPLE


def test_thresholds_come_from_settings() -> None:
    query = "app-02 CPU 사용 패턴 분석해줘"
    assert classify(query, AISettings()).level == Complexity.MEDIUM
    assert (
        classify(query, AISettings(router_medium_score=10, router_complex_score=20)).level
        == Complexity.SIMPLE
    )
    assert (
        classify(query, AISettings(router_medium_score=1, router_complex_score=2)).level
        == Complexity.COMPLEX
    )


def test_labelled_set_is_big_enough_and_mostly_right(settings: AISettings) -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line]
    assert len(rows) >= 60
    assert {r["level"] for r in rows} == {"simple", "medium", "complex"}
    assert {r["type"] for r in rows} == {t.value for t in JobType}
    hits = sum(classify(r["query"], settings).level.value == r["level"] for r in rows)
    assert hits / len(rows) >= 0.85


def test_simple_answer_comes_from_the_status_summary(settings: AISettings) -> None:
    answer = answer_simple("db-01 상태 알려줘", settings)
    row = answer.data["servers"][0]
    assert row["serverId"] == "db-01"
    assert f"CPU {row['cpu']:g}%" in answer.answer
    assert answer.answer.startswith("현재(")
    assert answer.data["total"] == 15
    english = answer_simple("What's the current status?", settings)
    assert english.answer.startswith("Now (") and "15 servers" in english.answer
    json.dumps(english.data)  # JSON-able


def test_router_stays_light() -> None:
    code = (
        "import sys, shared.ai, shared.ai.router, shared.ai.pipeline\n"
        "heavy = [m for m in ('numpy', 'google.genai') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_accuracy_script_prints_accuracy() -> None:
    script = REPO_ROOT / "scripts" / "router_accuracy.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert "level accuracy:" in done.stdout and "job type accuracy" in done.stdout
