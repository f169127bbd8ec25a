"""The local Postgres: ``DATABASE_URL`` when set, else an embedded server from ``pgserver``.

``pgserver`` ships real PostgreSQL binaries in a wheel and runs them (also as root) with the
data in a folder of ours; it listens on a Unix socket only, so it never collides with
another stack on a TCP port. ``database_uri`` derives the URI of another database on the
same server (tests clone a template database per test).

The cluster is shaped like Supabase's: its superuser is ``supabase_admin``, and ``postgres``
is an ordinary role that ``bootstrap.sql`` creates without SUPERUSER (supabase/postgres,
``migrations/db/migrations/10000000000000_demote-postgres.sql``). pgserver runs ``initdb -U
postgres``, and Postgres never lets its bootstrap superuser lose SUPERUSER, so that role is
renamed to ``supabase_admin`` once, from a short-lived second superuser.
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".local" / "pgdata"
#: The cluster's superuser, as on a Supabase project.
SUPERUSER = "supabase_admin"
_RENAMER = "ajq_rename_superuser"


@dataclass
class Postgres:
    """A reachable server and its admin (superuser) URI."""

    uri: str
    _server: Any = field(default=None, repr=False)

    def database_uri(self, dbname: str) -> str:
        return conninfo.make_conninfo(self.uri, dbname=dbname)

    def create_database(self, dbname: str, *, template: str | None = None) -> str:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            if template:
                # A clone keeps the template's owner (postgres after bootstrap.sql), as a
                # Supabase database belongs to postgres.
                owner = conn.execute(
                    "select coalesce(pg_get_userbyid(max(datdba)), current_user)"
                    " from pg_database where datname = %s",
                    (template,),
                ).fetchone()
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                        sql.Identifier(dbname),
                        sql.Identifier(template),
                        sql.Identifier(owner[0] if owner else "postgres"),
                    )
                )
            else:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.database_uri(dbname)

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def start_postgres(data_dir: Path | None = None) -> Postgres:
    """Use ``DATABASE_URL`` if set; otherwise start (or join) an embedded server."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return Postgres(uri=url)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); harmless here
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver

    path = Path(data_dir or DEFAULT_DATA_DIR)
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(  # type: ignore[attr-defined]
        str(path), cleanup_mode="stop"
    )
    initdb_uri = server.get_uri()
    admin_uri = conninfo.make_conninfo(initdb_uri, user=SUPERUSER)
    if not _can_connect(admin_uri):
        _rename_superuser(initdb_uri, admin_uri)
    if _enable_logical_decoding(admin_uri):
        server.cleanup()  # a restart applies wal_level (kept in postgresql.auto.conf)
        server = _start_again(pgserver, path)
    return Postgres(uri=admin_uri, _server=server)


def _can_connect(uri: str) -> bool:
    try:
        with psycopg.connect(uri, autocommit=True):
            return True
    except psycopg.OperationalError:
        return False


def _rename_superuser(initdb_uri: str, admin_uri: str) -> None:
    """Rename pgserver's ``postgres`` superuser to ``supabase_admin`` (a fresh data folder)."""
    # A session cannot rename its own user, so a second superuser does it and is dropped.
    with psycopg.connect(initdb_uri, autocommit=True) as conn:
        conn.execute(f"create role {_RENAMER} superuser login")
    renamer_uri = conninfo.make_conninfo(initdb_uri, user=_RENAMER)
    with psycopg.connect(renamer_uri, autocommit=True) as conn:
        conn.execute(f"alter role postgres rename to {SUPERUSER}")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f"drop role {_RENAMER}")


def _start_again(pgserver: Any, path: Path, attempts: int = 3) -> Any:
    # A concurrent pytest run re-tightens /tmp/pytest-of-<user> (mode 0700) between
    # pgserver's permission fix and pg_ctl start; the next attempt fixes them again.
    for attempt in range(attempts):
        try:
            return pgserver.get_server(str(path), cleanup_mode="stop")
        except (OSError, subprocess.CalledProcessError):
            pgserver.PostgresServer._instances.pop(path.resolve(), None)
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _enable_logical_decoding(uri: str) -> bool:
    """The local Realtime reads changes by logical decoding (REALTIME.md): set
    ``wal_level = logical`` once; True when the server must restart to apply it."""
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute("show wal_level").fetchone()
        if row is not None and row[0] == "logical":
            return False
        conn.execute("alter system set wal_level = 'logical'")
    return True
