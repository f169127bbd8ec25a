"""The gateway's own code driven in this process, for the SQL benchmarks (bench_sql.py,
bench_worker_sql.py, bench_create_split.py): an RPC as postgrest-py sends it with the service
key, through ``Gateway.parse``/``plan``, the prepared statement and ``run_call`` on one
connection, without HTTP; and ``create_job``'s arguments as the create function sends them.

Nothing here imports ``infra`` at import time: ``--compare`` children put an older tree first
on ``sys.path`` and import that tree's gateway, which the functions below then use (their
imports of ``infra`` run when called, after the child's own, so they find the same modules).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The Supabase CLI's default secret, the stack's and the tests'.
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
#: The query of the seed's example report.
REPORT_QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"


def backend_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def create_args(
    user: str, *, query: str = REPORT_QUERY, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """create_job's arguments as the create function sends them, the caps raised to
    bench_tools.RAISED_CAPS (imported here, when called: bench_tools imports ``infra``)."""
    from scripts.bench_tools import RAISED_CAPS

    return {
        "p_user_id": user,
        "p_type": "report",
        "p_query": query,
        "p_priority": "normal",
        "p_idempotency_key": None,
        "p_request_hash": None,
        "p_complexity": "complex",
        "p_complexity_score": 0.8,
        "p_estimated_seconds": 30,
        "p_metadata": metadata or {},
        "p_max_attempts": 3,
        "p_max_per_minute": int(RAISED_CAPS["MAX_JOBS_PER_MINUTE"]),
        "p_max_active": int(RAISED_CAPS["MAX_ACTIVE_JOBS"]),
    }


def rpc_caller(gateway: Any, conn: Any) -> Callable[[str, dict[str, Any]], str]:
    """``call(function, body)``: the RPC's JSON text, as ``gateway`` (an
    ``infra.local.gateway.Gateway``) answers a service-role POST to ``/rest/v1/rpc/<function>``,
    run on ``conn`` (a psycopg connection of the gateway's authenticator, autocommit)."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from infra.local.gateway import api_key
    from infra.local.gateway.app import Parsed
    from infra.local.gateway.rpc import run_call

    key = api_key(JWT_SECRET, "service_role")  # the project's service key, in either tree
    # what postgrest-py sends with a service key
    headers = [
        ("apikey", key),
        ("Authorization", f"Bearer {key}"),
        ("Content-Profile", "public"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ]

    def call(function: str, body: dict[str, Any]) -> str:
        environ = EnvironBuilder(
            method="POST", path=f"/rest/v1/rpc/{function}", headers=headers, data=json.dumps(body)
        ).get_environ()
        request = Request(environ)
        parsed = gateway.parse(request)
        assert isinstance(parsed, Parsed), "not an RPC"
        planned = gateway.plan(request, parsed, gateway.schema_cache())
        statement = gateway._executable(planned.call, conn)
        text, _ = run_call(conn, statement, *planned.arguments, **planned.mode)
        return str(text)

    return call
