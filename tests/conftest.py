"""Test harness shared by every tier.

A real PostgreSQL (``DATABASE_URL`` or an embedded ``pgserver`` in a temporary folder, so a
suite never collides with a stack you left running) is started once per run; a template
database is bootstrapped like Supabase and migrated once, then cloned for each test that
asks for ``db_uri``. The fixtures more than one tier uses are defined here, once; the helpers
tests import are in ``tests/support.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from supabase import Client, ClientOptions, create_client

from infra.local.gateway import GatewayHandle, api_key, start_gateway
from infra.local.migrate import apply_migrations
from infra.local.postgres import Postgres, start_postgres
from tests.support import JWT_SECRET, LocalSupabase, start_local_supabase

TEMPLATE_DB = "ajq_template"


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    # functions_framework.create_app and the settings read os.environ; keep tests apart.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = start_postgres(Path(tmp_path_factory.mktemp("pgdata")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def template_db(pg: Postgres) -> str:
    uri = pg.create_database(TEMPLATE_DB)
    apply_migrations(uri)
    return TEMPLATE_DB


@pytest.fixture
def db_uri(pg: Postgres, template_db: str) -> Iterator[str]:
    name = f"ajq_{uuid.uuid4().hex[:12]}"
    uri = pg.create_database(name, template=template_db)
    yield uri
    pg.drop_database(name)


@pytest.fixture
def gateway_db(db_uri: str) -> str:
    """The database the gateway serves: a fresh migrated one (the gateway tier overrides it
    with its catalogue of test functions)."""
    return db_uri


@pytest.fixture
def gateway(gateway_db: str) -> Iterator[GatewayHandle]:
    """The PostgREST-compatible gateway (in-process, a free port) on ``gateway_db``."""
    with start_gateway(gateway_db, JWT_SECRET) as handle:
        yield handle


@pytest.fixture
def supabase_client() -> Iterator[Callable[..., Client]]:
    """``supabase_client(url, api_key, access_token=None)``: a real supabase-py client with its
    own session storage and HTTP pool, closed after the test."""
    sessions: list[httpx.Client] = []

    def make(url: str, api_key: str, access_token: str | None = None) -> Client:
        session = httpx.Client(timeout=10)
        sessions.append(session)
        options = ClientOptions(httpx_client=session)
        if access_token:  # as a signed-in browser sends it; otherwise the client's own headers
            options = ClientOptions(
                httpx_client=session, headers={"Authorization": f"Bearer {access_token}"}
            )
        return create_client(url, api_key, options)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture(scope="session")
def service_key() -> str:
    """The service role's key for every server the tests start (they share one JWT secret)."""
    return api_key(JWT_SECRET, "service_role")


@pytest.fixture(scope="session")
def anon_key() -> str:
    return api_key(JWT_SECRET, "anon")


@pytest.fixture(scope="module")
def supabase_server(
    pg: Postgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSupabase]:
    """One local Supabase server (REST, Auth, Realtime) per module, on its own scratch database
    cloned from the migrated template (the Realtime, Auth and JS tiers)."""
    server = start_local_supabase(pg, template_db, tmp_path_factory.mktemp("supabase"))
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The unit tier (tests/unit: nothing started) runs first, so a broken rule fails in
    seconds rather than after the database and the stack have started."""
    unit = Path(__file__).parent / "unit"
    items.sort(key=lambda item: not item.path.is_relative_to(unit))
