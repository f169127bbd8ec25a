"""Benchmark the local stack against the seed's targets (§8.2), with baselines from the same run.

Starts its own stack on free ports (local writer, so the figures are the queue's own cost,
not a model's), then measures over real HTTP on loopback:

- baselines: the function host answering with no work, and one PostgREST RPC straight to
  the gateway (the floor under every function that touches the database);
- job creation (target < 500 ms), polling (< 200 ms), 304 polling, the synchronous simple
  answer (< 5 s), how soon a progress step is visible to a poller (< 5 s), and throughput
  of whole jobs.

    make bench        # or: .venv/bin/python scripts/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig

COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"
SIMPLE = "현재 서버 상태 알려줘"
FINAL = {"completed", "failed", "cancelled"}


def timed(call: Callable[[], httpx.Response], n: int, expect: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != expect:
            raise SystemExit(f"unexpected {response.status_code}: {response.text[:300]}")
    return samples


def pct(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def row(name: str, samples: list[float], target: str = "", unit: str = "ms") -> None:
    p50, p95, p99 = pct(samples)
    print(
        f"{name:<38} n={len(samples):<5} p50={p50:8.1f}{unit}  p95={p95:8.1f}{unit}"
        f"  p99={p99:8.1f}{unit}  {target}"
    )


def wait_final(http: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/ai-jobs-get/{job_id}").json()
        if job["status"] in FINAL:
            return dict(job)
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not finish")


def drain(http: httpx.Client) -> None:
    while http.get("/ai-jobs-list", params={"status": "queued,processing"}).json()["jobs"]:
        time.sleep(0.2)


def visibility(http: httpx.Client, jobs: int) -> list[float]:
    """Seconds between a progress row being written and a 50 ms poller first seeing it."""
    delays: list[float] = []
    for _ in range(jobs):
        job_id = http.post("/ai-jobs-create", json={"query": COMPLEX}).json()["jobId"]
        seen: set[int] = set()
        while True:
            job = http.get(f"/ai-jobs-get/{job_id}", params={"logs": "true"}).json()
            now = datetime.now().astimezone()
            for line in job["logs"]:
                if line["id"] not in seen and line["progress"] is not None:
                    seen.add(line["id"])
                    written = datetime.fromisoformat(line["createdAt"])
                    delays.append((now - written).total_seconds() * 1000)
            if job["status"] in FINAL:
                break
            time.sleep(0.05)
    return delays


def throughput(base_url: str, jobs: int, clients: int) -> tuple[float, list[float]]:
    durations: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            started = time.perf_counter()
            job_id = http.post("/ai-jobs-create", json={"query": COMPLEX}).json()["jobId"]
            job = wait_final(http, job_id)
            if job["status"] != "completed":
                raise SystemExit(f"job {job_id} ended {job['status']}")
            with lock:
                durations.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - started), durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    args = parser.parse_args(argv)
    n = 40 if args.quick else 200
    env = {"MAX_JOBS_PER_MINUTE": "100000", "MAX_ACTIVE_JOBS": "100000"}
    with tempfile.TemporaryDirectory(prefix="ajq-bench-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack, httpx.Client(base_url=stack.base_url, timeout=60) as http:
            gateway = httpx.Client(
                base_url=stack.gateway_url,
                headers={
                    "apikey": stack.service_key,
                    "Authorization": f"Bearer {stack.service_key}",
                },
            )
            job_id = http.post("/ai-jobs-create", json={"query": COMPLEX}).json()["jobId"]
            wait_final(http, job_id)
            # warm every path once
            timed(lambda: http.get(f"/ai-jobs-get/{job_id}"), 5, 200)
            timed(lambda: http.post("/ai-jobs-create", json={"query": SIMPLE}), 3, 200)

            print("\n== baselines (same run, same machine) ==")
            row("function host, no work (GET /)", timed(lambda: http.get("/"), n, 200))
            row(
                "one PostgREST RPC (get_job) direct",
                timed(
                    lambda: gateway.post("/rest/v1/rpc/get_job", json={"p_job_id": job_id}),
                    n,
                    200,
                ),
            )
            print("\n== API latency over loopback HTTP ==")
            tasks = stack.tasks_client()
            tasks.pause_queue(name=stack.queue_path)  # creates only: no job runs meanwhile
            row(
                "create job (202), queue paused",
                timed(lambda: http.post("/ai-jobs-create", json={"query": COMPLEX}), n, 202),
                "target < 500 ms",
            )
            tasks.resume_queue(name=stack.queue_path)
            drain(http)
            # every create starts a job in the same single local host process (2 cores)
            row(
                "create job (202), jobs running",
                timed(lambda: http.post("/ai-jobs-create", json={"query": COMPLEX}), n, 202),
                "target < 500 ms",
            )
            drain(http)  # the reads below are timed on a quiet host
            row(
                "poll job (200)",
                timed(lambda: http.get(f"/ai-jobs-get/{job_id}"), n, 200),
                "target < 200 ms",
            )
            etag = http.get(f"/ai-jobs-get/{job_id}").headers["ETag"]
            row(
                "poll job, If-None-Match (304)",
                timed(
                    lambda: http.get(f"/ai-jobs-get/{job_id}", headers={"If-None-Match": etag}),
                    n,
                    304,
                ),
                "target < 200 ms",
            )
            row("list jobs (20 per page)", timed(lambda: http.get("/ai-jobs-list"), n // 2, 200))
            row(
                "simple query answered synchronously",
                timed(lambda: http.post("/ai-jobs-create", json={"query": SIMPLE}), n // 2, 200),
                "target < 5000 ms",
            )
            print("\n== progress and throughput ==")
            row(
                "progress visible to a 50 ms poller",
                visibility(http, 5 if args.quick else 15),
                "target < 5000 ms",
            )
            jobs = 20 if args.quick else 60
            rate, durations = throughput(stack.base_url, jobs, clients=8)
            row(f"whole job, submit -> completed ({jobs} jobs)", durations)
            print(
                f"{'throughput, 8 concurrent clients':<38} {rate:.2f} jobs/s "
                "(local writer; the queue's own overhead)"
            )
            gateway.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
