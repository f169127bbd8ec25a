"""A PostgREST-compatible gateway for ``/rest/v1/rpc/<function>``: the local Supabase data API.

Production code calls ``supabase.rpc(fn, args).execute()``, which posts a JSON object to
``SUPABASE_URL/rest/v1/rpc/fn``. This module serves that endpoint (and nothing else of
PostgREST) against a real Postgres, so the same client code runs unchanged locally:

- first (``require_api_key``, as the local Supabase server runs it), as Supabase's API gateway
  in front of PostgREST does, the request must carry one of the project's API keys
  (``apikey`` header or URL parameter: exactly its anon or service_role key, as ``api_key``
  mints them), else 401 "No API key found in request" or "Invalid API key" with the gateway's
  own ``{message, hint}`` body;
- the bearer token (``Authorization``, else ``apikey``) is an HS256 JWT checked with the
  project's secret; its ``role`` claim picks the database role, as in PostgREST (an anon key
  with a service_role bearer is service_role; a bearer that is not a JWT is 401 PGRST301);
- it logs in as ``authenticator`` (so that role's 8 s statement and lock timeouts bound
  every call, as on Supabase) and every call is one transaction that applies the switched
  role's own settings and sets ``role``, ``request.jwt.claims``, ``request.method``,
  ``request.path`` and ``request.headers`` like PostgREST v13 does; STABLE and IMMUTABLE
  functions run READ ONLY, and sets are cut at ``db-max-rows`` (1000 on Supabase);
- functions are found by name and by the set of argument names (PostgREST's overload rule),
  and the arguments are converted by ``json_to_record`` with the declared types, as
  PostgREST does, so casts and error messages are Postgres's own;
- Postgres builds the response JSON with the same expressions PostgREST uses, so the bytes on
  the wire (timestamps, numbers, nested JSON) are what PostgREST would send;
- errors carry PostgREST's JSON body and its SQLSTATE → HTTP status table; JWT errors are
  v13's (PGRST301 undecodable, PGRST303 invalid claims); a body that is not JSON, nests
  deeper than the parser goes or breaks off is 400 PGRST102, one over the size bound 413.

``api_key`` (``infra.local.keys``) gives the project's keys as the Supabase CLI mints them,
``make_jwt`` fresh tokens (users').

The package, by concern: ``config`` (the fixed settings), ``errors`` (PostgREST's error body and
status table), ``auth`` (token → role), ``request`` (arguments from the query or the body),
``schema`` (the schema cache), ``rpc`` (overload resolution, the statement, the transaction),
``app`` (the application: WSGI, and ``Gateway.serve`` on an event loop), ``asgi`` (``RestApp``:
the gateway as an ASGI application, the call on the loop), ``server`` (serving it alone, and the
CLI: ``python -m infra.local.gateway``). Under the local stack, ``infra.local.supabase_server``
serves ``RestApp``.
"""

from infra.local.gateway.app import Gateway
from infra.local.gateway.auth import Identity, make_jwt
from infra.local.gateway.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_PORT,
    REST_PREFIX,
)
from infra.local.gateway.errors import ApiError, sqlstate_status
from infra.local.gateway.rpc import Call, call_sql, resolve
from infra.local.gateway.schema import ReturnKind, Routine, SchemaCache
from infra.local.gateway.server import GatewayHandle, create_app, main, start_gateway
from infra.local.keys import api_key

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_PORT",
    "REST_PREFIX",
    "ApiError",
    "Call",
    "Gateway",
    "GatewayHandle",
    "Identity",
    "ReturnKind",
    "Routine",
    "SchemaCache",
    "api_key",
    "call_sql",
    "create_app",
    "main",
    "make_jwt",
    "resolve",
    "sqlstate_status",
    "start_gateway",
]
