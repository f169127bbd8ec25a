"""``python -m shared.ai "<query>" [--fleet PATH|URL]``: run the pipeline and print the result.

The fleet is ``--fleet`` if given, else ``FLEET_SOURCE`` (a JSON file or URL in the documented
format), else the synthetic fleet; the first stderr line says which one was used and what it
holds. Shows each step on stderr and the result as Markdown (``--json`` for the result model)
on stdout. Uses the local writer unless ``--gemini`` is given (then the settings' Gemini key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from shared.ai.fleet import Fleet
from shared.ai.router import classify
from shared.errors import AppError
from shared.jobs import JobType
from shared.settings import AISettings


@dataclass(frozen=True)
class _Loaded:
    """The fleet already loaded (and announced), so the pipeline analyses exactly that one."""

    fleet: Fleet

    def load(self) -> Fleet:
        return self.fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.ai", description=__doc__)
    parser.add_argument("query")
    parser.add_argument(
        "--type", choices=[t.value for t in JobType], help="job type (default: inferred)"
    )
    parser.add_argument("--json", action="store_true", help="print the result model as JSON")
    parser.add_argument("--gemini", action="store_true", help="use Gemini (needs GEMINI_API_KEY)")
    parser.add_argument(
        "--fleet",
        metavar="PATH|URL",
        help="fleet JSON file or http(s) URL (default: FLEET_SOURCE, else the synthetic fleet)",
    )
    args = parser.parse_args(argv)

    from shared.ai.fleet import fleet_source_from_settings
    from shared.ai.pipeline import run

    env_settings = AISettings.from_env()
    settings = env_settings.model_copy(
        update={
            "writer": "auto" if args.gemini else "local",
            "fleet_source": args.fleet or env_settings.fleet_source,
        }
    )
    try:
        fleet = fleet_source_from_settings(settings.fleet_source, settings.fleet_seed).load()
    except AppError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    origin = (
        "--fleet"
        if args.fleet
        else "FLEET_SOURCE"
        if settings.fleet_source != "synthetic"
        else "default"
    )
    print(
        f"[fleet] {fleet.source} ({origin}): {len(fleet.servers)} servers, "
        f"{len(fleet.timestamps)} samples every {fleet.interval_minutes} min, "
        f"{fleet.timestamps[0].isoformat()} .. {fleet.timestamps[-1].isoformat()}",
        file=sys.stderr,
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
        result = run(
            args.query,
            JobType(args.type) if args.type else None,
            show,
            settings=settings,
            fleet=_Loaded(fleet),
        )
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
