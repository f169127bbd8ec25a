"""The gateway's in-process steps of one get_job, in µs each: where its Python CPU goes.

``scripts/bench_gateway_inproc.py`` gives the whole in-process CPU per RPC; this script splits
it, on a real embedded Postgres with the project's migrations and postgrest-py's request for
get_job with the service key (as that script builds it): the ASGI scope to the WSGI environ,
werkzeug's Request, ``parse`` (route, API key, token, profile, arguments), ``plan`` (the
call's settings), ``answer``, the pool's checkout and return, the call's query built, sent and
answered, and the whole request through ``RestApp``. Each step is timed alone (``timeit``, or
``process_time`` over a loop for the awaited ones), so the steps need not add up to the whole:
a loop of one step runs hotter in the CPU's caches than the whole request does.

    .venv/bin/python scripts/bench_gateway_steps.py [--repeat 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from werkzeug.wrappers import Request

from infra.local.gateway import api_key, create_app
from infra.local.gateway.app import Parsed, answer
from infra.local.gateway.asgi import RestApp, environ
from infra.local.gateway.rpc import call_query, run_call_async
from infra.local.migrate import apply_migrations
from infra.local.postgres import start_postgres
from scripts.bench_gateway_inproc import JWT_SECRET, _create_args, _post, _scope


async def _steps(db_uri: str, repeat: int) -> dict[str, float]:
    key = api_key(JWT_SECRET, "service_role")
    gateway = create_app(db_uri, JWT_SECRET, require_api_key=True)
    app = RestApp(gateway)
    user = f"steps-{uuid.uuid4().hex[:8]}"
    status, created = await _post(app, key, "create_job", _create_args(user, 0))
    if status != 200:
        raise SystemExit(f"create_job answered {status}: {created[:200]!r}")
    args = {"p_job_id": json.loads(created)["job"]["id"], "p_user_id": user}
    body = json.dumps(args).encode()
    scope = _scope("/rest/v1/rpc/get_job", body, key)
    env = environ(scope, body)
    request = Request(env)
    parsed = gateway.parse(request, body)
    if not isinstance(parsed, Parsed):
        raise SystemExit(f"get_job's request was answered in parse: {parsed.status}")
    cache = gateway.schema_cache()
    planned = gateway.plan(request, parsed, cache)

    def timed(step: Callable[[], object]) -> float:
        return timeit.timeit(step, number=repeat) / repeat * 1e6

    figures = {
        "environ (scope -> WSGI environ)": timed(lambda: environ(scope, body)),
        "werkzeug Request": timed(lambda: Request(env)),
        "parse (incl. Request)": timed(lambda: gateway.parse(Request(env), body)),
        "plan": timed(lambda: gateway.plan(request, parsed, cache)),
        "answer (head and body)": timed(lambda: answer(planned, '{"a":1}', 1)),
    }
    loops = max(repeat // 10, 100)

    async def awaited(step: Callable[[], Awaitable[Any]]) -> float:
        for _ in range(loops // 10):
            await step()
        began = time.process_time()
        for _ in range(loops):
            await step()
        return (time.process_time() - began) / loops * 1e6

    async def pool() -> None:
        async with gateway._async_connection():
            pass

    async def pool_and_call() -> None:
        async with gateway._async_connection() as conn:
            statement = await gateway._executable_async(planned.call, conn)
            await run_call_async(conn, statement, *planned.arguments, **planned.mode)

    figures["pool checkout and return"] = await awaited(pool)
    figures["pool + the call (query built, sent, answered)"] = await awaited(pool_and_call)
    async with gateway._async_connection() as conn:
        statement = await gateway._executable_async(planned.call, conn)
        figures["the call's query built"] = timed(
            lambda: call_query(conn, statement, *planned.arguments, **planned.mode)
        )
    figures["whole get_job through RestApp"] = await awaited(
        lambda: _post(app, key, "get_job", args)
    )
    await app.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20000, help="calls per timed step")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-steps-"))
    pg = start_postgres(scratch / "pg")
    try:
        db_uri = pg.create_database("bench_gateway_steps")
        apply_migrations(db_uri)
        figures = asyncio.run(_steps(db_uri, args.repeat))
    finally:
        pg.stop()
    for step, micros in figures.items():
        print(f"{step:<48} {micros:8.2f} µs")
    print(f"(load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
