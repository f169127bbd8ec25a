"""Calling the SQL functions directly, as a given Supabase role, for the database tests."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from shared.settings import Settings


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
        self.detail = json.loads(raw) if raw.startswith("{") else {"text": raw}
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

    def _args(self, args: dict[str, Any]) -> tuple[sql.Composable, list[Any]]:
        parts = [
            sql.SQL("{} => {}").format(sql.Identifier(f"p_{name}"), sql.Placeholder())
            for name in args
        ]
        values = [json.dumps(v) if isinstance(v, dict) else v for v in args.values()]
        return sql.SQL(", ").join(parts), values

    def one(self, function: str, **args: Any) -> Any:
        """Call a function returning a scalar or one row; the row comes back as a dict."""
        arglist, values = self._args({**CALL_DEFAULTS.get(function, {}), **args})
        query = sql.SQL("select to_jsonb(public.{}({}))").format(sql.Identifier(function), arglist)
        try:
            row = self.conn.execute(query, values).fetchone()
        except psycopg.Error as exc:
            raise SqlError(exc) from None
        assert row is not None
        return row[0]

    def rows(self, function: str, **args: Any) -> list[dict[str, Any]]:
        arglist, values = self._args({**CALL_DEFAULTS.get(function, {}), **args})
        query = sql.SQL("select coalesce(jsonb_agg(t), '[]') from public.{}({}) t").format(
            sql.Identifier(function), arglist
        )
        try:
            row = self.conn.execute(query, values).fetchone()
        except psycopg.Error as exc:
            raise SqlError(exc) from None
        assert row is not None
        return list(row[0])

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.conn.execute(
            "select to_jsonb(j) from public.ai_jobs j where id = %s", (job_id,)
        ).fetchone()
        assert row is not None, f"job {job_id} missing"
        return dict(row[0])

    def log_count(self, job_id: str) -> int:
        row = self.conn.execute(
            "select count(*) from public.ai_job_logs where job_id = %s", (job_id,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(query, params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise SqlError(exc) from None
        return cur.fetchall() if cur.description else []

    # factories: a job in each state
    def new_job(self, user: str = "u1", **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"type": "report", "query": "analyse all servers", "user_id": user}
        args.update(extra)
        return dict(self.one("create_job", **args)["job"])

    def processing_job(self, user: str = "u1", lease_seconds: int = 600) -> dict[str, Any]:
        job = self.new_job(user)
        return dict(self.one("claim_job", job_id=job["id"], lease_seconds=lease_seconds))
