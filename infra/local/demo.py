"""make demo: bring the local stack up, sign in anonymously through the local Supabase Auth,
submit the seed's example query over HTTP with that session, follow it live through Supabase
Realtime (a progress bar with the step names, and each log line), print the report, and shut
everything down. ``make demo`` sets ``LOCAL_STEP_DELAY_MS`` so the steps can be watched.

It speaks to the function URLs and the Supabase URL only, as the dashboard would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from client import AIJobsClient, follow
from infra.local.stack import LocalStack, StackConfig

SEED_QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"


def run_demo(stack: LocalStack, query: str) -> int:
    with AIJobsClient.signed_in(stack.base_url, stack.api_url, stack.anon_key) as jobs:
        print(f"\nsigned in anonymously through {stack.api_url}/auth/v1")
        started = time.perf_counter()
        created = jobs.create(query)
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"\nPOST /ai-jobs-create {{query: {query!r}}}")
        print(f"  -> in {elapsed_ms:.0f} ms: {created}")
        if created.get("mode") == "sync":
            print(created["answer"])
            return 0
        print("following it through Supabase Realtime:\n")
        return follow(jobs, created["jobId"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", nargs="?", default=SEED_QUERY)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ajq-demo-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=10, jwt_identity=True)
        config.quiet = False
        with LocalStack(config) as stack:
            print(f"stack up: functions at {stack.base_url}/<function-name>")
            # the function host inherits this process's environment (``make demo`` sets it)
            pace = os.environ.get("LOCAL_STEP_DELAY_MS", "0")
            print(f"pacing: LOCAL_STEP_DELAY_MS={pace} (each step stays {pace} ms on screen)")
            return run_demo(stack, args.query)


if __name__ == "__main__":
    sys.exit(main())
