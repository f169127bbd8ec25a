"""Bootstrap a database like Supabase and apply ``infra/supabase/migrations`` in order.

``bootstrap.sql`` creates what Supabase provides (roles, ``auth.uid()``, the realtime
publication, default privileges); then each migration file not yet recorded in
``supabase_migrations.schema_migrations`` (the Supabase CLI's own table) runs in one
transaction and is recorded. A second run changes nothing.

    python -m infra.local.migrate --db-uri postgresql://...
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
BOOTSTRAP_SQL = HERE / "bootstrap.sql"
MIGRATIONS_DIR = HERE.parent / "supabase" / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{14})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be <14 digits>_<name>.sql: {path.name}")
        found.append(Migration(version=match[1], name=match[2], path=path))
    return found


def bootstrap(db_uri: str) -> None:
    # Roles are cluster-wide: two databases bootstrapping at once would race on CREATE ROLE.
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(7243111)")
        try:
            conn.execute(BOOTSTRAP_SQL.read_text())
        finally:
            conn.execute("select pg_advisory_unlock(7243111)")


def apply_migrations(db_uri: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Bootstrap, then apply pending migrations; returns the versions applied now."""
    bootstrap(db_uri)
    applied_now = []
    with psycopg.connect(db_uri) as conn:
        done = {
            row[0]
            for row in conn.execute("select version from supabase_migrations.schema_migrations")
        }
        conn.commit()
        for migration in discover(directory):
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.path.read_text())
                conn.execute(
                    "insert into supabase_migrations.schema_migrations (version, name)"
                    " values (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.version)
    return applied_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-uri", required=True)
    args = parser.parse_args(argv)
    applied = apply_migrations(args.db_uri)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
