"""Print the complexity router's accuracy on the labelled queries.

Usage: ``python scripts/router_accuracy.py [tests/data/router_labelled.jsonl] [-v]``. Each line
of the file is ``{"query", "level", "type"}``; the script prints the level accuracy, the job
type accuracy (on queries that become jobs) and, with ``-v``, every miss.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.ai.router import classify  # noqa: E402
from shared.settings import AISettings  # noqa: E402


@dataclass(frozen=True)
class Accuracy:
    queries: int
    level_hits: int
    jobs: int  #: queries labelled medium or complex (they become jobs, so their type counts)
    type_hits: int
    misses: list[str]

    @property
    def level(self) -> float:
        return self.level_hits / self.queries

    @property
    def job_type(self) -> float:
        return self.type_hits / max(self.jobs, 1)


def load(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def measure(rows: list[dict[str, str]], settings: AISettings) -> Accuracy:
    level_hits = type_hits = jobs = 0
    misses = []
    for row in rows:
        got = classify(row["query"], settings)
        level_ok = got.level.value == row["level"]
        level_hits += level_ok
        type_ok = True
        if row["level"] != "simple":
            jobs += 1
            type_ok = got.job_type.value == row["type"]
            type_hits += type_ok
        if not (level_ok and type_ok):
            misses.append(
                f"MISS level {row['level']}->{got.level.value} type "
                f"{row['type']}->{got.job_type.value} "
                f"score {got.score} {got.reasons}: {row['query']}"
            )
    return Accuracy(len(rows), level_hits, jobs, type_hits, misses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=str(ROOT / "tests/data/router_labelled.jsonl"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print every miss")
    args = parser.parse_args()
    result = measure(load(Path(args.path)), AISettings.from_env())
    if args.verbose:
        print(*result.misses, sep="\n")
    print(f"queries: {result.queries}")
    print(f"level accuracy: {result.level_hits}/{result.queries} = {result.level:.1%}")
    print(
        f"job type accuracy (job queries): {result.type_hits}/{result.jobs} = {result.job_type:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
