"""A PostgREST-compatible gateway for ``/rest/v1/rpc/<function>``: the local Supabase data API.

Production code calls ``supabase.rpc(fn, args).execute()``, which posts a JSON object to
``SUPABASE_URL/rest/v1/rpc/fn``. This module serves that endpoint (and nothing else of
PostgREST) against a real Postgres, so the same client code runs unchanged locally:

- the bearer token (``Authorization``, else ``apikey``) is an HS256 JWT checked with the
  project's secret; its ``role`` claim picks the database role, as in PostgREST;
- every call is one transaction that sets ``role``, ``request.jwt.claims``,
  ``request.method``, ``request.path`` and ``request.headers`` like PostgREST v12 does;
- functions are found by name and by the set of argument names (PostgREST's overload rule),
  and the arguments are converted by ``json_to_record`` with the declared types, as
  PostgREST does, so casts and error messages are Postgres's own;
- Postgres builds the response JSON with the same expressions PostgREST uses, so the bytes on
  the wire (timestamps, numbers, nested JSON) are what PostgREST would send;
- errors carry PostgREST's JSON body and its SQLSTATE → HTTP status table.

``make_jwt`` mints keys like the Supabase CLI's local anon / service_role keys and user tokens.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import jwt
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

log = logging.getLogger("infra.local.gateway")

DEFAULT_PORT = 54321  # the local Supabase API port
DEFAULT_ROLES = ("anon", "authenticated", "service_role")
ANON_ROLE = "anon"
DEFAULT_SCHEMAS = ("public",)
# Supabase's PostgREST: db-extra-search-path = public, extensions.
EXTRA_SEARCH_PATH = ("public", "extensions")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REST_PREFIX = "/rest/v1"
# Supabase CLI local keys carry this issuer; PostgREST allows 30 s of clock skew.
JWT_ISSUER = "supabase-demo"
JWT_LEEWAY_SECONDS = 30
DEFAULT_KEY_LIFETIME = timedelta(days=3650)


# --- keys -------------------------------------------------------------------------------------


def make_jwt(
    secret: str,
    role: str,
    *,
    expires_in: timedelta = DEFAULT_KEY_LIFETIME,
    **claims: Any,
) -> str:
    """Mint an HS256 token like the Supabase CLI's: anon/service_role keys, or user tokens.

    ``make_jwt(secret, "anon")`` is an anon key; ``make_jwt(secret, "authenticated",
    sub=user_id)`` a signed-in user's access token. ``claims`` override the defaults
    (pass ``exp=`` in the past for an expired token).
    """
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": JWT_ISSUER,
        "role": role,
        "iat": now,
        "exp": now + int(expires_in.total_seconds()),
    }
    if role == "authenticated":
        payload["aud"] = "authenticated"
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


# --- errors -----------------------------------------------------------------------------------


@dataclass
class ApiError(Exception):
    """An error response in PostgREST's shape: ``{code, details, hint, message}``."""

    status: int
    code: str
    message: str
    details: Any = None
    hint: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        body = {
            "code": self.code,
            "details": self.details,
            "hint": self.hint,
            "message": self.message,
        }
        headers = {"Proxy-Status": f"PostgREST; error={self.code}", **self.headers}
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return Response(json.dumps(body), self.status, headers, content_type=JSON_CONTENT_TYPE)


# SQLSTATE → HTTP status, as PostgREST v12's pgErrorStatus. Exact codes first, then classes.
_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "57P01": 503,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_CLASS_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def sqlstate_status(sqlstate: str, message: str, *, role: str) -> int:
    """The HTTP status PostgREST answers for a Postgres error."""
    if sqlstate == "42501":
        # No privilege: an anonymous caller should authenticate (401), others are refused.
        return 401 if role == ANON_ROLE else 403
    if sqlstate == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if sqlstate.startswith("PT"):
        digits = sqlstate[2:]
        return int(digits) if digits.isdigit() and 100 <= int(digits) <= 599 else 500
    status = _EXACT_STATUS.get(sqlstate) or _CLASS_STATUS.get(sqlstate[:2])
    return status or 400


def _postgres_error(exc: psycopg.Error, role: str) -> ApiError:
    diag = exc.diag
    sqlstate = exc.sqlstate or ""
    message = diag.message_primary or str(exc)
    if not sqlstate:
        # The connection broke during the call.
        return ApiError(
            503, "PGRST001", "Database client error. Retrying the connection.", details=str(exc)
        )
    if sqlstate == "PGRST":
        return _custom_error(message, diag.message_detail)
    status = sqlstate_status(sqlstate, message, role=role)
    return ApiError(status, sqlstate, message, diag.message_detail, diag.message_hint)


def _custom_error(message: str, detail: str | None) -> ApiError:
    """``raise sqlstate 'PGRST' using message = '{json body}', detail = '{status, headers}'``."""
    try:
        body = json.loads(message)
        extra = json.loads(detail or "{}")
        return ApiError(
            int(extra.get("status", 400)),
            str(body.get("code", "")),
            str(body.get("message", "")),
            body.get("details"),
            body.get("hint"),
            {str(k): str(v) for k, v in dict(extra.get("headers") or {}).items()},
        )
    except (ValueError, TypeError, AttributeError):
        return ApiError(
            500,
            "PGRST121",
            "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error",
            details=message,
            hint=None,
        )


def _jwt_error(message: str) -> ApiError:
    description = message.replace('"', "'")
    return ApiError(
        401,
        "PGRST301",
        message,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


# --- schema cache -----------------------------------------------------------------------------


class ReturnKind(enum.Enum):
    """How a function's result becomes the response body."""

    VOID = "void"  #: 204 No Content
    SCALAR = "scalar"  #: the value as JSON (``5``, ``"x"``, ``null``, a json document)
    SETOF_SCALAR = "setof_scalar"  #: a JSON array of values
    COMPOSITE = "composite"  #: one JSON object
    SETOF_COMPOSITE = "setof_composite"  #: a JSON array of objects


JSON_TYPES = ("json", "jsonb")


@dataclass(frozen=True)
class Param:
    name: str
    type_sql: str  #: schema-qualified where needed, e.g. ``public.job_status[]``
    required: bool
    variadic: bool


@dataclass(frozen=True)
class Routine:
    schema: str
    name: str
    params: tuple[Param, ...]
    returns: ReturnKind
    volatile: bool

    def matches(self, keys: frozenset[str]) -> bool:
        """PostgREST's rule: every required argument given, every given key an argument."""
        names = {p.name for p in self.params}
        required = {p.name for p in self.params if p.required}
        return required <= keys <= names

    @property
    def single_unnamed_json(self) -> bool:
        return len(self.params) == 1 and not self.params[0].name and self.takes_one_json

    @property
    def takes_one_json(self) -> bool:
        return len(self.params) == 1 and self.params[0].type_sql in JSON_TYPES

    def signature(self) -> str:
        args = ", ".join(f"{p.name} => {p.type_sql}" for p in self.params)
        return f"{self.schema}.{self.name}({args})"


_ROUTINES_SQL = """
select n.nspname, p.proname, p.proretset, p.provolatile::text,
       p.prorettype = 'pg_catalog.void'::regtype as returns_void,
       t.typtype::text, t.typrelid <> 0 as returns_relation,
       p.pronargdefaults,
       coalesce(p.proargnames, '{}'::text[]),
       coalesce(p.proargmodes::text[], '{}'::text[]),
       array(select format_type(a.oid, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                  with ordinality as a(oid, i)
             order by a.i)
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = any(%s) and p.prokind = 'f'
"""

_ROLE_SETTINGS_SQL = """
select r.rolname, s.setconfig
from pg_db_role_setting s
join pg_roles r on r.oid = s.setrole
left join pg_database d on d.oid = s.setdatabase
where s.setdatabase = 0 or d.datname = current_database()
order by s.setdatabase
"""

_IN_MODES = ("i", "b", "v")
_OUT_MODES = ("o", "b", "t")


def _routine_from_row(row: Sequence[Any]) -> Routine:
    (
        schema,
        name,
        retset,
        volatility,
        returns_void,
        typtype,
        returns_relation,
        n_defaults,
        arg_names,
        arg_modes,
        arg_types,
    ) = row
    modes = list(arg_modes) or ["i"] * len(arg_types)
    names = list(arg_names) + [""] * (len(arg_types) - len(arg_names))
    inputs = [
        (names[i] or "", arg_types[i], modes[i])
        for i in range(len(arg_types))
        if modes[i] in _IN_MODES
    ]
    first_optional = len(inputs) - n_defaults
    params = tuple(
        Param(arg_name, arg_type, required=i < first_optional, variadic=mode == "v")
        for i, (arg_name, arg_type, mode) in enumerate(inputs)
    )
    has_out = any(m in _OUT_MODES for m in modes)
    composite = returns_relation or (typtype == "p" and has_out)
    if returns_void:
        kind = ReturnKind.VOID
    elif composite:
        kind = ReturnKind.SETOF_COMPOSITE if retset else ReturnKind.COMPOSITE
    else:
        kind = ReturnKind.SETOF_SCALAR if retset else ReturnKind.SCALAR
    return Routine(schema, name, params, kind, volatile=volatility == "v")


@dataclass(frozen=True)
class SchemaCache:
    routines: Mapping[tuple[str, str], tuple[Routine, ...]]
    role_settings: Mapping[str, tuple[tuple[str, str], ...]]

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], schemas: Sequence[str]) -> SchemaCache:
        with conn.transaction():
            # With only pg_catalog on the path, format_type qualifies every other type.
            conn.execute("set local search_path to pg_catalog")
            rows = conn.execute(_ROUTINES_SQL, (list(schemas),)).fetchall()
            setting_rows = conn.execute(_ROLE_SETTINGS_SQL).fetchall()
        routines: dict[tuple[str, str], list[Routine]] = {}
        for row in rows:
            routine = _routine_from_row(row)
            routines.setdefault((routine.schema, routine.name), []).append(routine)
        settings: dict[str, dict[str, str]] = {}
        for role, config in setting_rows:
            # Database-specific settings come last and win over the all-database ones.
            for item in config or ():
                key, _, value = item.partition("=")
                settings.setdefault(role, {})[key] = value
        return cls(
            {key: tuple(value) for key, value in routines.items()},
            {role: tuple(values.items()) for role, values in settings.items()},
        )


# --- the call ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    routine: Routine
    keys: tuple[str, ...]  #: the argument names given, in the function's order
    whole_body: bool  #: the body is the single json/jsonb argument


def resolve(
    cache: SchemaCache, schema: str, name: str, keys: frozenset[str], *, single_object: bool
) -> Call:
    """Pick the function PostgREST v12 would call, or raise its PGRST202/PGRST203 error."""
    candidates = cache.routines.get((schema, name), ())
    if single_object:
        matches = [r for r in candidates if r.takes_one_json]
        fallbacks: list[Routine] = []
    else:
        matches = [r for r in candidates if r.matches(keys)]
        fallbacks = [r for r in candidates if not r.matches(keys) and r.single_unnamed_json]
    if len(matches) == 1:
        routine = matches[0]
        whole = single_object
    elif not matches and len(fallbacks) == 1:
        routine = fallbacks[0]
        whole = True
    elif matches or fallbacks:
        raise ApiError(
            300,
            "PGRST203",
            "Could not choose the best candidate function between: "
            + ", ".join(r.signature() for r in matches or fallbacks),
            hint="Try renaming the parameters or the function itself in the database so "
            "function overloading can be resolved",
        )
    else:
        raise _no_function(cache, schema, name, keys, candidates, single_object=single_object)
    ordered = tuple(p.name for p in routine.params if p.name in keys)
    return Call(routine, () if whole else ordered, whole)


def _no_function(
    cache: SchemaCache,
    schema: str,
    name: str,
    keys: frozenset[str],
    overloads: Sequence[Routine],
    *,
    single_object: bool,
) -> ApiError:
    qualified = f"{schema}.{name}"
    arg_list = ", ".join(sorted(keys))
    if single_object:
        message = f"Could not find the function {qualified} in the schema cache"
        searched = " with a single json/jsonb parameter"
    elif keys:
        message = f"Could not find the function {qualified}({arg_list}) in the schema cache"
        searched = f" with parameters {arg_list} or with a single unnamed json/jsonb parameter"
    else:
        message = f"Could not find the function {qualified} without parameters in the schema cache"
        searched = " without parameters or with a single unnamed json/jsonb parameter"
    hint = None
    if overloads:
        signatures = {f"({', '.join(p.name for p in r.params)})": r for r in overloads}
        close = difflib.get_close_matches(f"({arg_list})", list(signatures), n=1, cutoff=0.3)
        if close:
            hint = f"Perhaps you meant to call the function {qualified}{close[0]}"
    else:
        names = [n for (s, n) in cache.routines if s == schema]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            hint = f"Perhaps you meant to call the function {schema}.{close[0]}"
    details = (
        f"Searched for the function {qualified}{searched}, "
        "but no matches were found in the schema cache."
    )
    return ApiError(404, "PGRST202", message, details, hint)


def call_sql(call: Call) -> sql.Composed:
    """The statement PostgREST v12 runs for this call; its one column is the JSON body text.

    Arguments come from the body through ``json_to_record`` typed with the parameters'
    declared types, so a JSON array becomes a Postgres array, a string an enum or a uuid,
    and a bad value raises Postgres's own error (``22P02`` …).
    """
    routine = call.routine
    function = sql.SQL("{}.{}").format(sql.Identifier(routine.schema), sql.Identifier(routine.name))
    source: sql.Composable = sql.SQL("")
    if call.whole_body:
        args: sql.Composable = sql.SQL("%(body)s::{}").format(sql.SQL(routine.params[0].type_sql))
    elif call.keys:
        params = [p for p in routine.params if p.name in call.keys]
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type_sql)) for p in params
        )
        source = sql.SQL("json_to_record(%(body)s::json) as pgrst_body({}), ").format(columns)
        args = sql.SQL(", ").join(
            sql.SQL("{}{} := pgrst_body.{}").format(
                sql.SQL("variadic " if p.variadic else ""),
                sql.Identifier(p.name),
                sql.Identifier(p.name),
            )
            for p in params
        )
    else:
        args = sql.SQL("")
    invocation = sql.SQL("{}({})").format(function, args)
    if routine.returns in (ReturnKind.COMPOSITE, ReturnKind.SETOF_COMPOSITE):
        from_call = sql.SQL("lateral {} pgrst_call").format(invocation)
    else:
        from_call = sql.SQL("lateral (select {} as pgrst_scalar) pgrst_call").format(invocation)
    body = {
        # Referencing the value keeps the planner from dropping a non-volatile void call.
        ReturnKind.VOID: "count(_postgrest_t.pgrst_scalar)::text",
        ReturnKind.SCALAR: "coalesce((json_agg(_postgrest_t.pgrst_scalar)->0)::text, 'null')",
        ReturnKind.SETOF_SCALAR: "coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')::text",
        ReturnKind.COMPOSITE: "coalesce((json_agg(_postgrest_t)->0)::text, 'null')",
        ReturnKind.SETOF_COMPOSITE: "coalesce(json_agg(_postgrest_t), '[]')::text",
    }[routine.returns]
    return sql.SQL(
        "select {body} from (select pgrst_call.* from {source}{from_call}) _postgrest_t"
    ).format(body=sql.SQL(body), source=source, from_call=from_call)


_SETUP_SQL = sql.SQL(
    "select set_config('search_path', %(search_path)s, true),"
    " set_config('role', %(role)s, true),"
    " set_config('request.jwt.claims', %(claims)s, true),"
    " set_config('request.method', %(method)s, true),"
    " set_config('request.path', %(path)s, true),"
    " set_config('request.headers', %(headers)s, true),"
    " set_config('request.cookies', %(cookies)s, true)"
)


@dataclass(frozen=True)
class Identity:
    role: str
    claims: Mapping[str, Any]


# --- the WSGI application ---------------------------------------------------------------------


class Gateway:
    """The WSGI application. ``close()`` releases its connection pool."""

    def __init__(
        self,
        db_uri: str,
        jwt_secret: str,
        *,
        allowed_roles: Iterable[str] = DEFAULT_ROLES,
        schemas: Sequence[str] = DEFAULT_SCHEMAS,
        anonymous_role: str | None = None,
        pool_min: int = 1,
        pool_max: int = 8,
        pool_timeout: float = 10.0,
    ) -> None:
        if not jwt_secret:
            raise ValueError("jwt_secret is required")
        self.db_uri = db_uri
        self.jwt_secret = jwt_secret
        self.allowed_roles = frozenset(allowed_roles)
        self.schemas = tuple(schemas)
        #: PostgREST's db-anon-role: the role of a request without a token (None: 401).
        self.anonymous_role = anonymous_role
        self.pool = ConnectionPool(
            db_uri,
            min_size=pool_min,
            max_size=pool_max,
            timeout=pool_timeout,
            open=False,
            check=ConnectionPool.check_connection,
            name="rest-gateway",
        )
        self.pool.open(wait=False)
        self._cache: SchemaCache | None = None
        self._cache_lock = threading.Lock()

    # lifecycle

    def close(self) -> None:
        self.pool.close()

    def reload(self) -> SchemaCache:
        """Re-read the function signatures (PostgREST's ``NOTIFY pgrst, 'reload schema'``)."""
        with self._cache_lock, self._connection() as conn:
            self._cache = SchemaCache.load(conn, self.schemas)
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
            with psycopg.connect(self.db_uri, connect_timeout=2):
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
        prefix = f"{REST_PREFIX}/rpc/"
        if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix[:-1]:
            raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        if request.method not in ("POST", "GET"):
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        return self.rpc(request, path[len(prefix) :])

    def rpc(self, request: Request, name: str) -> Response:
        identity = self.authenticate(request)
        profile_header = "Content-Profile" if request.method == "POST" else "Accept-Profile"
        schema = request.headers.get(profile_header) or self.schemas[0]
        if schema not in self.schemas:
            raise ApiError(
                406,
                "PGRST106",
                "The schema must be one of the following: " + ", ".join(self.schemas),
            )
        prefer = request.headers.get("Prefer", "")
        single_object = "params=single-object" in prefer
        body = self._arguments(request, single_object=single_object)
        keys = frozenset(body) if isinstance(body, dict) and not single_object else frozenset()
        cache = self.schema_cache()
        try:
            call = resolve(cache, schema, name, keys, single_object=single_object)
        except ApiError as exc:
            if exc.code != "PGRST202":
                raise
            # The function may be new since the cache was read: look once more.
            call = resolve(self.reload(), schema, name, keys, single_object=single_object)
        return self._execute(request, identity, cache, call, body)

    def authenticate(self, request: Request) -> Identity:
        """Verify the bearer token like PostgREST; ``role`` claim → database role."""
        token = (
            _bearer(request.headers.get("Authorization"))
            or request.headers.get("apikey", "").strip()
        )
        if not token:
            if self.anonymous_role is None:
                raise ApiError(401, "PGRST302", "Anonymous access is disabled")
            return Identity(self.anonymous_role, {"role": self.anonymous_role})
        claims = self._decode(token)
        role = claims.get("role", self.anonymous_role)
        if role is None:
            raise ApiError(401, "PGRST302", "Anonymous access is disabled")
        if not isinstance(role, str) or role not in self.allowed_roles:
            raise ApiError(401, "42501", f'permission denied to set role "{role}"')
        return Identity(role, claims)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256", "HS384", "HS512"],
                leeway=JWT_LEEWAY_SECONDS,
                options={"verify_aud": False, "require": []},
            )
        except jwt.ExpiredSignatureError:
            raise _jwt_error("JWT expired") from None
        except jwt.InvalidSignatureError:
            raise _jwt_error("JWSError JWSInvalidSignature") from None
        except jwt.DecodeError as exc:
            raise _jwt_error(f"JWSError (CompactDecodeError {exc})") from None
        except jwt.InvalidTokenError as exc:
            raise _jwt_error(f"JWT claims validation failed: {exc}") from None
        if not isinstance(claims, dict):
            raise _jwt_error("JWT claims must be a JSON object")
        return claims

    @staticmethod
    def _arguments(request: Request, *, single_object: bool) -> Any:
        if request.method == "GET":
            return request.args.to_dict()
        raw = request.get_data(cache=False)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "PGRST102", "Empty or invalid json") from None
        if not single_object and not isinstance(body, dict):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        return body

    def _execute(
        self, request: Request, identity: Identity, cache: SchemaCache, call: Call, body: Any
    ) -> Response:
        setup = {
            "search_path": ", ".join(
                sql.Identifier(s).as_string()
                for s in dict.fromkeys((*self.schemas, *EXTRA_SEARCH_PATH))
            ),
            "role": identity.role,
            "claims": json.dumps(identity.claims),
            "method": request.method,
            "path": request.path.removeprefix(REST_PREFIX),
            "headers": json.dumps({k.lower(): v for k, v in request.headers.items()}),
            "cookies": json.dumps(dict(request.cookies)),
        }
        read_only = request.method == "GET"
        statement = call_sql(call)
        with self._connection() as conn:
            try:
                with conn.transaction():
                    if read_only:
                        conn.execute("set transaction read only")
                    for key, value in cache.role_settings.get(identity.role, ()):
                        conn.execute("select set_config(%s, %s, true)", (key, value))
                    conn.execute(_SETUP_SQL, setup)
                    row = conn.execute(statement, {"body": json.dumps(body)}).fetchone()
            except psycopg.Error as exc:
                raise _postgres_error(exc, identity.role) from None
        if call.routine.returns is ReturnKind.VOID:
            empty = Response(status=204)
            del empty.headers["Content-Type"]
            return empty
        text = row[0] if row else "null"
        return Response(text, 200, content_type=JSON_CONTENT_TYPE)


def _bearer(header: str | None) -> str:
    if not header:
        return ""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def create_app(
    db_uri: str,
    jwt_secret: str,
    *,
    allowed_roles: Iterable[str] = DEFAULT_ROLES,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    anonymous_role: str | None = None,
    pool_max: int = 8,
    pool_timeout: float = 10.0,
) -> Gateway:
    """The gateway as a WSGI application (call ``.close()`` to release its pool)."""
    return Gateway(
        db_uri,
        jwt_secret,
        allowed_roles=allowed_roles,
        schemas=schemas,
        anonymous_role=anonymous_role,
        pool_max=pool_max,
        pool_timeout=pool_timeout,
    )


# --- serving ----------------------------------------------------------------------------------


class _RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging one line per request at debug level only."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


class _Server(ThreadedWSGIServer):
    """Remembers open client connections so ``stop()`` can end idle keep-alive ones."""

    def __init__(self, host: str, port: int, app: Gateway) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(host, port, app, handler=_RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            live = list(self._open)
        for conn in live:
            with suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)


class GatewayHandle:
    """A gateway serving on a background thread; ``stop()`` (or ``with``) shuts it down."""

    def __init__(self, app: Gateway, host: str, port: int) -> None:
        self.app = app
        self._server = _Server(host, port, app)
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"rest-gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_open_connections()
        self._thread.join()  # serve_forever closes the socket and joins the handlers
        self.app.close()

    def wait(self) -> None:
        """Block until the server stops (the CLI's foreground loop)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_gateway(
    db_uri: str,
    jwt_secret: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allowed_roles: Iterable[str] = DEFAULT_ROLES,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    anonymous_role: str | None = None,
    pool_max: int = 8,
    pool_timeout: float = 10.0,
) -> GatewayHandle:
    """Serve the gateway on ``host:port`` (0: a free port) in a background thread."""
    app = create_app(
        db_uri,
        jwt_secret,
        allowed_roles=allowed_roles,
        schemas=schemas,
        anonymous_role=anonymous_role,
        pool_max=pool_max,
        pool_timeout=pool_timeout,
    )
    try:
        return GatewayHandle(app, host, port)
    except BaseException:
        app.close()
        raise


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.gateway",
        description="PostgREST-compatible /rest/v1/rpc gateway for the local stack.",
    )
    parser.add_argument("--db-uri", required=True, help="admin (owner) URI of the database")
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret of the API keys")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--debug", action="store_true", help="log one line per request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    handle = start_gateway(args.db_uri, args.jwt_secret, args.host, args.port)
    log.info("serving %s%s/rpc", handle.url, REST_PREFIX)
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()


if __name__ == "__main__":
    main()
