"""The application: routing, the connection pools, and the request → call → response path.

As PostgREST, it logs in as ``authenticator`` (so that role's statement and lock timeouts bound
every call) from a pool, serves ``/rest/v1/rpc/<function>`` by POST and GET, and answers a
readiness document at ``/rest/v1/``; every error is an ``ApiError`` response.

One path, two ways to wait on the database: ``Gateway`` is a WSGI application (a thread per
request, sync psycopg), and ``Gateway.serve`` gives the same answer on an event loop (asyncio
psycopg), as ``infra.local.gateway.asgi`` serves it. Both run ``parse`` → ``plan`` → the call
(``run_call`` / ``run_call_async``, one query) → ``respond``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import select
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg.abc import AdaptContext
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
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
    Statement,
    content_range,
    resolve,
    run_call,
    run_call_async,
)
from infra.local.gateway.schema import ReturnKind, SchemaCache

log = logging.getLogger("infra.local.gateway")


class Gateway:
    """The WSGI application, and ``serve`` for an event loop. ``close()`` releases its
    connection pool, ``close_async()`` (on the serving loop) the asyncio one."""

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
        #: ``serve``'s pool, of the same size and rules, opened on the serving loop at first use.
        self._async_pool: AsyncConnectionPool | None = None
        self._async_pool_lock = asyncio.Lock()
        self._pool_options: dict[str, Any] = {
            "min_size": pool_min,
            "max_size": pool_max,
            "timeout": pool_timeout,
        }
        self._cache: SchemaCache | None = None
        self._cache_lock = threading.Lock()
        #: The statement of each call shape, for the schema cache in use (cleared on reload).
        self._statements: dict[Call, Statement] = {}
        #: Bumped by every reload: a connection's statements of an older schema cache are
        #: deallocated before it prepares this one's (so their number stays bounded).
        self._generation = 0
        #: Statement names, never reused (``next`` on a count is atomic, for the WSGI threads).
        self._names = itertools.count()
        #: Per connection: the generation its prepared statements belong to, and their names.
        self._prepared: weakref.WeakKeyDictionary[Any, tuple[int, set[str]]] = (
            weakref.WeakKeyDictionary()
        )
        #: Statements whose PREPARE failed (the function changed since the schema cache was
        #: read): they run as their text until the next reload, which names them anew, instead
        #: of being PREPAREd again, and failing again, on every request.
        self._unpreparable: set[str] = set()
        self._search_path = ", ".join(
            sql.Identifier(s).as_string()
            for s in dict.fromkeys((*self.schemas, *EXTRA_SEARCH_PATH))
        )

    # lifecycle

    def close(self) -> None:
        self.pool.close()

    async def close_async(self) -> None:
        """Release ``serve``'s pool (on the loop that served); ``close()`` releases the other."""
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None

    def reload(self) -> SchemaCache:
        """Re-read the function signatures (PostgREST's ``NOTIFY pgrst, 'reload schema'``)."""
        with self._cache_lock, self._connection() as conn:
            self._cache = SchemaCache.load(conn, self.schemas)
            self._statements = {}
            self._unpreparable = set()
            self._generation += 1
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

    @asynccontextmanager
    async def _async_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._async_pool or await self._open_async_pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise await asyncio.to_thread(self._acquisition_error) from exc

    async def _open_async_pool(self) -> AsyncConnectionPool:
        async with self._async_pool_lock:  # the first requests may arrive together
            if self._async_pool is None:
                pool = AsyncConnectionPool(
                    self.authenticator_uri,
                    **self._pool_options,
                    open=False,
                    kwargs={"autocommit": True},  # as the sync pool's: one implicit transaction
                    check=_check_if_ended_async,
                    name="rest-gateway-async",
                )
                await pool.open(wait=False)
                self._async_pool = pool
            return self._async_pool

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

    # the request path, shared by WSGI (__call__) and asyncio (serve)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._handle(request)
        except ApiError as exc:
            response = exc.response()
        except Exception:
            response = _unexpected(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        parsed = self.parse(request)
        if isinstance(parsed, Response):
            return parsed
        try:
            planned = self.plan(request, parsed, self.schema_cache())
        except ApiError as exc:
            if exc.code != "PGRST202":
                raise
            # The function may be new since the cache was read: look once more.
            planned = self.plan(request, parsed, self.reload())
        with self._connection() as conn:
            try:
                text, page_total = run_call(
                    conn, self._executable(planned.call, conn), *planned.arguments, **planned.mode
                )
            except psycopg.Error as exc:
                raise postgres_error(exc, planned.identity.role) from None
        return respond(planned, text, page_total)

    async def serve(self, environ: dict[str, Any], body: bytes | None = None) -> Response | Answer:
        """``__call__``'s answer on the running event loop, without a thread per request.

        The call runs on an asyncio connection (psycopg's ``AsyncConnectionPool``): handing
        each request to a worker thread, as a WSGI bridge does, cost the local Supabase server
        about as much CPU as the rest of the request's Python work together. Only the rare
        schema reload (a sync catalogue read) runs in a thread. ``body``: the request's body when
        the server read it already (see ``arguments``). A call's JSON answer comes as an
        ``Answer`` (the bytes a WSGI server would send for ``respond``'s response), the rest
        (errors, 204, the readiness document) as a werkzeug ``Response``.
        """
        request = Request(environ)
        try:
            return await self._serve(request, body)
        except ApiError as exc:
            return exc.response()
        except Exception:
            return _unexpected(request)

    async def _serve(self, request: Request, body: bytes | None) -> Response | Answer:
        parsed = self.parse(request, body)
        if isinstance(parsed, Response):
            return parsed
        try:
            cache = self._cache
            if cache is None:
                cache = await asyncio.to_thread(self.schema_cache)
            planned = self.plan(request, parsed, cache)
        except ApiError as exc:
            if exc.code != "PGRST202":
                raise
            planned = self.plan(request, parsed, await asyncio.to_thread(self.reload))
        async with self._async_connection() as conn:
            try:
                statement = await self._executable_async(planned.call, conn)
                text, page_total = await run_call_async(
                    conn, statement, *planned.arguments, **planned.mode
                )
            except psycopg.Error as exc:
                raise postgres_error(exc, planned.identity.role) from None
        return answer(planned, text, page_total)

    def parse(self, request: Request, body: bytes | None = None) -> Response | Parsed:
        """Everything a request says before the schema cache is read: the route, the API key,
        the identity, the schema and the arguments (or the answer, for the readiness path)."""
        path = request.path.rstrip("/")
        # the headers straight from the environ, as werkzeug's EnvironHeaders reads them
        environ = request.environ
        apikey: str | None = environ.get("HTTP_APIKEY")
        if self.require_api_key:
            # Supabase's API gateway checks the key first, whatever the path and method, the
            # root (PostgREST's OpenAPI document, here the readiness one) included: Kong's
            # rest-v1 service puts key-auth on all of /rest/v1/ (supabase/supabase kong.yml).
            # (the URL's parameters are parsed only when the header is missing)
            self.auth.check_api_key(apikey or request.args.get("apikey"))
        if path == REST_PREFIX and request.method in ("GET", "HEAD"):
            ready = {"service": "rest-gateway", "schemas": list(self.schemas)}
            return Response(json.dumps(ready), 200, content_type=JSON_CONTENT_TYPE)
        prefix = f"{REST_PREFIX}/rpc/"
        if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix[:-1]:
            raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        if request.method not in ("POST", "GET"):
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        identity = self.auth.identify(environ.get("HTTP_AUTHORIZATION"), apikey)
        profile_key = "HTTP_CONTENT_PROFILE" if request.method == "POST" else "HTTP_ACCEPT_PROFILE"
        schema = environ.get(profile_key) or self.schemas[0]
        if schema not in self.schemas:
            raise ApiError(
                406,
                "PGRST106",
                "The schema must be one of the following: " + ", ".join(self.schemas),
            )
        given, body_text = arguments(request, self.max_body_bytes, body)
        return Parsed(identity, schema, path[len(prefix) :], frozenset(given), body_text)

    def plan(self, request: Request, parsed: Parsed, cache: SchemaCache) -> Planned:
        """The function to call and the transaction's settings (PGRST202: not in ``cache``)."""
        call = resolve(cache, parsed.schema, parsed.name, parsed.keys)
        identity = parsed.identity
        routine = call.routine
        request_settings = (
            self._search_path,
            identity.role,
            identity.claims_json,
            request.method,
            request.path.removeprefix(REST_PREFIX),
            request.environ.get(HEADERS_DOCUMENT) or headers_document(request.environ),
            # werkzeug parses the Cookie header into a MultiDict even when there is none
            json.dumps(dict(request.cookies)) if "HTTP_COOKIE" in request.environ else "{}",
        )
        # PostgREST's order (Query.setPgLocals): the role's settings, then the role and the
        # request, then the function's hoisted settings.
        settings = (
            *cache.role_settings.get(identity.role, ()),
            *zip(REQUEST_SETTINGS, request_settings, strict=True),
            *routine.settings,
        )
        return Planned(
            identity,
            call,
            settings,
            parsed.body_text,
            isolation=routine.isolation or cache.role_isolation.get(identity.role),
            read_only=request.method == "GET" or not routine.volatile,
        )

    def _statement(self, call: Call, conn: AdaptContext) -> Statement:
        """The call's ``Statement``, composed once per function and set of argument names."""
        statement = self._statements.get(call)
        if statement is None:
            name = f"pgrst_{next(self._names)}"
            statement = Statement.compose(name, call, self.max_rows, conn)
            self._statements[call] = statement
        return statement

    def _to_prepare(self, call: Call, conn: Any) -> tuple[Statement, set[str], bytes | None]:
        """The statement; the names ``conn`` has prepared; what to send first (None: nothing,
        else the ``PREPARE``, after a ``DEALLOCATE`` of each of ``conn``'s statements of an
        older schema cache; only ours: psycopg may hold prepared statements of its own)."""
        statement = self._statement(call, conn)
        generation, names = self._prepared.get(conn, (self._generation, set()))
        if statement.name in names or statement.name in self._unpreparable:
            return statement, names, None
        first = statement.prepare
        if generation != self._generation:
            stale = b"".join(b'deallocate "' + n.encode() + b'"; ' for n in sorted(names))
            first = stale + first
            names = set()
        self._prepared[conn] = (self._generation, names)
        return statement, names, first

    def _executable(self, call: Call, conn: psycopg.Connection[Any]) -> bytes:
        """What ``run_call`` sends for the call on ``conn``: ``EXECUTE`` of the statement,
        prepared first if ``conn`` has not; its text if ``conn`` cannot prepare it."""
        statement, names, first = self._to_prepare(call, conn)
        if first is not None:
            try:
                conn.execute(first)
            except psycopg.Error as error:
                self._cannot_prepare(statement, conn, error)
                return statement.text  # the call itself reports what is wrong
            names.add(statement.name)
        return self._runnable(statement, names)

    async def _executable_async(self, call: Call, conn: psycopg.AsyncConnection[Any]) -> bytes:
        """``_executable`` on an asyncio connection."""
        statement, names, first = self._to_prepare(call, conn)
        if first is not None:
            try:
                await conn.execute(first)
            except psycopg.Error as error:
                self._cannot_prepare(statement, conn, error)
                return statement.text
            names.add(statement.name)
        return self._runnable(statement, names)

    def _cannot_prepare(self, statement: Statement, conn: Any, error: psycopg.Error) -> None:
        """Remember a statement Postgres refused to prepare for what it names (class 42: a
        function, type or column that is gone or changed, a privilege), which stays so until
        the schema reloads; not a passing failure (a lock or statement timeout, a cancel, a
        connection that broke), after which the next request prepares it again."""
        if not conn.broken and (error.sqlstate or "").startswith("42"):
            self._unpreparable.add(statement.name)

    @staticmethod
    def _runnable(statement: Statement, names: set[str]) -> bytes:
        """``EXECUTE`` where the connection prepared the statement, else its text."""
        return statement.execute if statement.name in names else statement.text


@dataclass(frozen=True)
class Parsed:
    """What ``Gateway.parse`` read from a request to ``/rest/v1/rpc/<name>``."""

    identity: Identity
    schema: str
    name: str
    keys: frozenset[str]  #: the argument names given
    body_text: str  #: the arguments' JSON text, as Postgres reads it


@dataclass(frozen=True)
class Planned:
    """A call ready to run: ``run_call``'s arguments."""

    identity: Identity
    call: Call
    settings: tuple[tuple[str, str], ...]
    body_text: str
    isolation: str | None
    read_only: bool

    @property
    def arguments(self) -> tuple[tuple[tuple[str, str], ...], str]:
        return self.settings, self.body_text

    @property
    def mode(self) -> dict[str, Any]:
        return {"isolation": self.isolation, "read_only": self.read_only}


def respond(planned: Planned, text: str, page_total: int) -> Response:
    headers = {"Content-Range": content_range(page_total)}
    if planned.call.routine.returns is ReturnKind.VOID:
        empty = Response(status=204, headers=headers)
        del empty.headers["Content-Type"]
        return empty
    return Response(text, 200, headers, content_type=JSON_CONTENT_TYPE)


@dataclass(frozen=True)
class Answer:
    """A response as an ASGI server sends it: the status, the headers (lower-case names, as
    ``RestApp`` sends every response's) and the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


_JSON_CONTENT_TYPE = JSON_CONTENT_TYPE.encode()


def answer(planned: Planned, text: str, page_total: int) -> Response | Answer:
    """``respond``'s response, a JSON answer made directly as the bytes a WSGI server sends for
    it (werkzeug's ``Response`` and ``get_wsgi_response``: the headers in that order, the
    UTF-8 body and its length), without building the werkzeug objects on every call."""
    if planned.call.routine.returns is ReturnKind.VOID:
        return respond(planned, text, page_total)
    body = text.encode()
    headers = [
        (b"content-range", content_range(page_total).encode()),
        (b"content-type", _JSON_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
    ]
    return Answer(200, headers, body)


#: The environ key where a server that read the headers already (``RestApp``) leaves their
#: ``headers_document``, so that it is not worked out again from the environ.
HEADERS_DOCUMENT = "infra.gateway.headers_document"


def headers_document(environ: dict[str, Any]) -> str:
    """PostgREST's ``request.headers``: each header under its lower-case name.

    The headers as werkzeug's ``EnvironHeaders`` lists them (``HTTP_*`` but the two that WSGI
    keeps unprefixed, then ``CONTENT_TYPE`` and ``CONTENT_LENGTH`` when set), read from the
    environ at once: through ``EnvironHeaders`` (title-cased, then lowered) it cost as much as
    the rest of ``plan``. Each environ key's header name is worked out once (``_header_name``).
    """
    headers: dict[str, str] = {}
    for key, value in environ.items():
        name = _header_names.get(key)
        if name is None:
            name = _header_name(key)
        if name and (value or key not in _PREFIXLESS):
            headers[name] = value
    return json.dumps(headers)


def _header_name(key: str) -> str:
    """The lower-case header name of an environ key ('' for a key that is not a header's)."""
    if key.startswith("HTTP_"):
        name = "" if key in _UNPREFIXED else key[5:].replace("_", "-").lower()
    elif key in _PREFIXLESS:
        name = key.replace("_", "-").lower()
    else:
        name = ""
    if len(_header_names) < HEADER_NAMES_KEPT:  # a bound: clients choose header names
        _header_names[key] = name
    return name


#: The environ keys of the two headers WSGI keeps without the ``HTTP_`` prefix.
_PREFIXLESS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})
_UNPREFIXED = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})
#: Each environ key seen, with its header's lower-case name ('' for the others); at most
#: ``HEADER_NAMES_KEPT`` of them (later ones are worked out on every request).
_header_names: dict[str, str] = {}
HEADER_NAMES_KEPT = 1024


def _unexpected(request: Request) -> Response:
    log.exception("gateway error on %s %s", request.method, request.path)
    return ApiError(500, "XX000", "Internal gateway error").response()


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


async def _check_if_ended_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """``_check_if_ended`` for the asyncio pool."""
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)
