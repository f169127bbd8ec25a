"""Bootstrap a database like Supabase, then apply the migrations as ``supabase db push`` does.

``bootstrap.sql`` runs as the superuser and creates what Supabase provides (roles, their
timeouts, ``auth.uid()``, the realtime publication, default privileges). The migrations then
run as ``postgres``, which on Supabase is not a superuser (it has ``BYPASSRLS``, ``CREATEDB``,
``CREATEROLE``): a migration that needs more than a Supabase project grants fails here first.

The history is the Supabase CLI's: ``supabase_migrations.schema_migrations``, created by the
migrating role with the CLI's own statements, one row per applied file. The pending files are
chosen as the CLI's ``FindPendingMigrations`` (``pkg/migration/apply.go``) does, and it refuses
the same two cases with the same messages:

- a recorded version with no local file: "Remote migration versions not found in local
  migrations directory." (the CLI suggests ``supabase migration repair --status reverted``);
- an unapplied local file older than the newest recorded version: "Found local migration
  files to be inserted before the last migration on remote database." (the CLI applies them
  only with ``--include-all``; so does ``include_all=True`` here).

Each file runs in one transaction together with its history row. A second run changes nothing.

    python -m infra.local.migrate --db-uri postgresql://...
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

HERE = Path(__file__).resolve().parent
BOOTSTRAP_SQL = HERE / "bootstrap.sql"
MIGRATIONS_DIR = HERE.parent / "supabase" / "migrations"
#: The role ``supabase db push`` connects as; bootstrap.sql makes it a non-superuser.
MIGRATION_ROLE = "postgres"
_MIGRATION_NAME = re.compile(r"^(\d{14})_(\w+)\.sql$")

# The Supabase CLI's messages (pkg/migration/apply.go: ErrMissingLocal, ErrMissingRemote).
MISSING_LOCAL = "Remote migration versions not found in local migrations directory."
MISSING_REMOTE = (
    "Found local migration files to be inserted before the last migration on remote database."
)

# The CLI's statements (pkg/migration/history.go), run by the migrating role so it owns them.
_HISTORY_TABLE_SQL = (
    "SET lock_timeout = '4s'",
    "CREATE SCHEMA IF NOT EXISTS supabase_migrations",
    "CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations"
    " (version text NOT NULL PRIMARY KEY)",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[]",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text",
)
_LIST_VERSIONS_SQL = "SELECT version FROM supabase_migrations.schema_migrations ORDER BY version"
_INSERT_VERSION_SQL = (
    "INSERT INTO supabase_migrations.schema_migrations(version, name, statements)"
    " VALUES (%s, %s, %s)"
)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


class MigrationHistoryError(Exception):
    """The history and the files disagree as ``supabase db push`` refuses; nothing was applied."""

    def __init__(self, message: str, versions: Sequence[str], suggestion: str) -> None:
        self.versions = tuple(versions)
        super().__init__(f"{message}\n{suggestion}\n" + "\n".join(self.versions))


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be <14 digits>_<name>.sql: {path.name}")
        found.append(Migration(version=match[1], name=match[2], path=path))
    return found


def find_pending(
    local: Sequence[Migration], remote: Sequence[str], *, include_all: bool = False
) -> list[Migration]:
    """The files to apply, in order, or the CLI's refusal (its ``FindPendingMigrations``)."""
    missing: list[str] = []
    unapplied: list[Migration] = []
    i = j = 0
    while i < len(remote) and j < len(local):
        if remote[i] == local[j].version:
            i += 1
            j += 1
        elif remote[i] < local[j].version:
            missing.append(remote[i])
            i += 1
        else:
            unapplied.append(local[j])
            j += 1
    if j == len(local):
        missing.extend(remote[i:])
    if missing:
        raise MigrationHistoryError(
            MISSING_LOCAL,
            missing,
            "Make sure your local git repo is up-to-date. An applied migration is never deleted"
            " or renamed; to forget these versions deliberately, run"
            " `supabase migration repair --status reverted` with them:",
        )
    if unapplied and not include_all:
        raise MigrationHistoryError(
            MISSING_REMOTE,
            [m.path.name for m in unapplied],
            "An applied migration is never edited and a new one sorts after the last applied"
            " one: rename these files to a later timestamp (or apply them anyway with"
            " --include-all):",
        )
    return [*unapplied, *local[j:]]


def migration_uri(db_uri: str) -> str:
    """The same server and database as ``db_uri``, connected as the migrating role."""
    return conninfo.make_conninfo(db_uri, user=MIGRATION_ROLE)


def bootstrap(db_uri: str) -> None:
    """Run bootstrap.sql as the superuser of ``db_uri``."""
    # Roles are cluster-wide: two databases bootstrapping at once would race on CREATE ROLE.
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(7243111)")
        try:
            conn.execute(BOOTSTRAP_SQL.read_text())
        finally:
            conn.execute("select pg_advisory_unlock(7243111)")


def applied_versions(conn: psycopg.Connection[Any]) -> list[str]:
    with conn.transaction():
        for statement in _HISTORY_TABLE_SQL:
            conn.execute(statement)
    return [row[0] for row in conn.execute(_LIST_VERSIONS_SQL)]


def apply_migrations(
    db_uri: str, directory: Path = MIGRATIONS_DIR, *, include_all: bool = False
) -> list[str]:
    """Bootstrap (superuser ``db_uri``), then apply pending migrations as ``postgres``.

    Returns the versions applied now; raises ``MigrationHistoryError`` before applying
    anything when the history and the files disagree.
    """
    bootstrap(db_uri)
    applied_now = []
    with psycopg.connect(migration_uri(db_uri), autocommit=True) as conn:
        pending = find_pending(discover(directory), applied_versions(conn), include_all=include_all)
        for migration in pending:
            # As the CLI does: no setting of one file leaks into the next.
            conn.execute("RESET ALL")
            text = migration.path.read_text()
            with conn.transaction():
                conn.execute(text)
                conn.execute(_INSERT_VERSION_SQL, (migration.version, migration.name, [text]))
            applied_now.append(migration.version)
    return applied_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-uri", required=True, help="superuser URI of the database")
    parser.add_argument("--migrations-dir", type=Path, default=MIGRATIONS_DIR)
    parser.add_argument(
        "--include-all",
        action="store_true",
        help="also apply files older than the last applied one (supabase db push --include-all)",
    )
    args = parser.parse_args(argv)
    try:
        applied = apply_migrations(args.db_uri, args.migrations_dir, include_all=args.include_all)
    except MigrationHistoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
