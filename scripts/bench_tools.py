"""Measuring tools for scripts/bench.py: a keep-alive load generator, CPU meters over process
trees, functions served the way gen2 serves them, and cold starts.

Everything runs on loopback against processes the benchmark started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import psycopg

from infra.local.host import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The functions' settings for a benchmark: one caller makes thousands of jobs a minute, so the
#: per-user caps (30 a minute, 10 unfinished by default) are raised out of the way, as issue 13
#: measures with "caps raised".
RAISED_CAPS = {"MAX_JOBS_PER_MINUTE": "1000000", "MAX_ACTIVE_JOBS": "1000000"}


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": len(samples),
        "p50": round(cuts[49], 2),
        "p90": round(cuts[89], 2),
        "p99": round(cuts[98], 2),
    }


# --- CPU ---------------------------------------------------------------------------------


def tree_cpu_s(pid: int, *, flat: bool = False) -> float:
    """CPU seconds of a process, its live descendants and the children it has reaped (with
    ``flat``, of the process alone)."""
    try:
        root = psutil.Process(pid)
        procs = [root] if flat else [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if not flat:
            total += t.children_user + t.children_system
    return total


#: measured alone: the function host's front, whose children are the function servers
FLAT = {"front"}


class CpuMeter:
    """CPU seconds spent by named process trees between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: tree_cpu_s(pid, flat=name in FLAT) for name, pid in self.pids.items()}

    def start(self) -> CpuMeter:
        self._before = self._now()
        return self

    def stop(self) -> dict[str, float]:
        now = self._now()
        self.spent = {name: now[name] - self._before[name] for name in self.pids}
        return self.spent

    def per(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per operation, per process tree."""
        return {name: round(1000 * s / count, 3) for name, s in self.spent.items()}


# --- load ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    latency_ms: dict[str, float]
    rps: float
    cpu_ms_per_request: dict[str, float]


@contextlib.contextmanager
def frozen_heap(enabled: bool = True) -> Iterator[None]:
    """This process's heap collected, then frozen (``gc.freeze``) until the block ends, so no
    full collection of it pauses the block's threads. Only a heap this call froze is thawed
    after it (``gc.unfreeze`` thaws everything), also when the block raises."""
    froze = enabled and gc.get_freeze_count() == 0
    if froze:
        gc.collect()  # its pause here, before the clock starts
        gc.freeze()
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()  # what the block made is the collector's again


def load(
    base_url: str,
    make_request: Callable[[httpx.Client, int], httpx.Response],
    *,
    connections: int,
    requests: int,
    expect: int,
    cpu: dict[str, int] | None = None,
    freeze_heap: bool = True,
    on_sample: Callable[[int, float, float], None] = lambda connection, began, ended: None,
) -> LoadResult:
    """``requests`` calls spread over ``connections`` keep-alive clients, all at once.

    With ``freeze_heap`` (the default) this process's heap is collected before the timed part
    and frozen through it (``gc.freeze``), so no full collection of the benchmark's own heap
    lands inside a measurement: one stops every client thread at once, 200-240 ms by the
    later rounds of the api part, which read as a server's p99 (scripts/bench_stall.py). A
    client written in C (wrk) has no such pause; the functions freeze theirs too.
    ``on_sample(connection, began, ended)`` sees each timed request (perf_counter seconds)."""
    per_connection = max(1, requests // connections)
    samples: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(connections + 1)
    failures: list[str] = []

    def worker(index: int) -> None:
        mine = []
        try:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                make_request(client, index)  # connect and warm outside the timed part
                start.wait()
                for k in range(per_connection):
                    began = time.perf_counter()
                    response = make_request(client, index * per_connection + k)
                    ended = time.perf_counter()
                    mine.append((ended - began) * 1000)
                    on_sample(index, began, ended)
                    if response.status_code != expect:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
        except threading.BrokenBarrierError:
            return  # another connection failed before the start: reported by it
        except Exception as error:  # a refused connection, a timeout: the load is void
            failures.append(f"{type(error).__name__}: {error}")
            start.abort()  # the others and the main thread stop waiting at the barrier
        with lock:
            samples.extend(mine)

    with frozen_heap(freeze_heap):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
        for thread in threads:
            thread.start()
        meter = CpuMeter(cpu or {})
        with contextlib.suppress(threading.BrokenBarrierError):  # failures says why
            start.wait(timeout=120)
        meter.start()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        meter.stop()
    if failures:
        raise SystemExit(f"unexpected answers ({len(failures)}): {failures[0]}")
    return LoadResult(
        latency_ms=percentiles(samples),
        rps=round(len(samples) / elapsed, 1),
        cpu_ms_per_request=meter.per(len(samples)),
    )


# --- functions served as gen2 serves them ---------------------------------------------------


def serve_function(
    target: str, source: Path, env: dict[str, str], port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``functions-framework --target --source`` (gunicorn) on a free port; returns it and its
    URL once it answers."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            f"--target={target}",
            f"--source={source}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: stop() ends the arbiter and its worker
    )
    url = f"http://127.0.0.1:{port}"
    _wait_port(port, process)
    return process, url


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a function server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"nothing listening on {port} after {timeout_s}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (gunicorn's quick shutdown), then SIGKILL to the whole session, so a worker
    whose arbiter gave up is not left behind."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def cold_start_ms(
    target: str,
    source: Path,
    env: dict[str, str],
    first: Callable[[httpx.Client], httpx.Response],
    expect: Iterable[int],
) -> tuple[float, float]:
    """Process start -> first answered request (imports, app, first clients and connection),
    the way a new instance serves its first request: wall milliseconds, and the CPU
    milliseconds the server's processes spent (the figure a loaded machine does not blur)."""
    port = free_port()
    began = time.perf_counter()
    process, url = serve_function(target, source, env, port)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = first(client)
        elapsed = (time.perf_counter() - began) * 1000
        cpu = tree_cpu_s(process.pid) * 1000
        if response.status_code not in set(expect):
            raise SystemExit(f"cold {target}: {response.status_code} {response.text[:200]}")
        return round(elapsed, 1), round(cpu, 1)
    finally:
        stop(process)


def worker_pid(arbiter_pid: int) -> int:
    """gunicorn's one worker process under its arbiter (WORKERS=1, as gen2 runs it)."""
    deadline = time.monotonic() + 30  # a loaded machine forks slowly
    while time.monotonic() < deadline:
        children = psutil.Process(arbiter_pid).children()
        if children:
            return int(children[0].pid)
        time.sleep(0.05)
    raise SystemExit(f"no gunicorn worker under {arbiter_pid}")


def host_pids(log_text: str) -> dict[str, int]:
    """The function host logs ``<name> pid=<pid> port=<port>`` for each server it forked."""
    pids: dict[str, int] = {}
    for line in log_text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].startswith("pid=") and parts[0].startswith("ai-jobs-"):
            pids[parts[0]] = int(parts[1][4:])
    return pids


def postmaster_pid(db_uri: str) -> int:
    import psycopg

    with psycopg.connect(db_uri) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        # while the connection is open: its backend exits when it closes
        return int(psutil.Process(int(row[0])).ppid())


def json_ready(value: Any) -> Any:
    if isinstance(value, LoadResult):
        return {
            "latencyMs": value.latency_ms,
            "rps": value.rps,
            "cpuMsPerRequest": value.cpu_ms_per_request,
        }
    return value


def ai_cpu_ms(log_text: str, job_ids: set[str]) -> list[float]:
    """``aiCpuMs`` of the "job completed" lines of these jobs in the function host's log."""
    found = []
    for line in log_text.splitlines():
        start = line.find("{")
        if start < 0 or "aiCpuMs" not in line:
            continue
        try:
            entry = json.loads(line[start:])
        except ValueError:
            continue
        if entry.get("jobId") in job_ids and entry.get("message") == "job completed":
            found.append(float(entry["aiCpuMs"]))
    return found


def wait_final(db_uri: str, job_ids: list[str], timeout_s: float = 300) -> None:
    """Wait until every job is final, asking Postgres directly: polling over HTTP would add
    its own load to the processes whose CPU per job is being measured."""
    from shared.jobs import FINAL_STATUSES

    final = [status.value for status in FINAL_STATUSES]
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(db_uri, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "select count(*) from ai_jobs where id = any(%s::uuid[])"
                " and status <> all(%s::text[])",
                (job_ids, final),
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{row[0] if row else '?'} jobs did not finish")
            time.sleep(0.02)


def export_tree(rev: str, into: Path) -> Path:
    """The repository's files at ``rev`` (``git archive``), for an A/B against an older tree."""
    archive = subprocess.run(
        ["git", "archive", rev], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# --- Realtime ----------------------------------------------------------------------------


class Watcher:
    """One Realtime subscriber to the jobs table and its log lines (the console's bindings) on
    its own thread and event loop, so its own CPU is this process's, not the measured ones'.
    With the service role's key every change is delivered to it: the most one watcher costs.
    It counts the events, records each one's commit → delivery latency, and notes which
    jobs it saw complete."""

    def __init__(self, realtime_url: str, key: str) -> None:
        self.realtime_url, self.key = realtime_url, key
        self.events = 0
        self.latencies_ms: list[float] = []
        self.completed: set[str] = set()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        if not self.ready.wait(30):
            raise SystemExit("the Realtime watcher did not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _count(self, payload: Any) -> None:
        received = time.time()
        data = payload["data"]
        committed = datetime.fromisoformat(data["commit_timestamp"].replace("Z", "+00:00"))
        self.latencies_ms.append((received - committed.timestamp()) * 1000)
        self.events += 1
        record = data.get("record") or {}
        if data["table"] == "ai_jobs" and record.get("status") == "completed":
            self.completed.add(str(record["id"]))

    def drain(self, job_ids: list[str], timeout_s: float = 120) -> None:
        """Wait until every job's completion reached the watcher: the CPU of delivering
        a burst's changes belongs to the burst, though it may trail the jobs."""
        deadline = time.monotonic() + timeout_s
        while not self.completed >= set(job_ids):
            if time.monotonic() > deadline:
                raise SystemExit("the Realtime watcher did not receive every completion")
            time.sleep(0.02)

    async def _run(self) -> None:
        from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

        client = AsyncRealtimeClient(self.realtime_url, self.key)
        await client.connect()
        channel = client.channel("bench-watcher")
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent.All, self._count, table="ai_jobs"
        )
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent.Insert, self._count, table="ai_job_logs"
        )
        channel.on_system(lambda _p: self.ready.set())
        await channel.subscribe()
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
        await client.close()
