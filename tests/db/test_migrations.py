"""Migrations are applied as ``supabase db push`` applies them, by a role shaped like Supabase's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infra.local.migrate import (
    MISSING_LOCAL,
    MISSING_REMOTE,
    MigrationHistoryError,
    apply_migrations,
    discover,
    main,
)
from infra.local.postgres import Postgres


@pytest.fixture
def empty_db(pg: Postgres) -> Iterator[str]:
    name = f"ajq_mig_{uuid.uuid4().hex[:12]}"
    uri = pg.create_database(name)
    yield uri
    pg.drop_database(name)


def _write(directory: Path, version: str, sql: str) -> None:
    (directory / f"{version}_step.sql").write_text(sql)


def _versions(uri: str) -> list[str]:
    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "select version from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    return [row[0] for row in rows]


def _tables(uri: str) -> set[str]:
    with psycopg.connect(uri) as conn:
        rows = conn.execute("select tablename from pg_tables where schemaname = 'public'")
        return {row[0] for row in rows}


def test_the_project_migrations_belong_to_the_non_superuser_postgres(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        owners = conn.execute(
            "select distinct pg_get_userbyid(c.relowner) from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'"
            " union select distinct pg_get_userbyid(p.proowner) from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public'"
        ).fetchall()
        history_owner = conn.execute(
            "select pg_get_userbyid(relowner) from pg_class"
            " where oid = 'supabase_migrations.schema_migrations'::regclass"
        ).fetchone()
    assert owners == [("postgres",)]
    assert history_owner == ("postgres",)
    assert _versions(db_uri) == [m.version for m in discover()]


def test_roles_have_supabase_attributes_and_timeouts(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        attributes: dict[str, list[bool]] = dict(
            conn.execute(
                "select rolname, array[rolsuper, rolinherit, rolbypassrls, rolcanlogin]"
                " from pg_roles where rolname in"
                " ('postgres', 'anon', 'authenticated', 'service_role', 'authenticator')"
            ).fetchall()
        )
        settings: dict[str, list[str]] = dict(
            conn.execute(
                "select r.rolname, s.setconfig from pg_db_role_setting s"
                " join pg_roles r on r.oid = s.setrole where s.setdatabase = 0"
            ).fetchall()
        )
    # [superuser, inherit, bypassrls, login]
    assert attributes == {
        "postgres": [False, True, True, True],
        "anon": [False, True, False, False],
        "authenticated": [False, True, False, False],
        "service_role": [False, True, True, False],
        "authenticator": [False, False, False, True],
    }
    assert set(settings["authenticator"]) == {"statement_timeout=8s", "lock_timeout=8s"}
    assert settings["anon"] == ["statement_timeout=3s"]
    assert settings["authenticated"] == ["statement_timeout=8s"]
    assert "service_role" not in settings


def test_a_migration_needing_a_superuser_fails_as_on_supabase(
    empty_db: str, tmp_path: Path
) -> None:
    _write(tmp_path, "20260101000000", "create table public.kept (id int);")
    _write(tmp_path, "20260102000000", "create publication everything for all tables;")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        apply_migrations(empty_db, tmp_path)
    assert _versions(empty_db) == ["20260101000000"]


def test_a_file_older_than_the_last_applied_one_is_refused_with_the_cli_message(
    empty_db: str, tmp_path: Path
) -> None:
    _write(tmp_path, "20260101000000", "create table public.first (id int);")
    _write(tmp_path, "20260103000000", "create table public.third (id int);")
    assert apply_migrations(empty_db, tmp_path) == ["20260101000000", "20260103000000"]
    _write(tmp_path, "20260102000000", "create table public.second (id int);")
    _write(tmp_path, "20260104000000", "create table public.fourth (id int);")

    with pytest.raises(MigrationHistoryError) as refused:
        apply_migrations(empty_db, tmp_path)

    assert str(refused.value).startswith(MISSING_REMOTE)
    assert MISSING_REMOTE == (
        "Found local migration files to be inserted before the last migration on remote database."
    )
    assert refused.value.versions == ("20260102000000_step.sql",)
    assert _versions(empty_db) == ["20260101000000", "20260103000000"]
    assert _tables(empty_db) == {"first", "third"}


def test_include_all_applies_the_out_of_order_file_first(empty_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "20260101000000", "create table public.first (id int);")
    _write(tmp_path, "20260103000000", "create table public.third (id int);")
    apply_migrations(empty_db, tmp_path)
    _write(tmp_path, "20260102000000", "create table public.second (id int);")
    _write(tmp_path, "20260104000000", "create table public.fourth (id int);")

    applied = apply_migrations(empty_db, tmp_path, include_all=True)

    assert applied == ["20260102000000", "20260104000000"]
    assert _tables(empty_db) == {"first", "second", "third", "fourth"}


def test_a_recorded_version_without_its_file_is_refused_with_the_cli_message(
    empty_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "20260101000000", "create table public.first (id int);")
    _write(tmp_path, "20260102000000", "create table public.second (id int);")
    apply_migrations(empty_db, tmp_path)
    (tmp_path / "20260102000000_step.sql").unlink()
    _write(tmp_path, "20260103000000", "create table public.third (id int);")

    with pytest.raises(MigrationHistoryError) as refused:
        apply_migrations(empty_db, tmp_path, include_all=True)
    assert str(refused.value).startswith(MISSING_LOCAL)
    assert MISSING_LOCAL == "Remote migration versions not found in local migrations directory."
    assert refused.value.versions == ("20260102000000",)
    assert _tables(empty_db) == {"first", "second"}

    # The command line says the same and exits non-zero.
    assert main(["--db-uri", empty_db, "--migrations-dir", str(tmp_path)]) == 1
    assert MISSING_LOCAL in capsys.readouterr().err


def test_a_second_run_changes_nothing(empty_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "20260101000000", "create table public.first (id int);")
    assert apply_migrations(empty_db, tmp_path) == ["20260101000000"]
    assert apply_migrations(empty_db, tmp_path) == []
