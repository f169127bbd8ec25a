"""The peer the benchmark measures beside the project: Procrastinate (a Postgres job queue,
LISTEN/NOTIFY to wake its workers) on the same Postgres server, its worker in its own process.

The task does no work, so what it costs is the queue's own cost: pickup latency (deferred ->
started, from Procrastinate's own events table), CPU per job (worker process plus Postgres)
and burst throughput.

    python scripts/bench_peer.py worker <conninfo>     # the worker process (bench starts it)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import procrastinate
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_tools import CpuMeter, percentiles

QUEUE = "bench"


def make_app(conninfo: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop", queue=QUEUE)
    def noop(n: int) -> int:
        return n

    return app


def _finished(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "select count(*) from procrastinate_jobs where status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_finished(conninfo: str, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _finished(conninfo) < count:
        if time.monotonic() > deadline:
            raise SystemExit("procrastinate jobs did not finish")
        time.sleep(0.01)


def _pickup_ms(conninfo: str) -> list[float]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            """
            select extract(epoch from s.at - d.at) * 1000
              from procrastinate_events d
              join procrastinate_events s on s.job_id = d.job_id and s.type = 'started'
             where d.type = 'deferred'
            """
        ).fetchall()
    return [float(r[0]) for r in rows]


def measure(conninfo: str, postmaster: int, *, sequential: int, burst: int) -> dict[str, Any]:
    """Start the worker, defer jobs one at a time (pickup latency), then a burst from 8
    threads (throughput, CPU per job)."""
    app = make_app(conninfo)
    with app.open():
        app.schema_manager.apply_schema()
    worker = subprocess.Popen(
        [sys.executable, __file__, "worker", conninfo],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)  # the worker connects and LISTENs
        with app.open():
            task = app.tasks["noop"]
            for i in range(sequential):
                task.defer(n=i)
                _wait_finished(conninfo, i + 1)
                time.sleep(0.02)
            pickup = percentiles(_pickup_ms(conninfo))
            meter = CpuMeter({"worker": worker.pid, "postgres": postmaster}).start()
            began = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda i: task.defer(n=i), range(burst)))
            _wait_finished(conninfo, sequential + burst)
            elapsed = time.perf_counter() - began
            meter.stop()
    finally:
        worker.terminate()
        worker.wait(10)
    cpu = meter.per(burst)
    return {
        "pickupMs": pickup,
        "burst": {
            "jobs": burst,
            "seconds": round(elapsed, 3),
            "jobsPerSecond": round(burst / elapsed, 1),
        },
        "cpuMsPerJob": {**cpu, "total": round(sum(cpu.values()), 3)},
        "note": "no-op task: all of it is the queue's own cost; the defer side (this "
        "process) is not counted, as the project's client side is not",
    }


def _worker(conninfo: str) -> None:
    app = make_app(conninfo)
    app.run_worker(queues=[QUEUE], concurrency=8, install_signal_handlers=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        _worker(sys.argv[2])
    else:
        print(statistics.__doc__ and __doc__)
