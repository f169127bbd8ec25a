"""Postgres's CPU per RPC as the gateway runs it: the backend's own CPU, one call at a time.

For each operation the API serves (create_job, get_job, list_jobs, get_job_with_logs), the
gateway's own code builds the request's transaction (``Gateway.parse`` / ``plan``, the
prepared statement, ``run_call``: the settings, the call and the JSON answer in one query) and
runs it on one ``authenticator`` connection, in this process, without HTTP; the figure is the
CPU time of that connection's backend process (``/proc/<pid>/stat``, in 10 ms ticks, so the
calls are many) divided by the calls. Finished jobs carry a result of about 80 kB of JSON, as a
report's is, so reads of finished jobs show what the result costs them.

``--compare REV`` measures the tree at git revision REV too (its gateway and its migrations, on a
database of its own on the same server), in alternated rounds, a fresh database per round and
tree (``create_job`` counts the user's recent and unfinished jobs: each round starts from none).
Needs the embedded server (no ``DATABASE_URL``): its backends are processes of this machine.

    .venv/bin/python scripts/bench_sql.py [--compare d184922] [--rounds 3] [--calls 1000]
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
from scripts.bench_inproc import JWT_SECRET, backend_ticks, create_args, rpc_caller

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The operations, in the order a round runs them (the reads need the created jobs).
OPERATIONS = (
    "create_job",
    "get_job (queued)",
    "list_jobs (21 queued)",
    "get_job (finished)",
    "get_job_with_logs (finished)",
    "list_jobs (21 finished)",
)
#: Reads of finished jobs move ~80 kB each: a quarter of the calls.
FINISHED_SHARE = 4


def report_result() -> dict[str, Any]:
    """About 80 kB of JSON shaped like a report's result (facts, markdown, incidents, series)."""
    return {
        "facts": [
            {"server": f"web-{i % 15:02d}", "metric": "cpu", "value": i * 0.37, "note": "x" * 40}
            for i in range(500)
        ],
        "markdown": "## Findings\n" + "- a line of the report's narrative\n" * 300,
        "incidents": [
            {"at": f"2026-11-27T0{i % 10}:00:00Z", "what": "spike" * 8} for i in range(80)
        ],
        "series": [[i, i * 1.5] for i in range(400)],
    }


def worker(tree: Path, admin_uri: str, calls: int) -> dict[str, float]:
    """One round of ``tree``'s gateway and migrations on a new database: CPU ms per call."""
    sys.path.insert(0, str(tree))
    import psycopg

    from infra.local.gateway import Gateway
    from infra.local.migrate import apply_migrations
    from infra.local.postgres import Postgres

    server = Postgres(uri=admin_uri)
    dbname = f"bench_sql_{uuid.uuid4().hex[:8]}"
    uri = server.create_database(dbname)
    try:
        apply_migrations(uri)
        gateway = Gateway(uri, JWT_SECRET)
        with psycopg.connect(gateway.authenticator_uri, autocommit=True) as conn:
            figures = _round(rpc_caller(gateway, conn), conn.info.backend_pid, uri, calls)
        gateway.close()
        return figures
    finally:
        server.drop_database(dbname)


def _round(
    call: Callable[[str, dict[str, Any]], str], pid: int, uri: str, calls: int
) -> dict[str, float]:
    import psycopg

    user = f"bench-sql-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []

    def create(index: int) -> dict[str, Any]:
        return create_args(user, query=f"bench query {index}", metadata={"bench": True})

    def page() -> dict[str, Any]:
        return {
            "p_user_id": user,
            "p_statuses": None,
            "p_types": None,
            "p_limit": 21,
            "p_before_created_at": None,
            "p_before_id": None,
        }

    def measure(name: str, count: int, body: Callable[[int], tuple[str, dict[str, Any]]]) -> None:
        call(*body(0))  # prepared and planned outside the figure
        before = backend_ticks(pid)
        for index in range(count):
            text = call(*body(index))
            if name == "create_job":
                ids.append(json.loads(text)["job"]["id"])
        ticks = backend_ticks(pid) - before
        figures[name] = round(1000 * ticks / os.sysconf("SC_CLK_TCK") / count, 4)

    figures: dict[str, float] = {}
    measure("create_job", calls, lambda i: ("create_job", create(i)))
    measure(
        "get_job (queued)",
        calls,
        lambda i: ("get_job", {"p_job_id": ids[i % len(ids)], "p_user_id": user}),
    )
    measure("list_jobs (21 queued)", calls, lambda i: ("list_jobs", page()))
    # the newest 21 jobs finish (as complete_job_v2 leaves them), each with a report's result
    with psycopg.connect(uri, autocommit=True) as admin:
        admin.execute(
            "update public.ai_jobs set status = 'completed', progress = 100,"
            " current_step = 'completed', completed_at = now(), result = %s::jsonb"
            " where id = any(%s::uuid[])",
            (json.dumps(report_result()), ids[-21:]),
        )
    finished = ids[-21:]
    few = max(1, calls // FINISHED_SHARE)
    measure(
        "get_job (finished)",
        few,
        lambda i: ("get_job", {"p_job_id": finished[i % 21], "p_user_id": user}),
    )
    measure(
        "get_job_with_logs (finished)",
        few,
        lambda i: (
            "get_job_with_logs",
            {"p_job_id": finished[i % 21], "p_user_id": user, "p_after_id": 0, "p_limit": 100},
        ),
    )
    measure("list_jobs (21 finished)", few, lambda i: ("list_jobs", page()))
    return figures


def run_worker(tree: Path, admin_uri: str, calls: int) -> dict[str, float]:
    """``worker`` in a process of its own (each tree's modules imported alone)."""
    done = subprocess.run(
        [
            *(sys.executable, str(Path(__file__).resolve()), "--worker", str(tree)),
            *("--admin-uri", admin_uri, "--calls", str(calls)),
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000, help="per operation and round")
    parser.add_argument("--json", type=Path, default=None, help="write the medians here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--admin-uri", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.admin_uri, args.calls)))
        return 0
    if os.environ.get("DATABASE_URL"):
        raise SystemExit("bench_sql reads the backends' CPU from /proc: unset DATABASE_URL")

    sys.path.insert(0, str(REPO_ROOT))
    from infra.local.postgres import start_postgres
    from scripts.bench_tools import export_tree

    scratch = Path(tempfile.mkdtemp(prefix="bench-sql-"))
    pg = start_postgres(scratch / "pg")
    try:
        trees = {"current": REPO_ROOT}
        if args.compare:
            (scratch / "baseline").mkdir()
            trees = {args.compare: export_tree(args.compare, scratch / "baseline"), **trees}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for number in range(args.rounds):
            for name, tree in trees.items():
                started = time.monotonic()
                figures = run_worker(tree, pg.uri, args.calls)
                rounds[name].append(figures)
                cells = "  ".join(f"{op} {figures[op]:.3f}" for op in OPERATIONS)
                print(
                    f"round {number + 1} {name:<10} backend CPU ms/call: {cells}"
                    f"  ({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        medians = {
            name: {op: round(statistics.median(r[op] for r in results), 4) for op in OPERATIONS}
            for name, results in rounds.items()
        }
        print(json.dumps(medians, indent=2))
        if args.json:
            args.json.write_text(json.dumps(medians, indent=2) + "\n")
        return 0
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
