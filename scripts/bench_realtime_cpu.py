"""CPU per job of one Realtime watcher: what the local Realtime stand-in and Postgres spend
delivering a burst of jobs' changes to one ``postgres_changes`` subscriber.

Starts the whole local stack on free ports (local writer), and beside it, per measured round,
a local Supabase server of its own (``infra.local.supabase_server``) that only serves Realtime:
the watcher (the official Python client with the service key, bound as the console and
``scripts/bench.py``'s watcher are: every change of ``ai_jobs``, inserts of ``ai_job_logs``)
subscribes to it, a burst of jobs runs through the stack, and the round measures, until the
watcher has every job's completion:

- the Realtime server's process CPU (it serves nothing else, so all of it is the watcher's);
- Postgres's CPU (the postmaster and every backend), less that of a burst nobody watches, run
  in the same round: the slot's decoding and the visibility checks, and beside it, steadier,
  the CPU of the Realtime server's own backends alone (its connections carry an
  ``application_name`` of their own), where that decoding and those checks run.

``--compare REV`` also serves Realtime as it was at git revision REV (its tree exported to a
temporary directory) and alternates the two within each round, so other load on the machine
weighs on both alike; the figures are the medians over the rounds. Each server process is
started for its measurement and stopped after it (its temporary slot goes with it), so only
one slot is ever decoded. ``--profile DIR`` records a py-spy profile (raw collapsed stacks,
GIL samples) of this tree's Realtime server during each of its bursts.

    .venv/bin/python scripts/bench_realtime_cpu.py [--compare d184922] [--rounds 3] [--jobs 40]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.host import free_port
from infra.local.keys import api_key
from infra.local.stack import LOCAL_JWT_SECRET, LocalStack, StackConfig
from scripts.bench_tools import CpuMeter, Watcher, export_tree, postmaster_pid, stop, wait_final
from shared.functions import CREATE

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"
#: the application_name of the measured Realtime server's connections
APPLICATION = "bench_realtime_cpu"


@contextlib.contextmanager
def realtime_server(db_uri: str, tree: Path, log: Path) -> Iterator[tuple[str, int]]:
    """A local Supabase server from ``tree``, used only for Realtime: (its URL, its pid)."""
    port = free_port()
    db_uri = conninfo.make_conninfo(db_uri, application_name=APPLICATION)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "infra.local.supabase_server", "--db-uri", db_uri),
                *("--jwt-secret", LOCAL_JWT_SECRET, "--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=tree,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session, as the stack serves it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the Realtime server exited: see {log}")
            with contextlib.suppress(httpx.HTTPError):
                key = {"apikey": api_key(LOCAL_JWT_SECRET, "anon")}  # Kong key-auth
                if httpx.get(f"{url}/auth/v1/health", headers=key, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the Realtime server did not start")
            time.sleep(0.05)
        yield url, process.pid
    finally:
        stop(process)


@contextlib.contextmanager
def profiling(pid: int, out: Path | None) -> Iterator[None]:
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            *(str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)),
            *("--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(2)  # py-spy writes its output on SIGINT
        process.wait(60)


class BackendMeter:
    """CPU of the Postgres backends whose connections carry ``APPLICATION``, the slot's poll
    apart (a backend born during the measurement counts from zero)."""

    def __init__(self, db_uri: str) -> None:
        self.db_uri = db_uri
        self._before: dict[int, float] = {}
        self.spent_s = {"slot": 0.0, "checks": 0.0}

    def _now(self) -> tuple[dict[int, float], set[int]]:
        with psycopg.connect(self.db_uri, autocommit=True) as conn:
            rows = conn.execute(
                "select pid, query like '%%pg_logical_slot_get_binary_changes%%'"
                " from pg_stat_activity where application_name = %s",
                (APPLICATION,),
            ).fetchall()
        cpu: dict[int, float] = {}
        for pid, _ in rows:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = psutil.Process(pid).cpu_times()
                cpu[int(pid)] = times.user + times.system
        return cpu, {int(pid) for pid, slot in rows if slot}

    def start(self) -> BackendMeter:
        self._before, _ = self._now()
        return self

    def stop(self) -> None:
        now, slot = self._now()
        for pid, seconds in now.items():
            self.spent_s["slot" if pid in slot else "checks"] += seconds - self._before.get(pid, 0)


def burst(stack: LocalStack, jobs: int) -> list[str]:
    """``jobs`` creates from 8 threads; returns once every job is final."""

    def create(_: int) -> str:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            response = client.post(CREATE.path(), json={"query": COMPLEX})
            return str(response.json()["jobId"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(jobs)))
    wait_final(stack.db_uri, ids)
    return ids


def quiet_round(stack: LocalStack, postmaster: int, jobs: int) -> float:
    """Postgres CPU ms per job of a burst nobody watches."""
    meter = CpuMeter({"postgres": postmaster}).start()
    burst(stack, jobs)
    meter.stop()
    return meter.per(jobs)["postgres"]


def watched_round(
    stack: LocalStack, postmaster: int, tree: Path, jobs: int, *, log: Path, profile: Path | None
) -> dict[str, float]:
    with contextlib.ExitStack() as scope:
        url, pid = scope.enter_context(realtime_server(stack.db_uri, tree, log))
        watcher = scope.enter_context(Watcher(f"{url}/realtime/v1", stack.service_key))
        scope.enter_context(profiling(pid, profile))
        time.sleep(0.3)  # the subscription's own queries are not the burst's
        meter = CpuMeter({"realtime": pid, "postgres": postmaster}).start()
        backends = BackendMeter(stack.db_uri).start()
        ids = burst(stack, jobs)
        watcher.drain(ids)
        meter.stop()
        backends.stop()
    cpu = meter.per(jobs)
    lat = statistics.quantiles(watcher.latencies_ms, n=100, method="inclusive")
    return {
        "realtime": cpu["realtime"],
        "postgres": cpu["postgres"],
        "slotBackend": round(1000 * backends.spent_s["slot"] / jobs, 3),
        "checkBackends": round(1000 * backends.spent_s["checks"] / jobs, 3),
        "eventsPerJob": watcher.events / jobs,
        "commitToEventP50Ms": lat[49],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-rtcpu-"))
    trees = {"current": REPO_ROOT}
    if args.compare:
        trees = {args.compare: export_tree(args.compare, scratch / "baseline"), **trees}
    env = {"MAX_ACTIVE_JOBS": "100000", "MAX_JOBS_PER_MINUTE": "100000"}
    config = StackConfig.for_tests(scratch, reap_interval_s=0, function_env=env)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with LocalStack(config) as stack:
        postmaster = postmaster_pid(stack.db_uri)
        burst(stack, 4)  # warm every function instance
        names = list(trees)
        for number in range(args.rounds):
            quiet = quiet_round(stack, postmaster, args.jobs)
            # alternate which tree goes first, so neither always follows the quiet burst
            for name in names if number % 2 == 0 else names[::-1]:
                profile = (
                    args.profile / f"{name}-{number}.txt"
                    if args.profile and name == "current"
                    else None
                )
                got = watched_round(
                    stack,
                    postmaster,
                    trees[name],
                    args.jobs,
                    log=scratch / f"realtime-{name}.log",
                    profile=profile,
                )
                got["postgresExtra"] = got["postgres"] - quiet
                got["extra"] = got["realtime"] + got["postgresExtra"]
                rows[name].append(got)
                print(
                    f"round {number + 1} {name:<10} extra CPU ms/job {got['extra']:6.2f}"
                    f" = realtime {got['realtime']:5.2f} + postgres {got['postgresExtra']:5.2f}"
                    f" (quiet {quiet:.2f}, watched {got['postgres']:.2f};"
                    f" Realtime's backends: slot {got['slotBackend']:.2f}"
                    f" checks {got['checkBackends']:.2f});"
                    f" {got['eventsPerJob']:.1f} events/job;"
                    f" commit->event p50 {got['commitToEventP50Ms']:.0f} ms"
                    f"  (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    return {
        name: {k: round(statistics.median(r[k] for r in got), 2) for k in got[0]}
        for name, got in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", default=None, metavar="REV", help="a git revision")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    args = parser.parse_args(argv)
    for name, figures in run(args).items():
        print(f"median {name:<10} " + "  ".join(f"{k} {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
