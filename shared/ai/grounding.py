"""Checks that a text states only numbers the facts contain.

A writer's narrative may repeat numbers; it must not invent them. The allowed numbers are every
number in the draft result's JSON (facts and code-built text, keys included, so ids such as
``web-01`` and labels such as ``p95`` count), every list's length (counts such as "4 incidents"),
fractions shown as percentages, and the query's own numbers.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: A number as a reader sees it: thousands separated by commas only in groups of three
#: ("1,276.5" is one number, "3,4" two), a decimal part after a dot. No lookbehind on letters:
#: "p95" or Korean "약15" still show 95 and 15, and the allowed set is read the same way.
_NUMBER = re.compile(r"(?<!\d)(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _canon(token: str) -> float | None:
    try:
        return round(float(token.replace(",", "")), 2)
    except ValueError:
        return None


def numbers_in(text: str) -> list[float]:
    """The numbers a reader sees in ``text`` (``1,276.5`` is one number)."""
    found = []
    for match in _NUMBER.finditer(text):
        value = _canon(match.group())
        if value is not None:
            found.append(value)
    return found


def _walk(node: Any, allowed: set[float]) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _walk(value, allowed)
    elif isinstance(node, list):
        allowed.add(float(len(node)))
        for value in node:
            _walk(value, allowed)
    elif isinstance(node, bool):
        return
    elif isinstance(node, int | float):
        allowed.add(round(float(node), 2))
        if 0 <= node <= 1:
            allowed.add(round(float(node) * 100, 2))  # 0.95 shown as 95%


def allowed_numbers(data: Any, *extra_texts: str) -> set[float]:
    """Every number the facts (a JSON-able structure) and the given texts contain."""
    allowed: set[float] = {0.0, 1.0}
    _walk(data, allowed)
    for text in (json.dumps(data, ensure_ascii=False, default=str), *extra_texts):
        allowed.update(numbers_in(text))
    return allowed


def unsupported_numbers(text: str, allowed: set[float]) -> list[float]:
    """Numbers in ``text`` that are not among the facts; empty when the text is grounded."""
    return [value for value in numbers_in(text) if value not in allowed]
