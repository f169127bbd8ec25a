"""The number check that keeps invented figures out of a narrative."""

from __future__ import annotations

import pytest

from shared.ai.grounding import allowed_numbers, numbers_in, unsupported_numbers


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("1,276.5 ms", [1276.5]),
        ("12,345,678 requests", [12345678.0]),
        ("values 3,4 and 5", [3.0, 4.0, 5.0]),
        ("12,3456", [12.0, 3456.0]),
        ("web-01 at 95% (p95 96.2)", [1.0, 95.0, 95.0, 96.2]),
        ("약15분 뒤 80%", [15.0, 80.0]),
        ("12-23 02:30", [12.0, 23.0, 2.0, 30.0]),
        ("version 1.2.3", [1.2, 3.0]),
        (".5 more", [5.0]),
    ],
)
def test_numbers_are_read_as_a_reader_reads_them(text: str, numbers: list[float]) -> None:
    assert numbers_in(text) == numbers


def test_a_thousands_separated_number_is_not_grounded_by_its_pieces() -> None:
    allowed = allowed_numbers({"count": 1, "peak": 276.5})

    assert unsupported_numbers("peaked at 1,276.5 ms", allowed) == [1276.5]


def test_a_thousands_separated_fact_grounds_the_same_number_written_either_way() -> None:
    allowed = allowed_numbers({"requests": 1276.5})

    assert unsupported_numbers("1,276.5 requests, i.e. 1276.5", allowed) == []
    assert unsupported_numbers("1,277.5 requests", allowed) == [1277.5]
