"""The WSGI application: routing, the connection pool, and the request → call → response path.

As PostgREST, it logs in as ``authenticator`` (so that role's statement and lock timeouts bound
every call) from a pool, serves ``/rest/v1/rpc/<function>`` by POST and GET, and answers a
readiness document at ``/rest/v1/``; every error is an ``ApiError`` response.
"""

from __future__ import annotations

import json
import logging
import select
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.wrappers import Request, Response

from infra.local.gateway.auth import Authenticator, Identity
from infra.local.gateway.config import (
    ANON_ROLE,
    AUTHENTICATOR_ROLE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_SCHEMAS,
    EXTRA_SEARCH_PATH,
    JSON_CONTENT_TYPE,
    REST_PREFIX,
)
from infra.local.gateway.errors import ApiError, postgres_error
from infra.local.gateway.request import arguments
from infra.local.gateway.rpc import (
    REQUEST_SETTINGS,
    Call,
    call_sql,
    content_range,
    resolve,
    run_call,
)
from infra.local.gateway.schema import ReturnKind, SchemaCache

log = logging.getLogger("infra.local.gateway")


class Gateway:
    """The WSGI application. ``close()`` releases its connection pool."""

    def __init__(
        self,
        db_uri: str,
        jwt_secret: str,
        *,
        schemas: Sequence[str] = DEFAULT_SCHEMAS,
        anonymous_role: str | None = ANON_ROLE,
        pool_min: int = 1,
        pool_max: int = 8,
        pool_timeout: float = 10.0,
        max_rows: int | None = DEFAULT_MAX_ROWS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        require_api_key: bool = False,
    ) -> None:
        self.db_uri = db_uri
        #: As PostgREST, log in as authenticator: its statement and lock timeouts (8 s on
        #: Supabase) hold for every API role, and only its role memberships can be switched to.
        self.authenticator_uri = conninfo.make_conninfo(db_uri, user=AUTHENTICATOR_ROLE)
        self.schemas = tuple(schemas)
        #: PostgREST's db-anon-role, ``anon`` as the Supabase CLI sets it (PGRST_DB_ANON_ROLE in
        #: its start.go): the role of a request whose key came as a URL parameter and that has no
        #: ``Authorization`` (Supabase's API gateway copies only an ``apikey`` header into it).
        self.auth = Authenticator(jwt_secret, anonymous_role)
        #: PostgREST's db-max-rows (None: unlimited).
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        #: Answer as Supabase's API gateway in front of PostgREST too (the project URL, as
        #: ``infra.local.supabase_server`` serves it): no key or not the project's key is 401.
        #: Off, the gateway is PostgREST alone.
        self.require_api_key = require_api_key
        self.pool = ConnectionPool(
            self.authenticator_uri,
            min_size=pool_min,
            max_size=pool_max,
            timeout=pool_timeout,
            open=False,
            # run_call sends each call as one implicit transaction block
            kwargs={"autocommit": True},
            check=_check_if_ended,
            name="rest-gateway",
        )
        self.pool.open(wait=False)
        self._cache: SchemaCache | None = None
        self._cache_lock = threading.Lock()
        #: The statement of each call shape, for the schema cache in use (cleared on reload).
        self._statements: dict[Call, bytes] = {}
        self._search_path = ", ".join(
            sql.Identifier(s).as_string()
            for s in dict.fromkeys((*self.schemas, *EXTRA_SEARCH_PATH))
        )

    # lifecycle

    def close(self) -> None:
        self.pool.close()

    def reload(self) -> SchemaCache:
        """Re-read the function signatures (PostgREST's ``NOTIFY pgrst, 'reload schema'``)."""
        with self._cache_lock, self._connection() as conn:
            self._cache = SchemaCache.load(conn, self.schemas)
            self._statements = {}
            return self._cache

    def schema_cache(self) -> SchemaCache:
        return self._cache or self.reload()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise self._acquisition_error() from exc

    def _acquisition_error(self) -> ApiError:
        # Tell "the database is down" (503) from "the pool is busy" (504) as PostgREST does.
        try:
            with psycopg.connect(self.authenticator_uri, connect_timeout=2):
                pass
        except psycopg.OperationalError as exc:
            return ApiError(
                503,
                "PGRST000",
                "Database connection error. Retrying the connection.",
                details=str(exc).strip(),
            )
        return ApiError(504, "PGRST003", "Timed out acquiring connection from connection pool.")

    # WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except ApiError as exc:
            response = exc.response()
        except Exception:
            log.exception("gateway error on %s %s", request.method, request.path)
            response = ApiError(500, "XX000", "Internal gateway error").response()
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path == REST_PREFIX and request.method in ("GET", "HEAD"):
            ready = {"service": "rest-gateway", "schemas": list(self.schemas)}
            return Response(json.dumps(ready), 200, content_type=JSON_CONTENT_TYPE)
        if self.require_api_key:
            # Supabase's API gateway checks the key first, whatever the path and method.
            self.auth.check_api_key(request.headers, request.args)
        prefix = f"{REST_PREFIX}/rpc/"
        if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix[:-1]:
            raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        if request.method not in ("POST", "GET"):
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        return self.rpc(request, path[len(prefix) :])

    def rpc(self, request: Request, name: str) -> Response:
        identity = self.auth.identify(request.headers)
        profile_header = "Content-Profile" if request.method == "POST" else "Accept-Profile"
        schema = request.headers.get(profile_header) or self.schemas[0]
        if schema not in self.schemas:
            raise ApiError(
                406,
                "PGRST106",
                "The schema must be one of the following: " + ", ".join(self.schemas),
            )
        body, body_text = arguments(request, self.max_body_bytes)
        keys = frozenset(body)
        cache = self.schema_cache()
        try:
            call = resolve(cache, schema, name, keys)
        except ApiError as exc:
            if exc.code != "PGRST202":
                raise
            # The function may be new since the cache was read: look once more.
            call = resolve(self.reload(), schema, name, keys)
            cache = self.schema_cache()
        return self._execute(request, identity, cache, call, body_text)

    def _execute(
        self, request: Request, identity: Identity, cache: SchemaCache, call: Call, body: str
    ) -> Response:
        routine = call.routine
        request_settings = (
            self._search_path,
            identity.role,
            json.dumps(identity.claims),
            request.method,
            request.path.removeprefix(REST_PREFIX),
            json.dumps({k.lower(): v for k, v in request.headers.items()}),
            json.dumps(dict(request.cookies)),
        )
        # PostgREST's order (Query.setPgLocals): the role's settings, then the role and the
        # request, then the function's hoisted settings.
        settings = (
            *cache.role_settings.get(identity.role, ()),
            *zip(REQUEST_SETTINGS, request_settings, strict=True),
            *routine.settings,
        )
        with self._connection() as conn:
            try:
                text, page_total = run_call(
                    conn,
                    self._statement(call, conn),
                    settings,
                    body,
                    isolation=routine.isolation or cache.role_isolation.get(identity.role),
                    read_only=request.method == "GET" or not routine.volatile,
                )
            except psycopg.Error as exc:
                raise postgres_error(exc, identity.role) from None
        headers = {"Content-Range": content_range(page_total)}
        if routine.returns is ReturnKind.VOID:
            empty = Response(status=204, headers=headers)
            del empty.headers["Content-Type"]
            return empty
        return Response(text, 200, headers, content_type=JSON_CONTENT_TYPE)

    def _statement(self, call: Call, conn: psycopg.Connection[Any]) -> bytes:
        """``call_sql``'s text, composed once per function and set of argument names."""
        statement = self._statements.get(call)
        if statement is None:
            statement = call_sql(call, self.max_rows).as_bytes(conn)
            self._statements[call] = statement
        return statement


def _check_if_ended(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on checkout, without a round trip for a live connection.

    An idle connection has nothing to read until the server ends it (``pg_terminate_backend``,
    a shutdown, a crash leave an error or an EOF on the socket); only then is it checked with a
    query, which raises for a dead one so the pool replaces it. (``check_connection`` on every
    checkout cost a round trip per request.)
    """
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)
