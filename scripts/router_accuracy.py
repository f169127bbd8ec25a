"""Print the complexity router's accuracy on the labelled queries.

Usage: ``python scripts/router_accuracy.py [tests/data/router_labelled.jsonl] [-v]``. Each line
of the file is ``{"query", "level", "type"}``; the script prints the level accuracy, the job
type accuracy (on queries that become jobs) and, with ``-v``, every miss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.ai.router import classify  # noqa: E402
from shared.settings import AISettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=str(ROOT / "tests/data/router_labelled.jsonl"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print every miss")
    args = parser.parse_args()
    settings = AISettings.from_env()
    rows = [
        json.loads(line)
        for line in Path(args.path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    level_hits = type_hits = jobs = 0
    for row in rows:
        got = classify(row["query"], settings)
        level_ok = got.level.value == row["level"]
        level_hits += level_ok
        type_ok = True
        if row["level"] != "simple":
            jobs += 1
            type_ok = got.job_type.value == row["type"]
            type_hits += type_ok
        if args.verbose and not (level_ok and type_ok):
            print(
                f"MISS level {row['level']}->{got.level.value} type "
                f"{row['type']}->{got.job_type.value} "
                f"score {got.score} {got.reasons}: {row['query']}"
            )
    print(f"queries: {len(rows)}")
    print(f"level accuracy: {level_hits}/{len(rows)} = {level_hits / len(rows):.1%}")
    print(f"job type accuracy (job queries): {type_hits}/{jobs} = {type_hits / max(jobs, 1):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
