"""One local Supabase server (and its scratch database) for the Auth tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from supabase import Client, ClientOptions, create_client

from infra.local.postgres import Postgres
from tests.realtime.local import LocalSupabase, start_local_supabase


@pytest.fixture(scope="module")
def supabase_server(
    pg: Postgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSupabase]:
    server = start_local_supabase(pg, template_db, tmp_path_factory.mktemp("supabase"))
    yield server
    server.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[[LocalSupabase], Client]]:
    """A fresh supabase-py client per call (its own session storage, as a browser tab has),
    each on its own HTTP pool, closed after the test."""
    sessions: list[httpx.Client] = []

    def make(server: LocalSupabase) -> Client:
        session = httpx.Client(timeout=10)
        sessions.append(session)
        return create_client(server.url, server.anon_key, ClientOptions(httpx_client=session))

    yield make
    for session in sessions:
        session.close()
