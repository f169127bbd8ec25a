"""The gateway's own Python CPU per RPC, in process: steadier than a server's CPU under load.

``scripts/bench_gateway.py`` measures the local Supabase server's process (uvicorn, CORS, the
kernel's socket work and the gateway together) while a client loads it; on a shared 2-core
machine those figures move by a tenth from round to round. This script drives the gateway's
ASGI application (``RestApp``, as the server calls it: the body read, the WSGI environ, the
call on an asyncio psycopg connection, the answer) directly, one request at a time, on a real
embedded Postgres with the project's migrations, and reads this process's CPU time (Postgres
runs in its own processes and is not counted). Each tree runs in a child process of its own;
with ``--base TREE`` or ``--compare REV`` the children alternate (A B, A B, ...) and each
reports its lowest figure over ``--rounds`` rounds (the least disturbed one).

    .venv/bin/python scripts/bench_gateway_inproc.py --compare 262f158 [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
OPERATIONS = ("create_job", "get_job")

Message = MutableMapping[str, Any]


def _create_args(user: str, index: int) -> dict[str, Any]:
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


def _scope(path: str, body: bytes, key: str) -> dict[str, Any]:
    """What uvicorn hands the application for postgrest-py's POST with a service key."""
    headers = [
        (b"host", b"127.0.0.1:54321"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"accept", b"application/json"),
        (b"connection", b"keep-alive"),
        (b"user-agent", b"python-httpx/0.28.1"),
        (b"accept-profile", b"public"),
        (b"content-profile", b"public"),
        (b"apikey", key.encode()),
        (b"authorization", b"Bearer " + key.encode()),
        (b"x-client-info", b"supabase-py/2"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 54321),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }


App = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


async def _post(app: App, key: str, function: str, args: dict[str, Any]) -> tuple[int, bytes]:
    body = json.dumps(args).encode()
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop()

    async def send(message: Message) -> None:
        sent.append(message)

    await app(_scope(f"/rest/v1/rpc/{function}", body, key), receive, send)
    return int(sent[0]["status"]), bytes(sent[1]["body"])


async def _measure(db_uri: str, requests: int, rounds: int) -> dict[str, float]:
    """This tree's lowest CPU ms per request of each operation over ``rounds``."""
    from infra.local.gateway import api_key, create_app
    from infra.local.gateway.asgi import RestApp

    key = api_key(JWT_SECRET, "service_role")
    app = RestApp(create_app(db_uri, JWT_SECRET, require_api_key=True))
    user = f"inproc-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    for index in range(50):
        status, body = await _post(app, key, "create_job", _create_args(user, index))
        if status != 200:
            raise SystemExit(f"create_job answered {status}: {body[:200]!r}")
        ids.append(json.loads(body)["job"]["id"])
    calls = {
        "create_job": lambda i: _post(app, key, "create_job", _create_args(user, i)),
        "get_job": lambda i: _post(
            app, key, "get_job", {"p_job_id": ids[i % 50], "p_user_id": user}
        ),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name in OPERATIONS:
            began = time.process_time()
            for index in range(requests):
                await calls[name](index)
            spent = (time.process_time() - began) * 1000 / requests
            best[name] = min(best.get(name, spent), spent)
    await app.close()
    return best


def child(db_uri: str, requests: int, rounds: int) -> None:
    print(json.dumps(asyncio.run(_measure(db_uri, requests, rounds))), flush=True)


def _run_child(tree: Path, db_uri: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, str(tree / "scripts" / "bench_gateway_inproc.py")]
    command += ["--child", db_uri, "--requests", str(args.requests), "--rounds", str(args.rounds)]
    output = subprocess.run(command, cwd=tree, check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return figures


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(REPO_ROOT))
    from infra.local.migrate import apply_migrations
    from infra.local.postgres import start_postgres
    from scripts.bench_tools import export_tree

    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-inproc-"))
    pg = start_postgres(scratch / "pg")
    try:
        db_uri = pg.create_database("bench_gateway_inproc")
        apply_migrations(db_uri)
        trees = {"current": REPO_ROOT}
        if args.base:
            trees = {"base": Path(args.base).resolve(), **trees}
        elif args.compare:
            (scratch / "baseline").mkdir()
            base = export_tree(args.compare, scratch / "baseline")
            # this script into the older tree, which may predate it
            (base / "scripts" / "bench_gateway_inproc.py").write_bytes(Path(__file__).read_bytes())
            trees = {args.compare: base, **trees}
        pairs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for number in range(args.pairs):
            for name, tree in trees.items():
                figures = _run_child(tree, db_uri, args)
                pairs[name].append(figures)
                shown = "  ".join(f"{op} {figures[op]:.4f}" for op in OPERATIONS)
                print(
                    f"pair {number + 1} {name:<10} CPU ms/request (lowest of {args.rounds}):"
                    f" {shown}  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        return {
            name: {op: round(statistics.median(f[op] for f in runs), 4) for op in OPERATIONS}
            for name, runs in pairs.items()
        }
    finally:
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per operation and round")
    parser.add_argument("--rounds", type=int, default=5, help="per child; the lowest counts")
    parser.add_argument("--pairs", type=int, default=3, help="alternated children per tree")
    parser.add_argument("--compare", default=None, metavar="REV", help="a git revision")
    parser.add_argument("--base", default=None, metavar="TREE", help="a source tree")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.getcwd())  # the tree the child runs in
        child(args.child, args.requests, args.rounds)
        return 0
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
