"""make demo: bring the local stack up, submit the seed's example query over HTTP, show the
progress steps as the worker writes them, print the report, and shut everything down.

It speaks only HTTP to the function URLs, as the dashboard would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from infra.local.stack import LocalStack, StackConfig

SEED_QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"
FINAL = {"completed", "failed", "cancelled"}


def run_demo(base_url: str, query: str, *, poll_s: float = 0.5, timeout_s: float = 300) -> int:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        started = time.perf_counter()
        created = http.post("/ai-jobs-create", json={"query": query})
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"\nPOST /ai-jobs-create {{query: {query!r}}}")
        print(f"  -> {created.status_code} in {elapsed_ms:.0f} ms: {created.json()}")
        if created.status_code == 200:
            print(created.json().get("answer", ""))
            return 0
        if created.status_code != 202:
            return 1
        job_id = created.json()["jobId"]
        poll_url = created.headers["Location"]
        last_log = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = http.get(poll_url, params={"logs": "true", "logsAfter": last_log}).json()
            for line in job.get("logs", []):
                last_log = max(last_log, line["id"])
                progress = "" if line.get("progress") is None else f"{line['progress']:3d}% "
                text = (
                    line["step"]
                    if line["message"] == line["step"]
                    else (f"{line['step']}: {line['message']}")
                )
                print(f"  [{line['createdAt'][11:23]}] {progress}{text}")
            if job["status"] in FINAL:
                break
            time.sleep(poll_s)
        else:
            print(f"job {job_id} did not finish in {timeout_s:.0f}s", file=sys.stderr)
            return 1
        print(f"\njob {job_id}: {job['status']} after {job['attempts']} attempt(s)\n")
        if job["status"] != "completed":
            print(f"error: {job.get('errorCode')}: {job.get('error')}", file=sys.stderr)
            return 1
        print(job["result"]["markdown"])
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", nargs="?", default=SEED_QUERY)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ajq-demo-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=10)
        config.quiet = False
        with LocalStack(config) as stack:
            print(f"stack up: functions at {stack.base_url}/<function-name>")
            return run_demo(stack.base_url, args.query)


if __name__ == "__main__":
    sys.exit(main())
