"""RPC execution: which function a call names, and the one transaction that runs it.

``resolve`` applies PostgREST's overload rule (by name and the set of argument names);
``call_sql`` builds the statement PostgREST v13 runs (arguments through ``json_to_record``
with the declared types, the response JSON built by Postgres, sets cut at ``db-max-rows``);
``run_call`` runs it in PostgREST's transaction: the isolation level and access mode, the
role's settings, the role and the request's GUCs, the function's hoisted settings, the call.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import generators, pq, sql
from psycopg.abc import AdaptContext
from psycopg.pq.abc import PGresult

from infra.local.gateway.errors import ApiError
from infra.local.gateway.schema import ReturnKind, Routine, SchemaCache


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


# A single result (a function that returns one value or one row: always one row here) is the
# text PostgREST's ``coalesce((json_agg(x)->0)::text, 'null')`` gives (Statements.hs,
# asJsonSingleF), written, where it can be, without building the one-element array and parsing
# it again for its element: ``json_agg`` writes each element with ``datum_to_json``, as
# ``to_json`` and ``row_to_json`` do, and ``->0`` answers the element's text as written but for
# the JSON whitespace around it, which only a json value (or a domain's) can carry: those keep
# PostgREST's expression (trimming a large text in SQL cost more than the parse: btrim builds
# per-character arrays in a multibyte encoding). get_job: 0.13 -> 0.11 ms of Postgres's CPU.
# tests/gateway/test_gateway.py compares the two on every shape and type.
POSTGREST_SINGLE_SCALAR = "coalesce((json_agg(_postgrest_t.pgrst_scalar)->0)::text, 'null')"
SINGLE_SCALAR = "coalesce(to_json(_postgrest_t.pgrst_scalar)::text, 'null')"
SINGLE_COMPOSITE = "coalesce(row_to_json(_postgrest_t)::text, 'null')"

#: Where ``call_sql`` reads the body: ``call_query`` quotes it in there.
BODY_MARK = b"%(body)s"
BODY = sql.SQL(BODY_MARK.decode())


def call_sql(
    call: Call, max_rows: int | None = None, *, body: sql.Composable = BODY
) -> sql.Composed:
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
        args: sql.Composable = sql.SQL("{}::{}").format(body, sql.SQL(routine.params[0].type_sql))
    elif call.keys:
        params = [p for p in routine.params if p.name in call.keys]
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type_sql)) for p in params
        )
        source = sql.SQL("json_to_record({}::json) as pgrst_body({}), ").format(body, columns)
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
    answer = {
        # Referencing the value keeps the planner from dropping a non-volatile void call.
        ReturnKind.VOID: "count(_postgrest_t.pgrst_scalar)::text",
        ReturnKind.SCALAR: (
            POSTGREST_SINGLE_SCALAR if routine.returns_json_text else SINGLE_SCALAR
        ),
        ReturnKind.SETOF_SCALAR: "coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')::text",
        ReturnKind.COMPOSITE: SINGLE_COMPOSITE,
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
        body=sql.SQL(answer),
        page_total=page_total,
        source=source,
        from_call=from_call,
        limit=limit,
    )


@dataclass(frozen=True)
class Statement:
    """A call's statement, run as a prepared statement of the connection where it can be.

    PostgREST prepares its statements (``db-prepared-statements``, on by default); here the
    call still travels inside ``call_query``'s one multi-statement query, as ``EXECUTE name(…)``
    of a statement ``PREPARE``d once per connection: Postgres then parses, analyses and plans
    the call's statement once per connection instead of on every request (that work was most
    of the gateway's own CPU in Postgres: 0.17 ms of a get_job's 0.2). The same statement runs
    in the same transaction, with the same settings and timeouts; ``text`` (the statement
    itself) is the fallback when a connection cannot prepare it.
    """

    name: str
    prepare: bytes  #: ``PREPARE name (text) AS <the statement with the body as $1>``
    execute: bytes  #: ``EXECUTE name(%(body)s)``
    text: bytes  #: the statement with the body bound in the query (``call_sql``)

    @classmethod
    def compose(
        cls, name: str, call: Call, max_rows: int | None, context: AdaptContext
    ) -> Statement:
        takes_body = bool(call.whole_body or call.keys)
        prepared = call_sql(call, max_rows, body=sql.SQL("$1"))
        header = sql.SQL("prepare {} (text) as " if takes_body else "prepare {} as ")
        execute = sql.SQL("execute {}(%(body)s)" if takes_body else "execute {}")
        return cls(
            name,
            (header.format(sql.Identifier(name)) + prepared).as_bytes(context),
            execute.format(sql.Identifier(name)).as_bytes(context),
            call_sql(call, max_rows).as_bytes(context),
        )


#: The request's settings, in PostgREST's order (Query.setPgLocals) after the role's own.
REQUEST_SETTINGS = (
    "search_path",
    "role",
    "request.jwt.claims",
    "request.method",
    "request.path",
    "request.headers",
    "request.cookies",
)

_ISOLATION_LEVELS = {
    "read committed": b"READ COMMITTED",
    "repeatable read": b"REPEATABLE READ",
    "serializable": b"SERIALIZABLE",
}


def _transaction_mode(isolation: str | None, *, read_only: bool) -> bytes:
    """PostgREST's transaction: the function's or role's isolation level, READ ONLY or not."""
    level = _ISOLATION_LEVELS.get(isolation or "", b"READ COMMITTED")
    access = b"READ ONLY" if read_only else b"READ WRITE"
    return b"set transaction isolation level " + level + b" " + access


@functools.lru_cache(maxsize=256)
def _setup_parts(names: tuple[str, ...]) -> tuple[bytes, ...]:
    """One ``select`` of transaction-local ``set_config`` calls of the settings ``names``, in
    order, cut where each value goes: the value of ``names[i]`` goes between part ``i`` and
    part ``i + 1``.

    The names are written into the statement (quoted literals) once per list of names: the
    names are a handful of lists (the request's settings after each role's and before each
    function's).
    """
    parts = [b"select "]
    for index, name in enumerate(names):
        head = b"set_config(" + sql.Literal(name).as_bytes() + b", "
        parts[-1] += head if index == 0 else b", true), " + head
        parts.append(b"")
    parts[-1] = b", true)"
    return tuple(parts)


#: SQL literals of the setting values that repeat from call to call (the search path, the
#: role, the method, the path, a role's or a function's settings, a token's claims, an empty
#: cookie document): quoted once rather than on every call. Values longer than
#: ``KEPT_LITERAL_CHARS`` (the headers' document, a large token's claims) are quoted each time;
#: the memory is emptied when it holds ``LITERALS_KEPT`` (a bound, as the verified tokens').
_literals: dict[tuple[str, str], bytes] = {}
KEPT_LITERAL_CHARS = 256
LITERALS_KEPT = 4096


def _literal(escaping: pq.abc.Escaping, encoding: str, value: str) -> bytes:
    """``value`` as an SQL string literal: libpq's PQescapeLiteral of its encoded text, as
    psycopg's ClientCursor quotes a str (``Dumper.quote``)."""
    if "\x00" in value:  # as psycopg's str dumper: Postgres's text cannot hold it
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return escaping.escape_literal(value.encode(encoding))


def _setting_literal(escaping: pq.abc.Escaping, encoding: str, value: str) -> bytes:
    key = (encoding, value)  # the connection's encoding: the literal's bytes depend on it
    known = _literals.get(key)
    if known is None:
        known = _literal(escaping, encoding, value)
        if len(value) <= KEPT_LITERAL_CHARS:
            if len(_literals) >= LITERALS_KEPT:
                _literals.clear()
            _literals[key] = known
    return known


def content_range(page_total: int) -> str:
    """PostgREST's Content-Range of an RPC answer without a count (RangeQuery.contentRangeH)."""
    return f"0-{page_total - 1}/*" if page_total > 0 else "*/*"


def call_query(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    statement: bytes,
    settings: Sequence[tuple[str, str]],
    body: str,
    *,
    isolation: str | None,
    read_only: bool,
) -> bytes:
    """The call's whole transaction as one multi-statement query, its values quoted in.

    PostgREST sends its transaction as separate statements (BEGIN, the isolation level and
    access mode, one ``select set_config(...)`` of every setting in order, the call, COMMIT).
    Here they travel as one multi-statement query on an autocommit connection: Postgres runs
    such a query as one implicit transaction block (``SET TRANSACTION`` applies to it, the
    ``set_config(..., true)`` values last until its end, an error rolls all of it back) and
    starts each statement's ``statement_timeout`` afresh with the values set before it, so the
    call sees what it saw before, for one round trip instead of six (the connection must be in
    autocommit mode). ``statement`` is ``call_sql``'s bytes (the body where ``%(body)s`` is);
    ``settings`` the role's settings, the request's, then the function's hoisted ones.

    A multi-statement query cannot take server-side parameters: its values are quoted into it
    as psycopg's ClientCursor would quote them, but here, so that the values that repeat from
    call to call are quoted once (``_setting_literal``) and the query is not parsed again for
    its placeholders on every call.
    """
    escaping = pq.Escaping(conn.pgconn)
    encoding = conn.info.encoding
    parts = _setup_parts(tuple(name for name, _ in settings))
    query = [_transaction_mode(isolation, read_only=read_only), b"; ", parts[0]]
    for (_, value), part in zip(settings, parts[1:], strict=True):
        query += (_setting_literal(escaping, encoding, value), part)
    head, marked, tail = statement.partition(BODY_MARK)
    query += (b"; ", head)
    if marked:
        query += (_literal(escaping, encoding, body), tail)
    return b"".join(query)


def _answer(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], results: Sequence[PGresult]
) -> tuple[str, int]:
    """The call's JSON text and page total from the query's results (one per statement; an
    error ends the query, so a failed statement's result is the last), or its error raised as
    psycopg raises it from a cursor (``error_from_result``: the same class, SQLSTATE and
    diagnostics, which ``postgres_error`` reads)."""
    last = results[-1]
    if last.status == pq.ExecStatus.FATAL_ERROR:
        raise psycopg.errors.error_from_result(last, encoding=conn.info.encoding)
    if last.status != pq.ExecStatus.TUPLES_OK or not last.ntuples:
        return "null", 0
    text, total = last.get_value(0, 0), last.get_value(0, 1)
    return (text or b"null").decode(conn.info.encoding), int(total or 0)


# The query goes out through libpq directly (``PGconn.send_query``, psycopg's own generator to
# flush it and gather its results) rather than through a cursor: a cursor builds a row loader
# for each of the query's three results (the transaction mode's, the settings', the call's) and
# adapts rows the gateway never reads; the call's two text columns are read as they are. Same
# protocol message, same results, ~0.02 ms less of the gateway's CPU per call (in-process).


def run_call(
    conn: psycopg.Connection[Any],
    statement: bytes,
    settings: Sequence[tuple[str, str]],
    body: str,
    *,
    isolation: str | None,
    read_only: bool,
) -> tuple[str, int]:
    """The call's JSON text and its page total, in PostgREST's transaction, in one round trip
    (``call_query``)."""
    query = call_query(conn, statement, settings, body, isolation=isolation, read_only=read_only)
    with conn.lock:  # as a cursor holds it: one query at a time on the connection
        conn.pgconn.send_query(query)
        results = conn.wait(generators.execute(conn.pgconn))
    return _answer(conn, results)


async def run_call_async(
    conn: psycopg.AsyncConnection[Any],
    statement: bytes,
    settings: Sequence[tuple[str, str]],
    body: str,
    *,
    isolation: str | None,
    read_only: bool,
) -> tuple[str, int]:
    """``run_call`` on an asyncio connection: the same query, the same answer."""
    query = call_query(conn, statement, settings, body, isolation=isolation, read_only=read_only)
    async with conn.lock:
        conn.pgconn.send_query(query)
        results = await conn.wait(generators.execute(conn.pgconn))
    return _answer(conn, results)
