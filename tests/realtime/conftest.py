"""One local Supabase server per test module, on its own scratch database."""

from __future__ import annotations

from collections.abc import Iterator

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
