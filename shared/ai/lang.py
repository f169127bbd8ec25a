"""The query's language and the few fixed phrases the AI work shows to users.

Only Korean and English are supported: a query with enough Hangul is Korean, anything else is
English. Step names follow the seed (작업 시작 → 데이터 수집 중 → AI 분석 중 → 결과 정리 중 → 완료).
"""

from __future__ import annotations

from typing import Literal

Language = Literal["ko", "en"]

#: Progress steps of the pipeline: percent -> message per language (seed §7.3).
STEP_MESSAGES: dict[int, dict[Language, str]] = {
    0: {"ko": "작업 시작", "en": "Starting"},
    20: {"ko": "데이터 수집 중", "en": "Collecting data"},
    50: {"ko": "AI 분석 중", "en": "AI analysis"},
    80: {"ko": "결과 정리 중", "en": "Formatting the result"},
    100: {"ko": "완료", "en": "Done"},
}


def _is_hangul(char: str) -> bool:
    code = ord(char)
    # syllables, jamo and compatibility jamo
    return 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F


def detect_language(text: str) -> Language:
    """Korean when Hangul makes up at least a fifth of the letters (server names are Latin)."""
    letters = [char for char in text if char.isalpha()]
    if not letters:
        return "en"
    hangul = sum(1 for char in letters if _is_hangul(char))
    # a Korean sentence full of host names ("db-01, web-02 상태") still counts as Korean
    return "ko" if hangul and hangul * 5 >= len(letters) else "en"


def step_message(percent: int, language: Language) -> str:
    return STEP_MESSAGES[percent][language]
