"""The router's accuracy has a floor in the suite, on the labelled set its cues were tuned on
and on the held-out set written afterwards (``make router-accuracy`` prints the figures: 60/60
levels and 41/42 types labelled, 27/30 and 20/22 held out, when this floor was set)."""

from __future__ import annotations

import pytest

from scripts.router_accuracy import load, measure
from shared.settings import AISettings
from tests.support import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data"


@pytest.mark.parametrize(
    ("name", "size", "level_floor", "type_floor"),
    [("router_labelled.jsonl", 60, 0.95, 0.95), ("router_heldout.jsonl", 30, 0.85, 0.85)],
)
def test_the_router_stays_above_its_floor(
    name: str, size: int, level_floor: float, type_floor: float
) -> None:
    result = measure(load(DATA / name), AISettings())

    assert result.queries >= size, "a set only grows: a dropped query would lift the rate"
    assert result.level >= level_floor, result.misses
    assert result.job_type >= type_floor, result.misses
