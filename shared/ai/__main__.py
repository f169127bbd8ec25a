"""``python -m shared.ai "<query>"``: run the pipeline on the synthetic fleet and print the result.

Shows each step on stderr and the result as Markdown (``--json`` for the result model) on
stdout. Uses the local writer unless ``--gemini`` is given (then the settings' Gemini key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shared.ai.router import classify
from shared.errors import AppError
from shared.jobs import JobType
from shared.settings import AISettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.ai", description=__doc__)
    parser.add_argument("query")
    parser.add_argument(
        "--type", choices=[t.value for t in JobType], help="job type (default: inferred)"
    )
    parser.add_argument("--json", action="store_true", help="print the result model as JSON")
    parser.add_argument("--gemini", action="store_true", help="use Gemini (needs GEMINI_API_KEY)")
    args = parser.parse_args(argv)

    from shared.ai.pipeline import run

    env_settings = AISettings.from_env()
    settings = env_settings.model_copy(
        update={"writer": "auto" if args.gemini else "local", "fleet_source": "synthetic"}
    )
    routing = classify(args.query, settings)
    print(
        f"[router] level={routing.level.value} type={routing.job_type.value} score={routing.score} "
        f"~{routing.estimated_seconds}s ({', '.join(routing.reasons)})",
        file=sys.stderr,
    )
    started = time.monotonic()

    def show(percent: int, message: str) -> bool:
        print(f"[{percent:3d}%] {message}  (+{time.monotonic() - started:.2f}s)", file=sys.stderr)
        return True

    try:
        result = run(args.query, JobType(args.type) if args.type else None, show, settings=settings)
    except AppError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(result.model_dump(mode="json", by_alias=True), ensure_ascii=False, indent=2)
        )
    else:
        print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
