"""The database tier's one fixture: a connection acting as the service role on a fresh
migrated database (``db_uri``, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Db


@pytest.fixture
def db(db_uri: str) -> Iterator[Db]:
    with Db(db_uri) as conn:
        yield conn
