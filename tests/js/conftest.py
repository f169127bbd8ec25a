"""One local Supabase server per test module, and supabase-js installed from the lock file."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.postgres import Postgres
from tests.realtime.local import LocalSupabase, start_local_supabase


@pytest.fixture(scope="module")
def supabase_server(
    pg: Postgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSupabase]:
    server = start_local_supabase(pg, template_db, tmp_path_factory.mktemp("supabase"))
    yield server
    server.stop()


JS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def js_installed() -> Path:
    """supabase-js from npm, exactly as package-lock.json pins it (``make js`` does the same)."""
    if not (JS_DIR / "node_modules" / "@supabase" / "supabase-js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)
    return JS_DIR
