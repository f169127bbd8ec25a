"""Shared by the Realtime, Auth and JS tests: the local Supabase server (REST, Auth, Realtime
on one URL) as its own process against a scratch database, and a few small helpers."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from infra.local.gateway import make_jwt
from infra.local.postgres import Postgres
from infra.local.stack import LOCAL_JWT_SECRET, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


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
        return make_jwt(LOCAL_JWT_SECRET, "anon")

    @property
    def service_key(self) -> str:
        return make_jwt(LOCAL_JWT_SECRET, "service_role")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/realtime/v1/websocket"

    def user_token(self, user_id: str, *, expires_in_s: float = 3600, **claims: Any) -> str:
        return make_jwt(
            LOCAL_JWT_SECRET,
            "authenticated",
            expires_in=timedelta(seconds=expires_in_s),
            sub=user_id,
            session_id=str(uuid.uuid4()),
            **claims,
        )

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
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.local.supabase_server",
                "--db-uri",
                db_uri,
                "--jwt-secret",
                LOCAL_JWT_SECRET,
                "--port",
                str(port),
                *args,
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(server: LocalSupabase) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the local Supabase exited: {server.log_text()}")
        try:
            if httpx.get(f"{server.url}/auth/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the local Supabase did not start: {server.log_text()}")


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
