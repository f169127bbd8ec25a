"""What a large RPC body costs sent as a bound parameter against a quoted literal, in process.

The worker completes a job with ``complete_job_v3``, its ~80 kB result as JSON text inside the
JSON body. The gateway sends a body of ``BOUND_BODY_CHARS`` or more to Postgres as a bound
parameter (``rpc.run_call``'s ``bound``); with ``bound_body_chars=None`` it goes, as every body did
before, as a quoted literal in the one simple-protocol query. This script drives the gateway's
ASGI application (``RestApp``, as the local Supabase server calls it) in this process against a
real embedded Postgres with the project's migrations, one request at a time, and reads the CPU
time of this process (the gateway and this driver: the driver's share is the same either way)
and of the gateway's one backend (its ``/proc`` figures). Rounds alternate the two ways (A B,
B A, ...); each figure is the median over the rounds. It also times ``claim_job_v3`` (a small
body: the same path either way) as a check that nothing else moved.

    .venv/bin/python scripts/bench_bound_body.py [--jobs 200] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.gateway import api_key, create_app
from infra.local.gateway.asgi import RestApp
from infra.local.gateway.config import BOUND_BODY_CHARS
from infra.local.migrate import apply_migrations
from infra.local.postgres import start_postgres
from scripts.bench_gateway_inproc import JWT_SECRET, _create_args, _post

WAYS = ("literal", "bound")


def result_json() -> str:
    """A report result of about 80 kB, as JSON text (what the worker sends)."""
    sections = [
        {"title": f"Section {i}", "text": 'lorem ipsum "dolor" sit amet\n' * 20} for i in range(120)
    ]
    return json.dumps({"summary": "x" * 400, "sections": sections})


def _backend_cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def one_round(db_uri: str, way: str, jobs: int) -> dict[str, float]:
    """CPU ms per call of this process and of the gateway's backend, for one way."""
    key = api_key(JWT_SECRET, "service_role")
    # literal: no body is bound, as before; bound: from the gateway's own threshold on
    bound = None if way == "literal" else BOUND_BODY_CHARS
    gateway = create_app(
        db_uri, JWT_SECRET, require_api_key=True, pool_max=1, bound_body_chars=bound
    )
    app = RestApp(gateway)
    user = f"bound-{uuid.uuid4().hex[:8]}"
    ids: list[tuple[str, int]] = []
    for index in range(jobs):
        status, body = await _post(app, key, "create_job", _create_args(user, index))
        if status != 200:
            raise SystemExit(f"create_job answered {status}: {body[:200]!r}")
        job = json.loads(body)["job"]
        ids.append((job["id"], job["dispatch_count"]))
    pid = _gateway_backends(db_uri)
    figures: dict[str, float] = {}
    leases: list[str] = []
    began, backend = time.process_time(), _backend_cpu_s(pid)
    for job_id, dispatch in ids:
        args: dict[str, Any] = {"p_job_id": job_id, "p_dispatch": dispatch, "p_lease_seconds": 60}
        status, body = await _post(app, key, "claim_job_v3", args)
        leases.append(json.loads(body)["job"]["lease_token"])
    figures["claim process"] = (time.process_time() - began) * 1000 / jobs
    figures["claim backend"] = (_backend_cpu_s(pid) - backend) * 1000 / jobs
    result = result_json()
    began, backend = time.process_time(), _backend_cpu_s(pid)
    for (job_id, _), lease in zip(ids, leases, strict=True):
        args = {"p_job_id": job_id, "p_lease_token": lease, "p_result_json": result, "p_steps": []}
        status, body = await _post(app, key, "complete_job_v3", args)
        if status != 200:
            raise SystemExit(f"complete_job_v3 answered {status}: {body[:200]!r}")
    figures["complete process"] = (time.process_time() - began) * 1000 / jobs
    figures["complete backend"] = (_backend_cpu_s(pid) - backend) * 1000 / jobs
    await app.close()
    return figures


def _gateway_backends(db_uri: str) -> list[int]:
    """The pids of the gateway's backends (it logs in as authenticator; nothing else does
    here): its asyncio pool's one connection, and its WSGI pool's, idle."""
    with psycopg.connect(db_uri) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where usename = 'authenticator'"
            " and datname = current_database()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def run(jobs: int, rounds: int) -> dict[str, dict[str, float]]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-bound-body-"))
    pg = start_postgres(scratch / "pg")
    try:
        db_uri = pg.create_database("bench_bound_body")
        apply_migrations(db_uri)
        seen: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for number in range(rounds):
            order = WAYS if number % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                figures = asyncio.run(one_round(db_uri, way, jobs))
                seen[way].append(figures)
                shown = "  ".join(f"{name} {value:.3f}" for name, value in figures.items())
                load = os.getloadavg()[0]
                print(f"round {number + 1} {way:<7} CPU ms/call: {shown}  (load {load:.1f})")
        return {
            way: {name: round(statistics.median(f[name] for f in runs), 3) for name in runs[0]}
            for way, runs in seen.items()
        }
    finally:
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="claims and completions per round")
    parser.add_argument("--rounds", type=int, default=6, help="alternated rounds")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.jobs, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
