"""Postgres's CPU per job for the calls a job makes, as the gateway runs them, one call at a time.

A job is three calls: ``create_job`` (the create function), ``claim_job_v3`` and
``complete_job_v3`` (the processor; the completion carries the job's five steps and a report's
result, about 74 kB of JSON, made once by this tree's pipeline). For each, the gateway's own code
builds the request's transaction (``Gateway.parse`` / ``plan``, the prepared statement,
``run_call``) and runs it on one ``authenticator`` connection in this process, without HTTP, as
``scripts/bench_sql.py`` does for the API's reads; the figure is the CPU time of that
connection's backend (``/proc/<pid>/stat``, in 10 ms ticks, so the calls are many) per call.

``--compare REV`` measures the tree at git revision REV too (its gateway and its migrations, on a
database of its own on the same server), in alternated rounds, a fresh database per round and
tree; both complete the same result text. Needs the embedded server (no ``DATABASE_URL``).

    .venv/bin/python scripts/bench_worker_sql.py [--compare 262f158] [--rounds 4] [--jobs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_inproc import JWT_SECRET, REPORT_QUERY, backend_ticks, create_args, rpc_caller

REPO_ROOT = Path(__file__).resolve().parents[1]

OPERATIONS = ("create_job", "claim_job_v3", "complete_job_v3")
#: the steps a quick job's completion carries (none was written before: shared/worker.py)
STEPS = [
    {"progress": 0, "step": "start"},
    {"progress": 20, "step": "collecting data"},
    {"progress": 50, "step": "AI analysis"},
    {"progress": 80, "step": "formatting"},
    {"progress": 100, "step": "done"},
]


def report_text() -> str:
    """A report's result as the processor sends it (pydantic-core's JSON, by alias)."""
    from shared.ai import pipeline
    from shared.jobs import JobType
    from shared.settings import AISettings

    report = pipeline.run(
        REPORT_QUERY,
        JobType.REPORT,
        lambda _progress, _step: True,
        settings=AISettings.from_env({}),
    )
    return report.model_dump_json(by_alias=True)


def worker(tree: Path, admin_uri: str, jobs: int, result_file: Path) -> dict[str, float]:
    """One round of ``tree``'s gateway and migrations on a new database: CPU ms per call."""
    sys.path.insert(0, str(tree))
    import psycopg

    from infra.local.gateway import Gateway
    from infra.local.migrate import apply_migrations
    from infra.local.postgres import Postgres

    result = result_file.read_text()
    server = Postgres(uri=admin_uri)
    dbname = f"bench_worker_sql_{uuid.uuid4().hex[:8]}"
    uri = server.create_database(dbname)
    try:
        apply_migrations(uri)
        gateway = Gateway(uri, JWT_SECRET)
        with psycopg.connect(gateway.authenticator_uri, autocommit=True) as conn:
            rpc = rpc_caller(gateway, conn)

            def call(function: str, body: dict[str, Any]) -> Any:
                return json.loads(rpc(function, body))

            figures = _round(call, conn.info.backend_pid, jobs, result)
        gateway.close()
        return figures
    finally:
        server.drop_database(dbname)


def _round(
    call: Callable[[str, dict[str, Any]], Any], pid: int, jobs: int, result: str
) -> dict[str, float]:
    user = f"bench-worker-{uuid.uuid4().hex[:8]}"

    def create(_: int) -> dict[str, Any]:
        return create_args(user)

    figures: dict[str, float] = {}

    def measure(name: str, bodies: list[dict[str, Any]]) -> list[Any]:
        before = backend_ticks(pid)
        answers = [call(name, body) for body in bodies]
        ticks = backend_ticks(pid) - before
        figures[name] = round(1000 * ticks / os.sysconf("SC_CLK_TCK") / len(bodies), 4)
        return answers

    # a first job of each call outside the figures: statements prepared, plans cached
    warm = call("create_job", create(0))["job"]["id"]
    token = call("claim_job_v3", {"p_job_id": warm, "p_dispatch": 1, "p_lease_seconds": 120})
    call(
        "complete_job_v3",
        {
            "p_job_id": warm,
            "p_lease_token": token["job"]["lease_token"],
            "p_result_json": result,
            "p_steps": STEPS,
        },
    )
    created = measure("create_job", [create(i) for i in range(jobs)])
    ids = [answer["job"]["id"] for answer in created]
    claims = measure(
        "claim_job_v3",
        [{"p_job_id": job_id, "p_dispatch": 1, "p_lease_seconds": 120} for job_id in ids],
    )
    completed = measure(
        "complete_job_v3",
        [
            {
                "p_job_id": claim["job"]["id"],
                "p_lease_token": claim["job"]["lease_token"],
                "p_result_json": result,
                "p_steps": STEPS,
            }
            for claim in claims
        ],
    )
    assert all(job["status"] == "completed" for job in completed), "a completion was refused"
    figures["perJob"] = round(sum(figures[op] for op in OPERATIONS), 4)
    return figures


def run_worker(tree: Path, admin_uri: str, jobs: int, result_file: Path) -> dict[str, float]:
    """``worker`` in a process of its own (each tree's modules imported alone)."""
    done = subprocess.run(
        [
            *(sys.executable, str(Path(__file__).resolve()), "--worker", str(tree)),
            *("--admin-uri", admin_uri, "--jobs", str(jobs), "--result", str(result_file)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default=None, metavar="REV", help="a git revision")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round and tree")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--admin-uri", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.admin_uri, args.jobs, args.result)))
        return 0
    if os.environ.get("DATABASE_URL"):
        raise SystemExit("bench_worker_sql reads the backends' CPU from /proc: unset DATABASE_URL")

    sys.path.insert(0, str(REPO_ROOT))
    from infra.local.postgres import start_postgres
    from scripts.bench_tools import export_tree

    print(f"load average at start: {os.getloadavg()}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-worker-sql-"))
    result_file = scratch / "result.json"
    result_file.write_text(report_text())
    pg = start_postgres(scratch / "pg")
    try:
        trees = {"current": REPO_ROOT}
        if args.compare:
            (scratch / "baseline").mkdir()
            trees = {args.compare: export_tree(args.compare, scratch / "baseline"), **trees}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for number in range(args.rounds):
            order = list(trees) if number % 2 == 0 else list(trees)[::-1]
            for name in order:
                started = time.monotonic()
                figures = run_worker(trees[name], pg.uri, args.jobs, result_file)
                rounds[name].append(figures)
                cells = "  ".join(f"{op} {figures[op]:.3f}" for op in (*OPERATIONS, "perJob"))
                print(
                    f"round {number + 1} {name:<10} backend CPU ms/call: {cells}"
                    f"  ({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        medians = {
            name: {
                op: round(statistics.median(r[op] for r in results), 4)
                for op in (*OPERATIONS, "perJob")
            }
            for name, results in rounds.items()
        }
        print(json.dumps({"loadAverage": os.getloadavg(), "medianCpuMsPerCall": medians}, indent=2))
        return 0
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
