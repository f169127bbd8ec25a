"""A PostgREST-compatible gateway for ``/rest/v1/rpc/<function>``: the local Supabase data API.

Production code calls ``supabase.rpc(fn, args).execute()``, which posts a JSON object to
``SUPABASE_URL/rest/v1/rpc/fn``. This module serves that endpoint (and nothing else of
PostgREST) against a real Postgres, so the same client code runs unchanged locally:

- the bearer token (``Authorization``, else ``apikey``) is an HS256 JWT checked with the
  project's secret; its ``role`` claim picks the database role, as in PostgREST;
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
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt
import psycopg
from psycopg import conninfo, sql
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

log = logging.getLogger("infra.local.gateway")

DEFAULT_PORT = 54321  # the local Supabase API port
ANON_ROLE = "anon"
DEFAULT_SCHEMAS = ("public",)
# Supabase's PostgREST: db-extra-search-path = public, extensions.
EXTRA_SEARCH_PATH = ("public", "extensions")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REST_PREFIX = "/rest/v1"
# Supabase CLI local keys carry this issuer; PostgREST allows 30 s of clock skew.
JWT_ISSUER = "supabase-demo"
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
SUPABASE_CONFIG = Path(__file__).resolve().parents[1] / "supabase" / "config.toml"


def _configured_max_rows(config: Path = SUPABASE_CONFIG) -> int:
    with config.open("rb") as file:
        return int(tomllib.load(file)["api"]["max_rows"])


#: PostgREST's ``db-max-rows`` as the project configures it (``[api] max_rows``, 1000 as on a
#: hosted Supabase project): at most this many rows of a set are returned.
DEFAULT_MAX_ROWS = _configured_max_rows()
#: Bodies beyond this are refused before they are read (Supabase's API gateway bounds them
#: too; our largest RPC body, a job with its metadata, is tens of KiB).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


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
    if sqlstate == "22023":
        # v13: the role named by the token does not exist (PostgREST issue 3601).
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
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


# PostgREST v13.0.8 src/PostgREST/Error.hs (JwtError): PGRST301 for a token that cannot be
# decoded or verified, PGRST303 for one whose claims are invalid (expired, not yet valid …).
JWT_DECODE_ERROR = "PGRST301"
JWT_CLAIMS_ERROR = "PGRST303"
# src/PostgREST/Auth.hs (parseToken): the skew allowed on exp, nbf and iat.
JWT_ALLOWED_SKEW_SECONDS = 30


def _jwt_error(message: str, code: str = JWT_DECODE_ERROR) -> ApiError:
    description = message.replace('"', "'")
    return ApiError(
        401,
        code,
        message,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


def _seconds(value: float) -> int:
    """Haskell's ``fromMaybe 0 . toBoundedInteger``: a non-integral or out-of-range time is 0."""
    if isinstance(value, float) and not value.is_integer():
        return 0
    seconds = int(value)
    return seconds if -(2**63) <= seconds < 2**63 else 0


def _claims_problem(claims: Mapping[str, Any], now: int) -> str | None:
    """PostgREST v13's verifyClaims (Auth.hs), in its order, with its messages; None if valid."""
    skew = JWT_ALLOWED_SKEW_SECONDS
    checks: tuple[tuple[str, Callable[[int], bool], str], ...] = (
        ("exp", lambda t: now <= t + skew, "JWT expired"),
        ("nbf", lambda t: now >= t - skew, "JWT not yet valid"),
        ("iat", lambda t: now >= t - skew, "JWT issued at future"),
    )
    for claim, valid, message in checks:
        value = claims.get(claim)
        if value is None and claim not in claims:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"The JWT '{claim}' claim must be a number"
        if not valid(_seconds(value)):
            return message
    audience = claims.get("aud")
    # Supabase sets no jwt-aud, so any string or list of strings is accepted.
    if not (
        audience is None
        or isinstance(audience, str)
        or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
    ):
        return "The JWT 'aud' claim must be a string or an array of strings"
    return None


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
    #: PostgREST v13 (src/PostgREST/Plan.hs, callReadPlan) runs STABLE and IMMUTABLE
    #: functions in a READ ONLY transaction on POST too; only VOLATILE ones may write.
    volatile: bool
    #: The function's ``SET default_transaction_isolation`` (PostgREST begins with it).
    isolation: str | None = None
    #: Its ``SET`` of db-hoisted-tx-settings, applied to the whole transaction as PostgREST
    #: does (a function-level statement_timeout could not otherwise bound its own call).
    settings: tuple[tuple[str, str], ...] = ()

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


# PostgREST v13.0.8, src/PostgREST/SchemaCache.hs (funcsSqlQuery): a function's result is
# composite when its type is a composite type, "or if any TABLE, INOUT or OUT arguments
# present" (``proargmodes && '{t,b,o}'``), so a single OUT parameter or a one-column
# ``returns table`` answers an object / array of objects, not a bare value.
_ROUTINES_SQL = """
select n.nspname, p.proname, p.proretset, p.provolatile::text,
       p.prorettype = 'pg_catalog.void'::regtype as returns_void,
       t.typtype = 'c' or coalesce(p.proargmodes::text[] && '{t,b,o}', false) as composite,
       p.pronargdefaults,
       coalesce(p.proargnames, '{}'::text[]),
       coalesce(p.proargmodes::text[], '{}'::text[]),
       array(select format_type(a.oid, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                  with ordinality as a(oid, i)
             order by a.i),
       (select lower(split_part(split_part(c, '=', 2), ',', 1))
        from unnest(p.proconfig) c where c like 'default_transaction_isolation%%' limit 1),
       array(select c from unnest(p.proconfig) c where split_part(c, '=', 1) = any(%s))
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = any(%s) and p.prokind = 'f'
"""

# PostgREST v13.0.8, src/PostgREST/Config/Database.hs (queryRoleSettings): the all-database
# settings (``rolconfig``) of the roles the connecting role (authenticator) is a member of,
# only those a user may set, values lower-cased. Applied per transaction before the role switch.
_ROLE_SETTINGS_SQL = """
with role_setting as (
  select r.rolname, unnest(r.rolconfig) as setting
  from pg_auth_members m
  join pg_roles r on r.oid = m.roleid
  where m.member = current_user::regrole::oid
),
kv_settings as (
  select rolname,
         substr(setting, 1, strpos(setting, '=') - 1) as key,
         lower(substr(setting, strpos(setting, '=') + 1)) as value
  from role_setting
)
select kv.rolname, array_agg(kv.key || '=' || kv.value)
from kv_settings kv
join pg_settings ps on ps.name = kv.key
  and (ps.context = 'user' or has_parameter_privilege(current_user::regrole::oid, ps.name, 'set'))
group by kv.rolname
"""

_IN_MODES = ("i", "b", "v")


def _routine_from_row(row: Sequence[Any]) -> Routine:
    (
        schema,
        name,
        retset,
        volatility,
        returns_void,
        composite,
        n_defaults,
        arg_names,
        arg_modes,
        arg_types,
        isolation,
        hoisted,
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
    if returns_void:
        kind = ReturnKind.VOID
    elif composite:
        kind = ReturnKind.SETOF_COMPOSITE if retset else ReturnKind.COMPOSITE
    else:
        kind = ReturnKind.SETOF_SCALAR if retset else ReturnKind.SCALAR
    settings = tuple((k, v) for k, _, v in (str(item).partition("=") for item in hoisted))
    return Routine(
        schema,
        name,
        params,
        kind,
        volatile=volatility == "v",
        isolation=isolation,
        settings=settings,
    )


@dataclass(frozen=True)
class SchemaCache:
    routines: Mapping[tuple[str, str], tuple[Routine, ...]]
    role_settings: Mapping[str, tuple[tuple[str, str], ...]]
    #: The roles' ``default_transaction_isolation`` (PostgREST's configRoleIsoLvl).
    role_isolation: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], schemas: Sequence[str]) -> SchemaCache:
        with conn.transaction():
            # With only pg_catalog on the path, format_type qualifies every other type.
            conn.execute("set local search_path to pg_catalog")
            rows = conn.execute(
                _ROUTINES_SQL, (list(HOISTED_TX_SETTINGS), list(schemas))
            ).fetchall()
            setting_rows = conn.execute(_ROLE_SETTINGS_SQL).fetchall()
        routines: dict[tuple[str, str], list[Routine]] = {}
        for row in rows:
            routine = _routine_from_row(row)
            routines.setdefault((routine.schema, routine.name), []).append(routine)
        settings: dict[str, dict[str, str]] = {}
        isolation: dict[str, str] = {}
        for role, config in setting_rows:
            for item in config or ():
                key, _, value = item.partition("=")
                if key == "default_transaction_isolation":
                    isolation[role] = value
                else:
                    settings.setdefault(role, {})[key] = value
        return cls(
            {key: tuple(value) for key, value in routines.items()},
            {role: tuple(values.items()) for role, values in settings.items()},
            isolation,
        )


# --- the call ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    routine: Routine
    keys: tuple[str, ...]  #: the argument names given, in the function's order
    whole_body: bool  #: the body is the single json/jsonb argument


def resolve(cache: SchemaCache, schema: str, name: str, keys: frozenset[str]) -> Call:
    """Pick the function PostgREST would call, or raise its PGRST202/PGRST203 error.

    (v13 dropped ``Prefer: params=single-object``, its changelog #3757: a function takes the
    whole body only through a single unnamed json/jsonb parameter.)
    """
    candidates = cache.routines.get((schema, name), ())
    matches = [r for r in candidates if r.matches(keys)]
    fallbacks = [r for r in candidates if not r.matches(keys) and r.single_unnamed_json]
    if len(matches) == 1:
        routine = matches[0]
        whole = False
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
        raise _no_function(cache, schema, name, keys, candidates)
    ordered = tuple(p.name for p in routine.params if p.name in keys)
    return Call(routine, () if whole else ordered, whole)


def _no_function(
    cache: SchemaCache,
    schema: str,
    name: str,
    keys: frozenset[str],
    overloads: Sequence[Routine],
) -> ApiError:
    qualified = f"{schema}.{name}"
    arg_list = ", ".join(sorted(keys))
    if keys:
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


def call_sql(call: Call, max_rows: int | None = None) -> sql.Composed:
    """The statement PostgREST runs for this call; its one column is the JSON body text.

    Arguments come from the body through ``json_to_record`` typed with the parameters'
    declared types, so a JSON array becomes a Postgres array, a string an enum or a uuid,
    and a bad value raises Postgres's own error (``22P02`` …).

    ``max_rows`` is PostgREST's ``db-max-rows`` (Supabase: 1000). As in PostgREST v13
    (``Statements.prepareCall``: ``WITH pgrst_source AS (<call>) … FROM (<read plan with the
    range limited by max-rows>)``, ``Plan.treeRestrictRange``), the function runs to the end
    and changes every row it changes, but only the first ``max_rows`` rows are returned.
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
    limit = (
        sql.SQL(" limit {}").format(sql.Literal(max_rows)) if max_rows is not None else sql.SQL("")
    )
    # Statements.prepareCall's page_total: 1 for a single result, else the rows returned.
    single = routine.returns in (ReturnKind.VOID, ReturnKind.SCALAR, ReturnKind.COMPOSITE)
    page_total = sql.SQL("1" if single else "count(_postgrest_t)")
    return sql.SQL(
        "with pgrst_source as (select pgrst_call.* from {source}{from_call})"
        " select {body}, {page_total}"
        " from (select pgrst_source.* from pgrst_source{limit}) _postgrest_t"
    ).format(
        body=sql.SQL(body),
        page_total=page_total,
        source=source,
        from_call=from_call,
        limit=limit,
    )


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
        schemas: Sequence[str] = DEFAULT_SCHEMAS,
        anonymous_role: str | None = None,
        pool_min: int = 1,
        pool_max: int = 8,
        pool_timeout: float = 10.0,
        max_rows: int | None = DEFAULT_MAX_ROWS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if not jwt_secret:
            raise ValueError("jwt_secret is required")
        self.db_uri = db_uri
        #: As PostgREST, log in as authenticator: its statement and lock timeouts (8 s on
        #: Supabase) hold for every API role, and only its role memberships can be switched to.
        self.authenticator_uri = conninfo.make_conninfo(db_uri, user=AUTHENTICATOR_ROLE)
        self.jwt_secret = jwt_secret
        self.schemas = tuple(schemas)
        #: PostgREST's db-anon-role: the role of a request without a token (None: 401).
        self.anonymous_role = anonymous_role
        #: PostgREST's db-max-rows (None: unlimited).
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.pool = ConnectionPool(
            self.authenticator_uri,
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
        body, body_text = self._arguments(request)
        keys = frozenset(body)
        cache = self.schema_cache()
        try:
            call = resolve(cache, schema, name, keys)
        except ApiError as exc:
            if exc.code != "PGRST202":
                raise
            # The function may be new since the cache was read: look once more.
            call = resolve(self.reload(), schema, name, keys)
        return self._execute(request, identity, cache, call, body_text)

    def authenticate(self, request: Request) -> Identity:
        """Verify the bearer token like PostgREST v13; its ``role`` claim names the role.

        Whether that role may be used is the database's answer, as in PostgREST: switching to
        a role authenticator is not a member of fails with 42501, to one that does not exist
        with 22023 (401).
        """
        bearer = _bearer(request.headers.get("Authorization"))
        if bearer == "":
            raise _jwt_error("Empty JWT is sent in Authorization header")
        # Supabase's API gateway passes the apikey header on when there is no bearer token.
        token = bearer or request.headers.get("apikey", "").strip()
        if not token:
            if self.anonymous_role is None:
                raise ApiError(401, "PGRST302", "Anonymous access is disabled")
            return Identity(self.anonymous_role, {"role": self.anonymous_role})
        claims = self._decode(token)
        role = claims.get("role", self.anonymous_role)
        if role is None:
            raise ApiError(401, "PGRST302", "Anonymous access is disabled")
        # PostgREST takes a non-string claim as its JSON text (Auth.hs, parseClaims: unquoted).
        role_name = role if isinstance(role, str) else json.dumps(role)
        return Identity(role_name, {**claims, "role": role_name})

    def _decode(self, token: str) -> dict[str, Any]:
        """PostgREST v13's parseToken: three parts, a valid signature, then the claims."""
        parts = token.count(".") + 1
        if parts != 3:
            raise _jwt_error(f"Expected 3 parts in JWT; got {parts}")
        try:
            claims = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256", "HS384", "HS512"],
                # The claims are checked below, by PostgREST's rules and messages.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "require": [],
                },
            )
        except jwt.InvalidAlgorithmError:
            raise _jwt_error("Wrong or unsupported encoding algorithm") from None
        except jwt.DecodeError as exc:
            if str(exc).startswith("Invalid payload string"):
                raise _jwt_error("Parsing claims failed", JWT_CLAIMS_ERROR) from None
            raise _jwt_error("JWT cryptographic operation failed") from None
        except jwt.InvalidTokenError:
            raise _jwt_error("JWT cryptographic operation failed") from None
        if not isinstance(claims, dict):
            raise _jwt_error("Parsing claims failed", JWT_CLAIMS_ERROR)
        problem = _claims_problem(claims, int(time.time()))
        if problem:
            raise _jwt_error(problem, JWT_CLAIMS_ERROR)
        return claims

    def _arguments(self, request: Request) -> tuple[dict[str, Any], str]:
        """The parsed arguments, and the JSON text handed to Postgres.

        As PostgREST (``JsonArgs (payRaw …)``), the body's own text goes to Postgres once it
        parsed as strict UTF-8 JSON: numbers keep their digits (``1e999`` included), and
        ``NaN``/``Infinity``, which Python alone would accept, are invalid as for Aeson.
        """
        if request.method == "GET":
            args = request.args.to_dict()
            return args, json.dumps(args)
        raw = self._body(request)
        if not raw.strip():
            return {}, "{}"
        invalid = ApiError(400, "PGRST102", "Empty or invalid json")
        try:
            text = raw.decode("utf-8")
            body = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            # RecursionError: nesting deeper than Python's parser goes. PostgREST drops the
            # parser's message for this generic one (its issue 2344).
            raise invalid from None
        if not isinstance(body, dict):
            raise invalid
        return body, text

    def _body(self, request: Request) -> bytes:
        """The body, refused on its declared length before reading, and read only to the limit."""
        limit = self.max_body_bytes
        too_large = ApiError(
            413,
            "PGRST102",
            "Request body too large",
            details=f"The gateway accepts at most {limit} bytes",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        try:
            while chunk := request.stream.read(min(65536, limit + 1 - received)):
                chunks.append(chunk)
                received += len(chunk)
                if received > limit:
                    raise too_large
        except HTTPException:
            # The client went away mid-body, or sent broken chunked encoding.
            raise ApiError(400, "PGRST102", "Empty or invalid json") from None
        return b"".join(chunks)

    def _execute(
        self, request: Request, identity: Identity, cache: SchemaCache, call: Call, body: str
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
        routine = call.routine
        read_only = request.method == "GET" or not routine.volatile
        isolation = routine.isolation or cache.role_isolation.get(identity.role)
        statement = call_sql(call, self.max_rows)
        with self._connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(_transaction_mode(isolation, read_only=read_only))
                    # PostgREST's order (Query.setPgLocals): role settings, then the role and
                    # the request, then the function's hoisted settings.
                    for key, value in cache.role_settings.get(identity.role, ()):
                        conn.execute("select set_config(%s, %s, true)", (key, value))
                    conn.execute(_SETUP_SQL, setup)
                    for key, value in routine.settings:
                        conn.execute("select set_config(%s, %s, true)", (key, value))
                    row = conn.execute(statement, {"body": body}).fetchone()
            except psycopg.Error as exc:
                raise _postgres_error(exc, identity.role) from None
        text, page_total = row if row else ("null", 0)
        headers = {"Content-Range": _content_range(page_total)}
        if call.routine.returns is ReturnKind.VOID:
            empty = Response(status=204, headers=headers)
            del empty.headers["Content-Type"]
            return empty
        return Response(text, 200, headers, content_type=JSON_CONTENT_TYPE)


_ISOLATION_LEVELS = {
    "read committed": "READ COMMITTED",
    "repeatable read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}


def _transaction_mode(isolation: str | None, *, read_only: bool) -> sql.Composed:
    """PostgREST's transaction: the function's or role's isolation level, READ ONLY or not."""
    level = _ISOLATION_LEVELS.get(isolation or "", "READ COMMITTED")
    access = "READ ONLY" if read_only else "READ WRITE"
    return sql.SQL("set transaction isolation level {} {}").format(sql.SQL(level), sql.SQL(access))


def _content_range(page_total: int) -> str:
    """PostgREST's Content-Range of an RPC answer without a count (RangeQuery.contentRangeH)."""
    return f"0-{page_total - 1}/*" if page_total > 0 else "*/*"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bearer(header: str | None) -> str | None:
    """Wai's extractBearerAuth: the token after ``Bearer`` (maybe empty); None otherwise."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def create_app(
    db_uri: str,
    jwt_secret: str,
    *,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    anonymous_role: str | None = None,
    pool_max: int = 8,
    pool_timeout: float = 10.0,
) -> Gateway:
    """The gateway as a WSGI application (call ``.close()`` to release its pool)."""
    return Gateway(
        db_uri,
        jwt_secret,
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
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    anonymous_role: str | None = None,
    pool_max: int = 8,
    pool_timeout: float = 10.0,
) -> GatewayHandle:
    """Serve the gateway on ``host:port`` (0: a free port) in a background thread."""
    app = create_app(
        db_uri,
        jwt_secret,
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
