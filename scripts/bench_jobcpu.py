"""CPU per job of the queue's processes during a burst, this tree against another revision.

Each tree gets a whole local stack of its own (its Postgres, gateway, Cloud Tasks emulator and
function host, local writer), run by a child process started from that tree (this script is
copied into an older tree exported with ``git archive``). The driver then sends bursts to the
children in alternating order (A B, B A, ...), so other load on the shared machine weighs on
both alike, and prints the median per process of each tree: CPU milliseconds per job of the
processor (``ai-jobs-process``, the AI work included: the same in both trees), the function
host's front, the gateway, the emulator and Postgres (the postmaster and every backend), and
of the create function (outside the queue's own figure, as in scripts/bench.py).

A burst is what scripts/bench.py's quiet burst is: ``--jobs`` report jobs created from 8
threads, nobody polling or watching, until every job is final (asked of Postgres directly).

``--completions N`` instead measures one completion at a time through this tree's gateway, in
alternated rounds of N: complete_job_v2 with the report as dicts (postgrest-py serializes them),
complete_job_v3 with the report as text (serialized once by pydantic-core), and v3 with ``{}``
(what the result's size costs): CPU ms per call of Postgres, the gateway and this client.

``--profile DIR`` records py-spy profiles (raw collapsed stacks, GIL samples only) of each
tree's processor during its bursts (py-spy needs ptrace: root or CAP_SYS_PTRACE).

    .venv/bin/python scripts/bench_jobcpu.py --compare d184922 [--rounds 4] [--jobs 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts.bench_tools import (
    RAISED_CAPS,
    CpuMeter,
    ai_cpu_ms,
    export_tree,
    host_pids,
    percentiles,
    postmaster_pid,
    wait_final,
    worker_pid,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"
PROCESS = "ai-jobs-process"
CREATE = "ai-jobs-create"
#: the queue's processes (scripts/bench.py's queueOwnCpuMsPerJob adds these up)
QUEUE = (PROCESS, "front", "gateway", "emulator", "postgres")


# --- the child: one stack, bursts on demand ----------------------------------------------------


def outcomes(db_uri: str, job_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(db_uri) as conn:
        rows = conn.execute(
            "select status, count(*) from ai_jobs where id = any(%s::uuid[]) group by status",
            (job_ids,),
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


@contextlib.contextmanager
def profiling(pid: int, out: Path | None) -> Iterator[None]:
    if out is None:
        yield
        return
    process = subprocess.Popen(
        [
            *(str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)),
            *("--rate", "250", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the burst starts
    try:
        yield
    finally:
        process.send_signal(2)  # py-spy writes its output on SIGINT
        process.wait(60)


def burst(
    stack: LocalStack, pids: dict[str, int], jobs: int, profile: Path | None
) -> dict[str, Any]:
    ids: list[str] = []

    def create(_: int) -> None:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            response = client.post(f"/{CREATE}", json={"query": COMPLEX})
            ids.append(response.json()["jobId"])

    with profiling(pids[PROCESS], profile):
        meter = CpuMeter(pids).start()
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(jobs)))
        wait_final(stack.db_uri, ids)
        elapsed = time.perf_counter() - began
        meter.stop()
    cpu = meter.per(jobs)
    ai = ai_cpu_ms(stack.log_text("functions"), set(ids))
    return {
        "cpuMsPerJob": cpu,
        # the AI work's CPU as the processor logs it for each job (trees that log it)
        **({"aiCpuMsPerJob": round(sum(ai) / len(ai), 2)} if len(ai) == len(ids) else {}),
        "seconds": round(elapsed, 3),
        "outcomes": outcomes(stack.db_uri, ids),
    }


def pickup(stack: LocalStack, jobs: int) -> dict[str, float]:
    """created -> started (both stamped by Postgres), one job at a time."""
    ids = []
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for _ in range(jobs):
            ids.append(client.post(f"/{CREATE}", json={"query": COMPLEX}).json()["jobId"])
            wait_final(stack.db_uri, ids[-1:])
            time.sleep(0.02)
    with psycopg.connect(stack.db_uri) as conn:
        rows = conn.execute(
            "select extract(epoch from started_at - created_at) * 1000 from ai_jobs"
            " where id = any(%s::uuid[])",
            (ids,),
        ).fetchall()
    return dict(percentiles([float(r[0]) for r in rows]))


def child(jobs: int, profile_dir: Path | None, label: str) -> int:
    """Serve bursts on this tree's stack: one line in (``burst`` or ``pickup``), one JSON
    line out."""
    env = dict(RAISED_CAPS)
    with tempfile.TemporaryDirectory(prefix="ajq-jobcpu-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack:
            servers = host_pids(stack.log_text("functions"))
            pids = {name: worker_pid(servers[name]) for name in (PROCESS, CREATE)}
            pids |= {
                "front": stack.processes["functions"].pid,
                "gateway": stack.processes["gateway"].pid,
                "emulator": stack.processes["tasks-emulator"].pid,
                "postgres": postmaster_pid(stack.db_uri),
            }
            burst(stack, pids, 10, None)  # warm every path
            print(json.dumps({"ready": True}), flush=True)
            for count, line in enumerate(sys.stdin):
                if line.strip() == "pickup":
                    print(json.dumps(pickup(stack, jobs)), flush=True)
                    continue
                out = profile_dir / f"{label}-{count}.txt" if profile_dir else None
                print(json.dumps(burst(stack, pids, jobs, out)), flush=True)
    return 0


# --- one completion at a time -------------------------------------------------------------------


def completions(count: int, rounds: int) -> dict[str, dict[str, float]]:
    from scripts.bench_tools import tree_cpu_s
    from shared.ai import pipeline
    from shared.jobs import Job, JobType
    from shared.settings import AISettings
    from shared.store import JobStore

    report = pipeline.run(
        COMPLEX, JobType.REPORT, lambda _p, _s: True, settings=AISettings.from_env({})
    )
    steps = [{"progress": 80, "step": "formatting"}, {"progress": 100, "step": "done"}]
    env = dict(RAISED_CAPS)
    with tempfile.TemporaryDirectory(prefix="ajq-jobcpu-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack:
            postgres = postmaster_pid(stack.db_uri)
            gateway = stack.processes["gateway"].pid
            stack.tasks_client().pause_queue(name=stack.queue_path)
            store = JobStore(stack.gateway_url, stack.service_key)

            def claimed() -> list[Job]:
                jobs = []
                for index in range(count):
                    job = store.create_job(
                        user_id=f"bench-{index % 5}",
                        job_type="report",
                        query=COMPLEX,
                        priority="normal",
                        max_attempts=3,
                        max_per_minute=1_000_000,
                        max_active=1_000_000,
                    ).job
                    claim = store.claim_delivery(job.id, job.dispatch_count, 60).job
                    assert claim is not None
                    jobs.append(claim)
                return jobs

            def v2(job: Job) -> None:
                store.rpc(
                    "complete_job_v2",
                    {
                        "p_job_id": str(job.id),
                        "p_lease_token": str(job.lease_token),
                        "p_result": report.model_dump(mode="json", by_alias=True),
                        "p_steps": steps,
                    },
                )

            def v3(job: Job, text: str | None = None) -> None:
                store.rpc(
                    "complete_job_v3",
                    {
                        "p_job_id": str(job.id),
                        "p_lease_token": str(job.lease_token),
                        "p_result_json": text or report.model_dump_json(by_alias=True),
                        "p_steps": steps,
                    },
                )

            def v3_empty(job: Job) -> None:
                v3(job, "{}")

            forms: dict[str, Callable[[Job], None]] = {
                "v2 dicts": v2,
                "v3 text": v3,
                "v3 {}": v3_empty,
            }
            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in forms}
            for index in range(rounds):
                names = list(forms) if index % 2 == 0 else list(forms)[::-1]
                for name in names:
                    jobs = claimed()
                    before = (tree_cpu_s(postgres), tree_cpu_s(gateway), time.thread_time())
                    for job in jobs:
                        forms[name](job)
                    after = (tree_cpu_s(postgres), tree_cpu_s(gateway), time.thread_time())
                    pg, gw, client = (
                        1000 * (b - a) / count for a, b in zip(before, after, strict=True)
                    )
                    samples[name].append((pg, gw, client))
                    print(f"round {index + 1} {name:<9} {samples[name][-1]}", flush=True)
    return {
        name: {
            part: round(statistics.median(sample[i] for sample in rows), 3)
            for i, part in enumerate(("postgres", "gateway", "client"))
        }
        for name, rows in samples.items()
    }


# --- the driver ---------------------------------------------------------------------------------


def export_tree_with_this_bench(rev: str, into: Path) -> Path:
    """The tree at ``rev`` with this script and the measuring tools it imports as they are
    now: the child runs there, so only the code under test is the older one."""
    export_tree(rev, into)
    for tool in (Path(__file__), Path(__file__).with_name("bench_tools.py")):
        (into / "scripts" / tool.name).write_bytes(tool.read_bytes())
    return into


class Child:
    def __init__(self, label: str, tree: Path, jobs: int, profile: Path | None) -> None:
        self.label = label
        extra = ["--profile", str(profile)] if profile else []
        self.process = subprocess.Popen(
            [
                *(sys.executable, str(tree / "scripts" / Path(__file__).name)),
                *("--child", label, "--jobs", str(jobs), *extra),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self.process.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise SystemExit(f"{self.label}: the child ended")
        return dict(json.loads(line))

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(120)


def median_cpu(bursts: list[dict[str, Any]]) -> dict[str, float]:
    names = bursts[0]["cpuMsPerJob"]
    out = {n: round(statistics.median(b["cpuMsPerJob"][n] for b in bursts), 2) for n in names}
    out["queue"] = round(
        statistics.median(sum(b["cpuMsPerJob"][n] for n in QUEUE) for b in bursts), 2
    )
    if all("aiCpuMsPerJob" in b for b in bursts):
        out["aiInProcessor"] = round(statistics.median(b["aiCpuMsPerJob"] for b in bursts), 2)
        # the queue's own CPU with the AI work measured in place, in the same burst
        out["queueBeyondAi"] = round(
            statistics.median(
                sum(b["cpuMsPerJob"][n] for n in QUEUE) - b["aiCpuMsPerJob"] for b in bursts
            ),
            2,
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ajq-jobcpu-trees-") as scratch:
        trees = {"this": REPO_ROOT}
        if args.compare:
            base = Path(scratch) / "base"
            base.mkdir()
            trees = {args.compare: export_tree_with_this_bench(args.compare, base), **trees}
        children = [Child(label, tree, args.jobs, args.profile) for label, tree in trees.items()]
        rounds: dict[str, list[dict[str, Any]]] = {c.label: [] for c in children}
        pickups: dict[str, dict[str, Any]] = {}
        try:
            for index in range(args.rounds):
                order = children if index % 2 == 0 else children[::-1]
                for c in order:
                    result = c.ask("burst")
                    rounds[c.label].append(result)
                    print(f"round {index + 1} {c.label:>8}: {result}", flush=True)
            if args.pickup:
                for c in children:
                    pickups[c.label] = c.ask("pickup")
        finally:
            for c in children:
                c.close()
    return {
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "jobs": args.jobs,
        "rounds": args.rounds,
        "medianCpuMsPerJob": {label: median_cpu(b) for label, b in rounds.items()},
        **({"pickupMs": pickups} if pickups else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default=None, metavar="REV", help="a git revision")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=60, help="jobs per burst")
    parser.add_argument("--pickup", action="store_true", help="also pickup p50, one at a time")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--completions", type=int, default=0, metavar="N")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.jobs, args.profile, args.child)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.completions:
        figures = completions(args.completions, args.rounds)
        print(json.dumps({"loadAverage": os.getloadavg(), "cpuMsPerCompletion": figures}))
        return 0
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
