"""In a real browser: the job log follows the visitor's UI language, not the question's.

A visitor who chose Korean asks in English. The pipeline writes its steps in the question's
language (English) and the database writes its own lines in English; the console shows every
one of them in Korean, and in English again when the visitor switches. The report keeps the
question's language, and its timeline table has a header row as marked renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.local import fake_gemini
from tests.console.pages import slow_answer

QUESTION = "Analyze all servers and write a full incident and optimization report"
KO_STEPS = ["작업 시작", "데이터 수집 중", "AI 분석 중", "결과 정리 중", "완료"]
EN_STEPS = ["Starting", "Collecting data", "AI analysis", "Formatting the result", "Done"]
#: what the database and the pipeline wrote, in English, for this job
WRITTEN = ["job created", "attempt 1 of 3 started", "job completed", *EN_STEPS[:4]]
LONG = 60_000  # ms: how long a wait may take on a busy 2-core machine before it is a failure


def _hangul(text: str) -> bool:
    return any(0xAC00 <= ord(c) <= 0xD7A3 for c in text)


def _log(page: Any) -> tuple[list[str], list[str]]:
    lines = page.locator("#log .log-line")
    keys = [lines.nth(i).get_attribute("data-key") for i in range(lines.count())]
    return lines.all_inner_texts(), keys


def test_a_korean_ui_shows_korean_log_lines_for_an_english_question(
    page: Any, fake: fake_gemini.FakeGemini, shots: Path
) -> None:
    fake.push(slow_answer(0))
    page.click("#lang")
    page.click("#lang")  # the visitor chose Korean: an English question no longer switches it
    page.wait_for_function("document.documentElement.lang === 'ko'")

    page.fill("#query", QUESTION)
    page.click("#submit")

    page.wait_for_selector("#decision[data-mode=job]")
    page.wait_for_selector("#job[data-status=completed]", timeout=LONG)
    page.wait_for_selector("#log .log-line[data-key=finished]", timeout=LONG)
    assert page.get_attribute("html", "lang") == "ko"
    lines, keys = _log(page)
    assert "as-written" not in keys, list(zip(keys, lines, strict=True))
    assert all(_hangul(line) for line in lines), lines
    for step in KO_STEPS:
        assert sum(line.endswith(step) for line in lines) == 1, (step, lines)
    for written in WRITTEN:
        assert not any(written in line for line in lines), (written, lines)
    # the original wording stays at hand (the line's tooltip) for a translated line
    assert page.get_attribute("#log .log-line[data-key=created]", "title") == "job created"
    page.locator("#job").screenshot(path=shots / "20-korean-log-english-question.png")

    # the report is in the question's language; its timeline table has a real header row
    page.wait_for_selector("#result:not([hidden])")
    headers = page.locator("#result-body table").first.locator("thead th").all_inner_texts()
    assert headers == ["Time", "Event"]
    first_row = page.locator("#result-body table").first.locator("tbody tr").first
    assert first_row.locator("td").count() == 2

    page.click("#lang")  # the same lines, now in English

    page.wait_for_function("document.documentElement.lang === 'en'")
    lines, keys = _log(page)
    assert not any(_hangul(line) for line in lines), lines
    for step in EN_STEPS:
        assert sum(line.endswith(step) for line in lines) == 1, (step, lines)
    assert any(line.endswith("Job created") for line in lines)
    page.locator("#job").screenshot(path=shots / "21-english-log.png")
