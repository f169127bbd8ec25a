"""The Auth tier's one fixture beyond tests/conftest.py: a client factory bound to a server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from supabase import Client

from tests.support import LocalSupabase


@pytest.fixture
def client_for(supabase_client: Callable[..., Client]) -> Callable[[LocalSupabase], Client]:
    """A fresh supabase-py client (its own session storage, as a browser tab has) with the
    server's anon key."""
    return lambda server: supabase_client(server.url, server.anon_key)
