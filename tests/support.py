"""What the tiers share, defined once (as httpx keeps ``tests/common.py``): the seed query, the
final statuses, the JWT secret and the tokens it signs, the whole local stack for a test module
and the job helpers on it, the SQL functions called as a Supabase role, and the local Supabase
server (REST, Auth and Realtime on one URL) as its own process.

Tests import from here, never from a conftest or from another tier's helper module: a conftest
holds fixtures only, and pytest imports each conftest as its own module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import flask
import functions_framework
import httpx
import psycopg
import pytest
from psycopg import sql

from infra.local.gateway import make_jwt
from infra.local.host import free_port
from infra.local.keys import api_key
from infra.local.postgres import Postgres
from infra.local.stack import LOCAL_JWT_SECRET, LocalStack, StackConfig
from infra.local.tasks_emulator.oidc import CertsServer, OidcSigner
from shared.jobs import FINAL_STATUSES
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The seed scenario's question (a complex report over every server), asked across the tiers.
SEED_QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"

#: The statuses a job never leaves, as the wire spells them (from shared.jobs).
FINAL: frozenset[str] = frozenset(status.value for status in FINAL_STATUSES)

#: The one JWT secret of every test server: the local stack's, so a token minted here is good
#: on the gateway, the local Supabase and the functions alike.
JWT_SECRET = LOCAL_JWT_SECRET

#: The least a function needs to load its settings; nothing listens at the URL.
MINIMAL_ENV = {"SUPABASE_URL": "http://127.0.0.1:1", "SUPABASE_SERVICE_ROLE_KEY": "k"}


def minimal_settings(**fields: Any) -> Settings:
    """Settings from ``MINIMAL_ENV`` and ``fields``: for code that must not reach Supabase."""
    url, key = MINIMAL_ENV["SUPABASE_URL"], MINIMAL_ENV["SUPABASE_SERVICE_ROLE_KEY"]
    return Settings(supabase_url=url, supabase_service_key=key, **fields)


#: The rate caps out of the way, for a stack that many tests share.
NO_CAPS = {"MAX_JOBS_PER_MINUTE": "1000", "MAX_ACTIVE_JOBS": "1000"}
#: The functions' settings on an end-to-end stack: no caps, a browser origin and a small body
#: cap the hostile-input tests can reach.
STACK_ENV = {
    **NO_CAPS,
    "ALLOWED_ORIGINS": "https://dashboard.example",
    "MAX_BODY_BYTES": "8192",
}


def job_row(**fields: Any) -> dict[str, Any]:
    """A queued job's row of ``ai_jobs`` as the database sends it (the columns ``Job`` needs),
    with ``fields`` over the defaults."""
    now = "2026-11-27T00:00:00+00:00"
    return {
        "id": str(uuid.uuid4()),
        "user_id": "u",
        "type": "report",
        "query": "q",
        "priority": "normal",
        "status": "queued",
        "progress": 0,
        "max_attempts": 3,
        "dispatch_count": 1,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


def mint(role: str, **claims: Any) -> str:
    """A fresh JWT for ``role`` signed with the tests' secret (never one of the project's API
    keys: those are ``api_key(JWT_SECRET, role)``)."""
    return make_jwt(JWT_SECRET, role, **claims)


def user_token(user_id: str, *, expires_in_s: float = 3600, **claims: Any) -> str:
    """An access token of a signed-in user, as Supabase Auth issues it."""
    return make_jwt(
        JWT_SECRET,
        "authenticated",
        expires_in=timedelta(seconds=expires_in_s),
        sub=user_id,
        session_id=str(uuid.uuid4()),
        **claims,
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``predicate``; fail (not time) the test when it never holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


# --- the whole local stack ---------------------------------------------------------------


def gemini_env(base_url: str, **settings: str) -> dict[str, str]:
    """The functions' settings for the Gemini writer talking to a fake Gemini at ``base_url``."""
    return {
        "AI_WRITER": "gemini",
        "GEMINI_API_KEY": "test-key",
        "GEMINI_BASE_URL": base_url,
        **settings,
    }


@contextmanager
def local_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg: Postgres,
    name: str,
    function_env: dict[str, str] | None = None,
    **config: Any,
) -> Iterator[LocalStack]:
    """The whole stack on free ports, its own database on the run's Postgres, no reaper loop."""
    stack_config = StackConfig.for_tests(
        tmp_path_factory.mktemp(name),
        **{"reap_interval_s": 0, **config},
        function_env=dict(function_env or {}),
        database_uri=pg.create_database(f"{name}_{uuid.uuid4().hex[:8]}"),
    )
    with LocalStack(stack_config) as running:
        yield running


def create(http: httpx.Client, query: str = SEED_QUERY, **extra: Any) -> dict[str, Any]:
    """Create a job over HTTP; it must be accepted."""
    response = http.post("/ai-jobs-create", json={"query": query, **extra})
    assert response.status_code == 202, response.text
    return dict(response.json())


def preflight(http: httpx.Client, path: str, request_headers: str) -> httpx.Response:
    """A browser's CORS preflight for a POST to ``path`` from the stack's allowed origin."""
    return http.options(
        path,
        headers={
            "Origin": STACK_ENV["ALLOWED_ORIGINS"],
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": request_headers,
        },
    )


def wait_for(
    http: httpx.Client,
    job_id: str,
    statuses: frozenset[str] | set[str] = FINAL,
    timeout_s: float = 60,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll the job (with its logs) until it is in one of ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/ai-jobs-get/{job_id}", params={"logs": "true"}, headers=headers).json()
        if job["status"] in statuses:
            return dict(job)
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {statuses} after {timeout_s}s: {job}")
        time.sleep(0.1)


# --- the SQL functions, called as a Supabase role -----------------------------------------


def store_calls() -> dict[str, set[str]]:
    """function name -> the argument names of each ``self.rpc("name", {...})`` in the store."""
    calls: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse((REPO_ROOT / "shared" / "store.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "rpc"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[1], ast.Dict)
        ):
            keys = {str(key.value) for key in node.args[1].keys if isinstance(key, ast.Constant)}
            calls.setdefault(str(node.args[0].value), set()).update(keys)
    return calls


def _setting(field: str) -> Any:
    return Settings.model_fields[field].default


#: What a test leaves out of a call, filled in as shared/store.py would pass it: the SQL
#: functions have no defaults of their own (migration 20261127000800), and the settings' values
#: come from their one declaration.
CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "create_job": {
        "user_id": "anonymous",
        "priority": "normal",
        "idempotency_key": None,
        "request_hash": None,
        "complexity": None,
        "complexity_score": None,
        "estimated_seconds": None,
        "metadata": {},
        "max_attempts": _setting("max_attempts"),
        "max_per_minute": _setting("max_jobs_per_minute"),
        "max_active": _setting("max_active_jobs"),
    },
    "get_job": {"user_id": None},
    "list_jobs": {
        "statuses": None,
        "types": None,
        "limit": 20,
        "before_created_at": None,
        "before_id": None,
    },
    "list_job_logs": {"user_id": None, "after_id": 0, "limit": 100},
    "cancel_job": {"user_id": None, "reason": None},
    "claim_job": {"lease_seconds": _setting("lease_seconds")},
    "report_progress": {"message": None, "level": "info", "data": None, "lease_seconds": None},
    "fail_job": {"error_code": "internal", "retryable": False},
    "reap_jobs_v2": {"queued_grace_seconds": _setting("reap_grace_s"), "limit": 100},
    "next_dispatch": {"delay_seconds": 0},
    "purge_jobs": {"limit": 1000},
}


class SqlError(Exception):
    def __init__(self, error: psycopg.Error) -> None:
        diag = error.diag
        self.sqlstate = diag.sqlstate or ""
        self.message = diag.message_primary or ""
        raw = diag.message_detail or ""
        self.detail: dict[str, Any] = json.loads(raw) if raw.startswith("{") else {"text": raw}
        super().__init__(f"{self.sqlstate} {self.message} {self.detail}")


class Db:
    """One autocommit connection acting as ``role`` with optional JWT claims, as PostgREST does."""

    def __init__(self, uri: str, role: str = "service_role", claims: dict[str, Any] | None = None):
        self.conn = psycopg.connect(uri, autocommit=True)
        self.conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        if claims is not None:
            self.conn.execute(
                "select set_config('request.jwt.claims', %s, false)", (json.dumps(claims),)
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Db:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, template: str, function: str, args: dict[str, Any]) -> Any:
        args = {**CALL_DEFAULTS.get(function, {}), **args}
        arglist = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(f"p_{name}"), sql.Placeholder())
            for name in args
        )
        values = [json.dumps(v) if isinstance(v, dict) else v for v in args.values()]
        query = sql.SQL(template).format(sql.Identifier(function), arglist)
        try:
            row = self.conn.execute(query, values).fetchone()
        except psycopg.Error as exc:
            raise SqlError(exc) from None
        assert row is not None
        return row[0]

    def one(self, function: str, **args: Any) -> Any:
        """Call a function returning a scalar or one row; the row comes back as a dict."""
        return self._call("select to_jsonb(public.{}({}))", function, args)

    def rows(self, function: str, **args: Any) -> list[dict[str, Any]]:
        template = "select coalesce(jsonb_agg(t), '[]') from public.{}({}) t"
        return list(self._call(template, function, args))

    def job(self, job_id: str) -> dict[str, Any]:
        rows = self.execute("select to_jsonb(j) from public.ai_jobs j where id = %s", (job_id,))
        assert rows, f"job {job_id} missing"
        return dict(rows[0][0])

    def log_count(self, job_id: str) -> int:
        rows = self.execute("select count(*) from public.ai_job_logs where job_id = %s", (job_id,))
        return int(rows[0][0])

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(query, params)
        except psycopg.Error as exc:
            raise SqlError(exc) from None
        return cur.fetchall() if cur.description else []

    def report(self, job: dict[str, Any], progress: int, step: str, **args: Any) -> Any:
        """``report_progress`` under the job's lease, as the worker calls it."""
        return self.one(
            "report_progress",
            job_id=job["id"],
            lease_token=job["lease_token"],
            progress=progress,
            step=step,
            **args,
        )

    # factories: a job in each state
    def new_job(self, user: str = "u1", **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"type": "report", "query": "analyse all servers", "user_id": user}
        args.update(extra)
        return dict(self.one("create_job", **args)["job"])

    def processing_job(self, user: str = "u1", lease_seconds: int = 600) -> dict[str, Any]:
        job = self.new_job(user)
        return dict(self.one("claim_job", job_id=job["id"], lease_seconds=lease_seconds))


#: The per-user limits create_job is always given, at their declared defaults.
LIMITS: dict[str, Any] = {
    "max_attempts": Settings.model_fields["max_attempts"].default,
    "max_per_minute": Settings.model_fields["max_jobs_per_minute"].default,
    "max_active": Settings.model_fields["max_active_jobs"].default,
}


def function_app(target: str, source: Path) -> flask.Flask:
    """``functions_framework.create_app``, typed: the library's is unannotated."""
    app: flask.Flask = functions_framework.create_app(target, str(source))  # type: ignore[no-untyped-call]
    return app


# --- the local Supabase server (Realtime, Auth and JS tests) ------------------------------


@dataclass
class LocalSupabase:
    url: str
    db_uri: str
    process: subprocess.Popen[bytes]
    log_path: Path
    #: extra server flags (e.g. the Auth stand-in's ``--auth-jwt-alg ES256``)
    args: tuple[str, ...] = ()

    @property
    def anon_key(self) -> str:
        return api_key(JWT_SECRET, "anon")

    @property
    def service_key(self) -> str:
        return api_key(JWT_SECRET, "service_role")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/realtime/v1/websocket"

    def user_token(self, user_id: str, *, expires_in_s: float = 3600, **claims: Any) -> str:
        return user_token(user_id, expires_in_s=expires_in_s, **claims)

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement as the database owner (what the worker's SQL functions do)."""
        with psycopg.connect(self.db_uri, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def new_job(self, user_id: str, **columns: Any) -> str:
        values = {"user_id": user_id, "type": "analysis", "query": "q", **columns}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        rows = self.sql(
            f"insert into public.ai_jobs ({names}) values ({marks}) returning id::text",
            *values.values(),
        )
        return str(rows[0][0])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        """Stop the server (every socket drops) and serve again on the same port."""
        self.stop()
        port = int(self.url.rsplit(":", 1)[1])
        self.process = _spawn(self.db_uri, port, self.log_path, self.args)
        _wait_ready(self)


def _spawn(
    db_uri: str, port: int, log_path: Path, args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "infra.local.supabase_server", "--db-uri", db_uri]
    command += ["--jwt-secret", JWT_SECRET, "--port", str(port), *args]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _answers_health(server: LocalSupabase) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(f"the local Supabase exited: {server.log_text()}")
    try:
        # with the key: Kong key-auth guards /auth/v1/health as the rest of /auth/v1/
        health = f"{server.url}/auth/v1/health"
        return httpx.get(health, headers={"apikey": server.anon_key}, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(server: LocalSupabase) -> None:
    try:
        wait_until(lambda: _answers_health(server), "the local Supabase to start")
    except AssertionError:
        server.stop()
        raise RuntimeError(f"the local Supabase did not start: {server.log_text()}") from None


def start_local_supabase(pg: Postgres, template: str, log_dir: Path, *args: str) -> LocalSupabase:
    name = f"rt_{uuid.uuid4().hex[:10]}"
    db_uri = pg.create_database(name, template=template)
    port = free_port()
    log_path = log_dir / "supabase.log"
    server = LocalSupabase(
        f"http://127.0.0.1:{port}", db_uri, _spawn(db_uri, port, log_path, args), log_path, args
    )
    _wait_ready(server)
    return server


@contextmanager
def google_certs() -> Iterator[tuple[OidcSigner, str]]:
    """A signer of Google-style OIDC tokens and the URL of its certificates (the Cloud Tasks
    emulator's certificate server, ``Cache-Control: public, max-age=3600`` as Google's)."""
    signer = OidcSigner()
    server = CertsServer(signer, "127.0.0.1")
    server.start()
    try:
        yield signer, server.url
    finally:
        server.stop()
