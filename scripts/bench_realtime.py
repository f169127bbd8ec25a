"""Benchmark "progress visible through Realtime": commit → event in the client, p50/p95,
next to the same progress seen by a client polling ``ai-jobs-get`` at the interval the API
suggests (``X-Poll-Interval``), in the same run on the same jobs.

Starts its own stack on free ports (local writer), signs in anonymously through the local
Auth, subscribes with the official Python Realtime client to the visitor's ``ai_job_logs``
(no filter: RLS keeps it to the visitor's own), then submits jobs over HTTP with that session.

- Realtime: receive time − the event's ``commit_timestamp`` (the transaction's commit, ms);
- polling: the time a poller first sees a log line − its ``createdAt`` (the writing
  transaction's start, so this slightly favours polling).

Both clocks are this machine's. ``make bench`` runs it after scripts/bench.py.

    .venv/bin/python scripts/bench_realtime.py [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client import FINAL, AIJobsClient
from infra.local.stack import LocalStack, StackConfig
from shared.functions import GET

COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"


def pct(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94], max(samples)


def row(name: str, samples: list[float]) -> None:
    if len(samples) < 2:
        print(f"{name:<44} n={len(samples)} (too few samples)")
        return
    p50, p95, top = pct(samples)
    print(f"{name:<44} n={len(samples):<5} p50={p50:8.1f}ms  p95={p95:8.1f}ms  max={top:8.1f}ms")


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class RealtimeLog:
    """The visitor's log lines through Realtime, on a thread with its own event loop."""

    def __init__(self, stack: LocalStack, token: str) -> None:
        self.stack, self.token = stack, token
        self.latencies_ms: list[float] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def on_change(self, payload: Any) -> None:
        received = time.time()
        committed = seconds(payload["data"]["commit_timestamp"])
        self.latencies_ms.append((received - committed) * 1000)

    async def _run(self) -> None:
        from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

        client = AsyncRealtimeClient(f"{self.stack.api_url}/realtime/v1", self.stack.anon_key)
        await client.connect()
        await client.set_auth(self.token)
        channel = client.channel("bench")
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent.Insert, self.on_change, table="ai_job_logs"
        )
        channel.on_system(lambda p: self.ready.set())
        await channel.subscribe()
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        await client.close()


def poll(base_url: str, token: str, job_id: str, latencies_ms: list[float]) -> None:
    """A client polling at the API's suggested interval, as the seed's web page does."""
    headers = {"Authorization": f"Bearer {token}"}
    last = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        while True:
            response = http.get(GET.path(job_id), params={"logs": "true", "logsAfter": last})
            seen = time.time()
            job = response.json()
            for line in job.get("logs", []):
                last = max(last, int(line["id"]))
                latencies_ms.append((seen - seconds(line["createdAt"])) * 1000)
            if job["status"] in FINAL:
                return
            time.sleep(float(response.headers.get("X-Poll-Interval", "3")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args(argv)
    env = {"MAX_ACTIVE_JOBS": "1000", "MAX_JOBS_PER_MINUTE": "1000"}
    with tempfile.TemporaryDirectory(prefix="ajq-bench-rt-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp), reap_interval_s=0, jwt_identity=True, function_env=env
        )
        with LocalStack(config) as stack:
            jobs = AIJobsClient.signed_in(stack.base_url, stack.api_url, stack.anon_key)
            token = jobs.bearer_token or ""
            pushed = RealtimeLog(stack, token)
            pushed.thread.start()
            if not pushed.ready.wait(15):
                raise SystemExit("Realtime did not subscribe")
            polled: list[float] = []
            pollers = []
            for _ in range(args.jobs):
                job_id = jobs.create(COMPLEX)["jobId"]
                poller = threading.Thread(target=poll, args=(stack.base_url, token, job_id, polled))
                poller.start()
                pollers.append(poller)
                time.sleep(0.2)
            for poller in pollers:
                poller.join(120)
            time.sleep(0.5)  # the last events are already delivered; let the callbacks land
            pushed.stop.set()
            pushed.thread.join(10)
            jobs.close()
            print(f"\n== progress visible to the client ({args.jobs} jobs, local writer) ==")
            row("through Realtime: commit -> event", pushed.latencies_ms)
            row("polling at X-Poll-Interval: write -> seen", polled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
