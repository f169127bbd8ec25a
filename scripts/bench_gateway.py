"""CPU per request of the local Supabase's REST gateway alone, and where it goes.

Starts an embedded Postgres (its own data directory), applies the project's migrations and
serves ``infra.local.supabase_server`` (uvicorn, as the local stack does) on a free port; then
calls the project's own RPCs as the store calls them (``create_job``, ``get_job`` with the
service key on keep-alive connections) and prints the CPU milliseconds per request of the
gateway process and of Postgres (the postmaster and all its backends) with the throughput and
latency. Each round creates its jobs for a user of its own: ``create_job`` counts the user's
recent and unfinished jobs (its rate caps), so a user who kept every earlier round's jobs would
make each round dearer than the one before and the later tree of a pair look slower.

``--compare REV`` also serves the gateway as it was at git revision REV (its tree exported to a
temporary directory) on the same database, and measures both in alternating rounds, so that
other load on the machine weighs on both alike; the figures are the medians of the rounds.
``--profile DIR`` records a py-spy profile (raw collapsed stacks) of this tree's gateway
under the same load (py-spy needs ptrace: root or CAP_SYS_PTRACE).

    .venv/bin/python scripts/bench_gateway.py [--compare 6fc9243] [--rounds 3]
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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.gateway import api_key
from infra.local.host import free_port
from infra.local.migrate import apply_migrations
from infra.local.postgres import start_postgres
from scripts.bench_tools import LoadResult, export_tree, load, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER = "bench-gateway"


def create_args(index: int, user: str = USER) -> dict[str, Any]:
    """``JobStore.create_job``'s body, with limits no benchmark reaches."""
    return {
        "p_user_id": user,
        "p_type": "report",
        "p_query": f"bench query {index}",
        "p_priority": "normal",
        "p_idempotency_key": None,
        "p_request_hash": None,
        "p_complexity": "simple",
        "p_complexity_score": 0.1,
        "p_estimated_seconds": 5,
        "p_metadata": {"bench": True},
        "p_max_attempts": 3,
        "p_max_per_minute": 1_000_000,
        "p_max_active": 1_000_000,
    }


@contextlib.contextmanager
def gateway(db_uri: str, tree: Path) -> Iterator[tuple[str, int]]:
    """The local Supabase server of the source tree ``tree``: its URL and pid."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "infra.local.supabase_server"),
            *("--db-uri", db_uri, "--jwt-secret", JWT_SECRET, "--port", str(port)),
        ],
        cwd=tree,
        start_new_session=True,  # its own group: stop() ends it whole
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/rest/v1/?apikey={api_key(JWT_SECRET, 'anon')}", process)
        yield url, process.pid
    finally:
        stop(process)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"the gateway did not answer within {timeout_s}s")


#: Postgres's processes by what they serve (``backend_cpu``): the gateway's connections, the
#: local Realtime's logical-decoding poll (it runs in a backend of its own), and the rest
#: (Realtime's other connection, autovacuum, the WAL writer, the checkpointer, the postmaster).
BACKEND_KINDS = ("gateway", "realtime slot", "other")


def backend_cpu(admin_uri: str, postmaster: int) -> dict[str, float]:
    """CPU seconds so far of the postmaster's processes, summed by ``BACKEND_KINDS``."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        rows = conn.execute(
            "select pid, usename = 'authenticator',"
            " query like '%pg_logical_slot_get_binary_changes%' from pg_stat_activity"
        ).fetchall()
    kinds = {
        pid: "gateway" if gateway else "realtime slot"
        for pid, gateway, slot in rows
        if gateway or slot
    }
    spent = dict.fromkeys(BACKEND_KINDS, 0.0)
    for process in [psutil.Process(postmaster), *psutil.Process(postmaster).children()]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            spent[kinds.get(process.pid, "other")] += times.user + times.system
    return spent


def one_round(
    url: str, pids: dict[str, int], args: argparse.Namespace, admin_uri: str | None
) -> tuple[dict[str, LoadResult], dict[str, dict[str, float]]]:
    """The round's load figures, and Postgres's CPU ms per request by ``BACKEND_KINDS``."""
    key = api_key(JWT_SECRET, "service_role")
    # what postgrest-py sends with a service key (supabase.create_client)
    headers = {"apikey": key, "Authorization": f"Bearer {key}", "Content-Profile": "public"}
    user = f"{USER}-{uuid.uuid4().hex[:8]}"  # the round's own (see the module's docstring)
    ids: list[str] = []

    def create(client: httpx.Client, index: int) -> httpx.Response:
        body = create_args(index, user)
        response = client.post("/rest/v1/rpc/create_job", json=body, headers=headers)
        if response.status_code == 200:
            ids.append(response.json()["job"]["id"])
        return response

    def get(client: httpx.Client, index: int) -> httpx.Response:
        body = {"p_job_id": ids[index % len(ids)], "p_user_id": user}
        return client.post("/rest/v1/rpc/get_job", json=body, headers=headers)

    results: dict[str, LoadResult] = {}
    backends: dict[str, dict[str, float]] = {}
    for name, call in (("create_job", create), ("get_job", get)):
        before = backend_cpu(admin_uri, pids["postgres"]) if admin_uri else {}
        results[name] = load(
            url, call, connections=args.connections, requests=args.requests, expect=200, cpu=pids
        )
        if admin_uri:
            after = backend_cpu(admin_uri, pids["postgres"])
            count = results[name].latency_ms["n"]
            backends[name] = {k: 1000 * (after[k] - before[k]) / count for k in BACKEND_KINDS}
    return results, backends


def summary(rounds: list[dict[str, LoadResult]]) -> dict[str, dict[str, float]]:
    """Per operation, the medians over the rounds."""
    return {
        name: {
            "cpuMsPerRequest": round(
                statistics.median(r[name].cpu_ms_per_request["gateway"] for r in rounds), 3
            ),
            "postgresCpuMsPerRequest": round(
                statistics.median(r[name].cpu_ms_per_request.get("postgres", -1) for r in rounds), 3
            ),
            "rps": round(statistics.median(r[name].rps for r in rounds), 1),
            "p50Ms": round(statistics.median(r[name].latency_ms["p50"] for r in rounds), 2),
            "p90Ms": round(statistics.median(r[name].latency_ms["p90"] for r in rounds), 2),
        }
        for name in rounds[0]
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    pg = start_postgres(scratch / "pg")
    try:
        db_uri = pg.create_database("bench_gateway")
        apply_migrations(db_uri)
        trees = {"current": REPO_ROOT}
        if args.compare:
            (scratch / "baseline").mkdir()
            trees = {args.compare: export_tree(args.compare, scratch / "baseline"), **trees}
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(gateway(db_uri, t)) for name, t in trees.items()}
            if args.profile:
                stack.enter_context(profiling(servers["current"][1], args.profile))
            rounds: dict[str, list[dict[str, LoadResult]]] = {name: [] for name in servers}
            # the embedded server's; with DATABASE_URL, Postgres runs elsewhere (not measured)
            pid_file = scratch / "pg" / "postmaster.pid"
            postgres = (
                {"postgres": int(pid_file.read_text().split()[0])} if pid_file.exists() else {}
            )
            admin_uri = db_uri if postgres else None
            for number in range(args.rounds):
                for name, (url, pid) in servers.items():
                    pids = {"gateway": pid, **postgres}
                    results, backends = one_round(url, pids, args, admin_uri)
                    rounds[name].append(results)
                    for op, result in results.items():
                        cpu = result.cpu_ms_per_request
                        split = "  ".join(f"{k} {v:.2f}" for k, v in backends.get(op, {}).items())
                        print(
                            f"round {number + 1} {name:<10} {op:<11} {result.rps:7.1f} req/s"
                            f"  p90 {result.latency_ms['p90']:6.2f} ms  CPU ms/req:"
                            f" gateway {cpu['gateway']:5.2f}"
                            f"  postgres {cpu.get('postgres', -1):5.2f} ({split})"
                            f"  (load {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
        return {name: summary(results) for name, results in rounds.items()}
    finally:
        pg.stop()


@contextlib.contextmanager
def profiling(pid: int, out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"gateway-{uuid.uuid4().hex[:6]}.txt"
    process = subprocess.Popen(
        [
            *(str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)),
            # --gil: only samples holding the interpreter, i.e. Python work, not waits
            *("--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)),
        ]
    )
    try:
        yield
    finally:
        process.send_signal(2)  # py-spy writes its output on SIGINT
        process.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per operation and round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", default=None, metavar="REV", help="a git revision")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
