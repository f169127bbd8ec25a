"""Where create_job's transaction goes: the commit's WAL flush, the function's body piece by
piece, and the gateway's statement around it — wall time and the backend's own CPU per call.

This is the pickup hop "created_at -> gateway has create_job's result": ``created_at`` is the
transaction's ``now()``, stamped when Postgres starts the gateway's one multi-statement query
(``infra/local/gateway/rpc.py``: the transaction mode, the request's ``set_config`` calls, the
prepared call, the commit), and the hop ends when the reply reaches the gateway. On a new
database of the embedded server, one connection, one call at a time, variants interleaved in
chunks (A B C, C B A, ...) so the machine's other load weighs on each alike:

* ``INSERT floor``: one row into a table with a uuid key and a jsonb body (bench.py's floor);
* ``create_job``: ``select * from public.create_job(...)`` on the connection;
* ``create_job as the gateway runs it``: the gateway's own code (parse, plan, the prepared
  statement, ``run_call``), the service role's settings and the JSON answer;
* ``the gateway's statement around a no-op``: the same wrapper around a function that does
  nothing (the wrapper's own cost);
* the function without one piece (a copy of the live definition in a scratch schema with the
  piece cut out): without the 'job created' log row, the caps' probes, the lock.

Each is measured with ``synchronous_commit`` on (as Supabase runs) and again off for this
measuring session only (``set synchronous_commit = off`` on the connection): the difference
in wall time is the wait for the commit's WAL flush. Backend CPU is ``/proc/<pid>/schedstat``
(nanoseconds on the CPU). Needs the embedded server (no ``DATABASE_URL``).

    .venv/bin/python scripts/bench_create_split.py [--calls 300] [--chunks 8] [--json /tmp/s.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.gateway import Gateway
from infra.local.migrate import apply_migrations
from infra.local.postgres import start_postgres
from scripts.bench_inproc import JWT_SECRET, create_args, rpc_caller

#: The pieces cut out of a copy of create_job: (name, where the cut starts, what ends it;
#: nothing: the cut is the start's text).
PIECES = (
    (
        "without the 'job created' log row",
        "  insert into public.ai_job_logs (job_id, attempt, progress, step, message)\n"
        "    values (job.id, 0, 0, 'queued', 'job created');\n",
        "",
    ),
    ("without the caps' probes", "  select p_max_per_minute is not null", "v_active_reached;\n"),
    ("without the lock", "  perform pg_advisory_xact_lock(", ";\n"),
)


def on_cpu_ns(pid: int) -> int:
    """Time on the CPU of a process, in nanoseconds (the first field of its schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cut_copies(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Copies of the live create_job in schema ``split``, each without one piece; the name of
    each copy that could be made (a piece the definition no longer has is skipped)."""
    row = conn.execute(
        "select pg_get_functiondef('public.create_job'::regproc)"
        " where (select count(*) from pg_proc where proname = 'create_job') = 1"
    ).fetchone()
    if row is None:
        return {}
    definition = str(row[0])
    conn.execute("create schema split")
    made: dict[str, str] = {}
    for index, (name, start, end) in enumerate(PIECES):
        begin = definition.find(start)
        if begin < 0:
            print(f"skipped {name!r}: create_job has no {start!r}")
            continue
        after = begin + len(start)
        stop = definition.index(end, after) + len(end) if end else after
        cut = definition[:begin] + definition[stop:]
        conn.execute(cut.replace("public.create_job(", f"split.create_job_{index}(", 1))
        made[name] = f"split.create_job_{index}"
    return made


def direct_call(conn: psycopg.Connection[Any], function: str) -> Callable[[], None]:
    args = create_args("")
    casts = {"p_complexity_score": "::real", "p_metadata": "::jsonb"}
    names = ", ".join(f"{name} => %({name})s{casts.get(name, '')}" for name in args)
    query = f"select * from {function}({names})"

    def call() -> None:
        conn.execute(
            query,
            {**args, "p_user_id": f"split-{uuid.uuid4().hex}", "p_metadata": "{}"},
            prepare=True,
        )

    return call


def gateway_call(
    gateway: Gateway, conn: psycopg.Connection[Any], function: str, body: Callable[[], Any]
) -> Callable[[], None]:
    rpc = rpc_caller(gateway, conn)

    def call() -> None:
        rpc(function, body())

    return call


def measure(
    cases: dict[str, tuple[psycopg.Connection[Any], Callable[[], None]]], calls: int, chunks: int
) -> dict[str, dict[str, float]]:
    """Median over chunks of wall ms and backend CPU ms per call of each case, with
    ``synchronous_commit`` on and off for the measuring session, all interleaved (the flush's
    wait on this shared disk drifts by the second)."""
    runs = [(name, commit) for name in cases for commit in ("on", "off")]
    walls: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    cpus: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for _, call in cases.values():
        for _ in range(10):  # statements prepared, plans cached
            call()
    for chunk in range(chunks):
        for name, commit in runs if chunk % 2 == 0 else runs[::-1]:
            conn, call = cases[name]
            conn.execute(f"set synchronous_commit = {commit}")
            pid = conn.info.backend_pid
            cpu = on_cpu_ns(pid)
            began = time.perf_counter()
            for _ in range(calls):
                call()
            walls[name, commit].append((time.perf_counter() - began) * 1000 / calls)
            cpus[name, commit].append((on_cpu_ns(pid) - cpu) / 1e6 / calls)
        for conn, _ in cases.values():
            conn.execute("set synchronous_commit = on")
    out: dict[str, dict[str, float]] = {}
    for name in cases:
        wall, idle = statistics.median(walls[name, "on"]), statistics.median(walls[name, "off"])
        out[name] = {
            "wallMs": round(wall, 4),
            "backendCpuMs": round(statistics.median(cpus[name, "on"]), 4),
            "wallMsWithoutFlushWait": round(idle, 4),
            "flushWaitMs": round(wall - idle, 4),
        }
    return out


def run(uri: str, calls: int, chunks: int) -> dict[str, dict[str, float]]:
    gateway = Gateway(uri, JWT_SECRET)
    out: dict[str, dict[str, float]] = {}
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute(
                "create table split_floor (id uuid primary key, body jsonb not null,"
                " created_at timestamptz not null default now())"
            )
            conn.execute(
                "create function public.split_noop(p_user_id text) returns void"
                " language sql as 'select'"
            )
            copies = cut_copies(conn)
        with (
            psycopg.connect(uri, autocommit=True) as conn,
            psycopg.connect(gateway.authenticator_uri, autocommit=True) as via,
        ):
            floor_body = json.dumps({"query": "모든 서버 분석하고 최적화 리포트 만들어줘"})

            def floor() -> None:
                conn.execute(
                    "insert into split_floor (id, body) values (%s, %s::jsonb)",
                    (uuid.uuid4(), floor_body),
                    prepare=True,
                )

            cases: dict[str, tuple[psycopg.Connection[Any], Callable[[], None]]] = {
                "INSERT floor": (conn, floor),
                "create_job": (conn, direct_call(conn, "public.create_job")),
                **{
                    f"create_job {name}": (conn, direct_call(conn, fn))
                    for name, fn in copies.items()
                },
                "create_job as the gateway runs it": (
                    via,
                    gateway_call(
                        gateway,
                        via,
                        "create_job",
                        lambda: create_args(f"split-{uuid.uuid4().hex}"),
                    ),
                ),
                "the gateway's statement around a no-op": (
                    via,
                    gateway_call(gateway, via, "split_noop", lambda: {"p_user_id": "x"}),
                ),
            }
            out = measure(cases, calls, chunks)
    finally:
        gateway.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per case and chunk")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if os.environ.get("DATABASE_URL"):
        raise SystemExit(
            "bench_create_split reads the backend's CPU from /proc: unset DATABASE_URL"
        )
    scratch = Path(tempfile.mkdtemp(prefix="bench-create-split-"))
    pg = start_postgres(scratch / "pg")
    load = os.getloadavg()[0]
    try:
        dbname = f"split_{uuid.uuid4().hex[:8]}"
        uri = pg.create_database(dbname)
        apply_migrations(uri)
        figures = run(uri, args.calls, args.chunks)
    finally:
        pg.stop()
    print(f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; ms per call, median of chunks")
    print(f"{'case':<52} {'wall':>7} {'cpu':>7} {'wall, no flush wait':>20} {'flush wait':>11}")
    for name, cell in figures.items():
        print(
            f"{name:<52} {cell['wallMs']:7.3f} {cell['backendCpuMs']:7.3f}"
            f" {cell['wallMsWithoutFlushWait']:20.3f} {cell['flushWaitMs']:11.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
