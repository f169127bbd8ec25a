"""The gateway's fixed settings: ports, paths, roles and the limits PostgREST and Supabase set.

Each value is written once here; ``max_rows`` is read from the Supabase CLI project's
``config.toml``, as the hosted project's is set in its dashboard.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

DEFAULT_PORT = 54321  # the local Supabase API port
ANON_ROLE = "anon"
DEFAULT_SCHEMAS = ("public",)
# Supabase's PostgREST: db-extra-search-path = public, extensions.
EXTRA_SEARCH_PATH = ("public", "extensions")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REST_PREFIX = "/rest/v1"
DEFAULT_KEY_LIFETIME = timedelta(days=3650)
#: PostgREST logs in as this role and switches to the token's role per request.
AUTHENTICATOR_ROLE = "authenticator"
#: PostgREST v13's default db-hoisted-tx-settings (src/PostgREST/Config.hs).
HOISTED_TX_SETTINGS = (
    "statement_timeout",
    "plan_filter.statement_cost_limit",
    "default_transaction_isolation",
)
#: The Supabase CLI project's settings: the one place ``max_rows`` is written.
SUPABASE_CONFIG = Path(__file__).resolve().parents[2] / "supabase" / "config.toml"


def _configured_max_rows(config: Path = SUPABASE_CONFIG) -> int:
    with config.open("rb") as file:
        return int(tomllib.load(file)["api"]["max_rows"])


#: PostgREST's ``db-max-rows`` as the project configures it (``[api] max_rows``, 1000 as on a
#: hosted Supabase project): at most this many rows of a set are returned.
DEFAULT_MAX_ROWS = _configured_max_rows()
#: Bodies beyond this are refused before they are read (Supabase's API gateway bounds them
#: too; our largest RPC body, a job with its metadata, is tens of KiB).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
