"""What the Realtime stand-in asks the database: binding checks at subscribe time, the typed
record of a change, and per subscriber what it may see — the real server's
``realtime.apply_rls`` / ``realtime.subscription_check_filters`` logic, in SQL of our own
session, never in objects of the project's schema.

Per change and subscriber, after commit (REALTIME.md, "How the real server decides"): the
columns the subscriber's role may SELECT (``attnum`` order, ``pg_type.typname``), the filter
cast to the column's type against the new row (the old key for DELETE), and — when the table
has RLS and the change is not a DELETE — ``exists(select 1 from table where pk = …)`` run with
``role`` and ``request.jwt.claims`` set to the subscriber's, so its SELECT policy decides.

Batched per poll, as the real server does: its ``ReplicationPoller`` makes ONE SQL call per poll,
``realtime.list_changes(publication, slot, max_changes, max_record_bytes)``
(lib/extensions/postgres_cdc_rls/replications.ex ``list_changes/5``, l. 87-109, supabase/realtime
833cf36), which decodes the slot and runs ``realtime.apply_rls`` on every change; apply_rls
(priv/repo/tenant_schema/realtime/functions/apply_rls.sql l. 186-237) prepares the RLS query once
per role and runs it per subscriber under that subscriber's ``role`` and ``request.jwt.claims``.
Here a poll costs one statement for the typed records of all its changes and one message per
distinct claims set (``visible_many``) — not ~6 round trips per change and subscriber.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from infra.local.realtime.bindings import IN_OPERATOR, OPERATORS, Binding, BindingError, Filter
from infra.local.realtime.capture import PUBLICATION
from infra.local.realtime.pgoutput import UNCHANGED_TOAST, Change, Relation
from infra.local.realtime.protocol import RawJSON

log = logging.getLogger("infra.local.realtime")

JSONB = "jsonb"
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_KEPT_VALUE_BYTES = 64


@dataclass(frozen=True)
class Visible:
    """What one subscriber receives of a change."""

    binding_ids: list[int]
    columns: list[dict[str, str]]


_COLUMNS_SQL = """
select a.attname, t.typname, format_type(a.atttypid, a.atttypmod), c.relrowsecurity
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_type t on t.oid = a.atttypid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped
  and has_column_privilege(a.attrelid, a.attnum, 'SELECT')
order by a.attnum
"""


#: one subscriber's question about one change: the change, its bindings that fire, its claims
Request = tuple[Change, list[Binding], dict[str, Any]]


class RealtimeDatabase:
    def __init__(self, db_uri: str) -> None:
        # autocommit: a batched check is one simple-protocol message whose statements run as
        # one implicit transaction (PostgreSQL protocol docs, "Multiple Statements in a Simple
        # Query"), so set_config(..., true) holds for exactly that message and no BEGIN/COMMIT
        # round trips are needed
        self.pool = AsyncConnectionPool(
            db_uri, min_size=2, max_size=4, open=False, kwargs={"autocommit": True}
        )
        self._type_cache: dict[Relation, dict[str, str]] = {}
        self._cast_cache: dict[Relation, dict[tuple[str, ...], str]] = {}

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    # --- subscribe ------------------------------------------------------------------------

    async def check_binding(self, binding: Binding) -> None:
        """Raise ``BindingError`` when the binding cannot be subscribed."""
        if binding.event not in ("*", "INSERT", "UPDATE", "DELETE"):
            raise BindingError(f"unknown event {binding.event}")
        async with self.pool.connection() as conn:
            published = await (
                await conn.execute(
                    "select tablename from pg_publication_tables where pubname = %s "
                    "and schemaname = %s and (%s::text is null or tablename = %s)",
                    (PUBLICATION, binding.schema, binding.table, binding.table),
                )
            ).fetchall()
            if not published:
                raise BindingError("table not in the publication")
            if binding.filter is None:
                return
            if binding.table is None:
                raise BindingError("a filter needs a table")
            column_type = await self._column_type(
                conn, binding.schema, binding.table, binding.filter
            )
            try:
                async with conn.transaction():
                    for value in binding.filter.values:
                        await conn.execute(
                            sql.SQL("select cast({} as {})").format(
                                sql.Literal(value), sql.SQL(column_type)
                            )
                        )
            except Exception as exc:
                raise BindingError(f"invalid value for {binding.filter.column}") from exc

    async def _column_type(self, conn: Any, schema: str, table: str, flt: Filter) -> str:
        if flt.operator != IN_OPERATOR and flt.operator not in OPERATORS:
            raise BindingError("unknown operator")
        row = await (
            await conn.execute(
                "select format_type(a.atttypid, a.atttypmod) from pg_attribute a "
                "join pg_class c on c.oid = a.attrelid "
                "join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relname = %s and a.attname = %s "
                "and a.attnum > 0 and not a.attisdropped",
                (schema, table, flt.column),
            )
        ).fetchone()
        if row is None:
            raise BindingError(f"unknown column {flt.column}")
        return str(row[0])

    # --- a change ---------------------------------------------------------------------------

    async def typed_rows(self, change: Change) -> tuple[dict[str, Any], dict[str, Any]]:
        """``record`` and ``old_record`` as ``to_jsonb`` gives them (typed JSON)."""
        types = await self._types(change.relation)
        record = await self._to_jsonb(change.new or {}, types) if change.type != "DELETE" else {}
        if change.type == "INSERT":
            return record, {}
        old_values = change.old
        if old_values is None:  # default replica identity, key unchanged: the key, from new
            keys = [c.name for c in change.relation.columns if c.is_key]
            old_values = {k: (change.new or {}).get(k) for k in keys}
        return record, await self._to_jsonb(old_values, types)

    async def _types(self, relation: Relation) -> dict[str, str]:
        # a Relation message carries the columns' type oids: equal messages, equal types
        cached = self._type_cache.get(relation)
        if cached is None:
            cached = self._type_cache[relation] = await self._load_types(relation)
        return cached

    async def _load_types(self, relation: Relation) -> dict[str, str]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "select format_type(t.oid, t.mod) from unnest(%s::oid[], %s::int[]) "
                    "with ordinality as t(oid, mod, n) order by n",
                    (
                        [c.type_oid for c in relation.columns],
                        [c.type_modifier for c in relation.columns],
                    ),
                )
            ).fetchall()
        return {c.name: str(r[0]) for c, r in zip(relation.columns, rows, strict=True)}

    async def _to_jsonb(self, values: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
        record, cast = _split(values, types)
        if cast is not None:
            async with self.pool.connection() as conn:
                row = await (await conn.execute(sql.SQL("select {}").format(cast))).fetchone()
            record.update(row[0] if row and row[0] else {})
        return dict(sorted(record.items(), key=_jsonb_key_order))

    async def visible_to(
        self, change: Change, bindings: list[Binding], claims: dict[str, Any]
    ) -> Visible | None:
        """What a subscriber with ``claims`` sees of ``change``, or None (nothing)."""
        relation = change.relation
        values = change.old if change.type == "DELETE" else change.new
        values = values or {}
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "select set_config('role', %s, true), "
                        "set_config('request.jwt.claims', %s, true)",
                        (str(claims.get("role", "")), json.dumps(claims)),
                    )
                    rows = await (
                        await conn.execute(_COLUMNS_SQL, (relation.schema, relation.table))
                    ).fetchall()
                    names = {r[0] for r in rows}
                    keys = [c.name for c in relation.columns if c.is_key]
                    if not rows or not keys or not set(keys) <= names:
                        return None
                    types = {r[0]: str(r[2]) for r in rows}
                    ids = [b.id for b in bindings if await _passes(conn, b.filter, values, types)]
                    if not ids:
                        return None
                    if change.type != "DELETE" and rows[0][3]:
                        where = sql.SQL(" and ").join(
                            sql.SQL("{} = cast({} as {})").format(
                                sql.Identifier(k), sql.Literal(values.get(k)), sql.SQL(types[k])
                            )
                            for k in keys
                        )
                        query = sql.SQL("select exists(select 1 from {}.{} where {})").format(
                            sql.Identifier(relation.schema), sql.Identifier(relation.table), where
                        )
                        seen = await (await conn.execute(query)).fetchone()
                        if not seen or not seen[0]:
                            return None
                    columns = [{"name": str(r[0]), "type": str(r[1])} for r in rows]
                    return Visible(ids, columns)
            except Exception:  # no privilege, unknown role, bad claims: the subscriber sees nothing
                return None

    # --- a poll: every change and subscriber at once ---------------------------------------

    async def typed_rows_many(
        self, changes: list[Change]
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``typed_rows`` of every change of a poll, the casts of all in one statement. A row's
        cast is a text kept per relation and set of columns, its values parameters sent with
        PostgreSQL's own ``$n`` placeholders (``AsyncRawCursor``: psycopg does not parse the
        query for ``%s``): composing every value with ``psycopg.sql``, then parsing a query
        that differs at each poll, was most of a poll's CPU here. One parameter per value:
        one ``text[]`` per row, subscripted, cost the server three times as much."""
        parts: list[tuple[dict[str, Any], int | None]] = []  # jsonb values, cast's index
        casts: list[tuple[str, list[Any]]] = []  # (expression template, its values)
        for change in changes:
            types = await self._types(change.relation)
            for values in _raw_rows(change):
                parsed, cast = _partition(values, types)
                parts.append((parsed, len(casts) if cast else None))
                if cast:
                    names = tuple(k for k, _ in cast)
                    casts.append((self._cast_text(change.relation, names), [v for _, v in cast]))
        cast_rows: list[Any] = []
        if casts:
            async with self.pool.connection() as conn:
                cursor = psycopg.AsyncRawCursor(conn)
                for exprs, params in _statements(casts):  # few, usually one
                    await cursor.execute("select " + ", ".join(exprs), params, prepare=False)
                    cast_rows.extend(await cursor.fetchone() or ())
        rows = []
        for parsed, index in parts:
            if index is not None:
                parsed.update(cast_rows[index] or {})
            rows.append(dict(sorted(parsed.items(), key=_jsonb_key_order)))
        return [(rows[2 * i], rows[2 * i + 1]) for i in range(len(changes))]

    def _cast_text(self, relation: Relation, names: tuple[str, ...]) -> str:
        """``(select to_jsonb(r) from (select cast($N as type) as "column", …) r)`` with
        ``{0}``, ``{1}``, … for the parameters' numbers (``str.format``)."""
        by_names = self._cast_cache.setdefault(relation, {})
        text = by_names.get(names)
        if text is None:
            types = self._type_cache[relation]
            # a brace of a type or an identifier would read as a format field: doubled
            select = ", ".join(
                f"cast(${{{j}}} as {_braced(types[k])}) as {_braced(sql.Identifier(k).as_string())}"
                for j, k in enumerate(names)
            )
            text = by_names[names] = f"(select to_jsonb(r) from (select {select}) r)"
        return text

    async def visible_many(self, requests: list[Request]) -> list[Visible | None]:
        """``visible_to`` of every request of a poll: one message per distinct claims set."""
        results: list[Visible | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, (_, _, claims) in enumerate(requests):
            groups.setdefault(json.dumps(claims, sort_keys=True), []).append(index)
        for indexes in groups.values():
            answers = await self._visible_group([requests[i] for i in indexes])
            for index, answer in zip(indexes, answers, strict=True):
                results[index] = answer
        return results

    async def _visible_group(self, group: list[Request]) -> list[Visible | None]:
        claims = group[0][2]
        try:
            return await self._check_group(group, claims, None)
        except Exception as exc:  # e.g. a role without SELECT on a table: RLS query refused
            log.info("batched check fell back to readable columns first: %s", exc)
        try:  # ask first which relations' keys the role may read, then check only those
            readable = await self._readable_columns(group, claims)
            return await self._check_group(group, claims, readable)
        except Exception as exc:  # unknown role, bad claims, a policy refused: one by one
            log.info("batched check fell back to one change at a time: %s", exc)
            return [await self.visible_to(c, bindings, claims) for c, bindings, _ in group]

    async def _readable_columns(
        self, group: list[Request], claims: dict[str, Any]
    ) -> dict[tuple[str, str], set[str]]:
        relations = _relations(group)
        exprs = [_columns_expr(schema, table) for schema, table in relations]
        async with self.pool.connection() as conn:
            values = await _all_values(
                await conn.execute(_as_subscriber(claims, exprs), prepare=False),
                skip_first=True,
            )
        return {
            rel: {str(c[0]) for c in info["columns"]}
            for rel, info in zip(relations, values, strict=True)
        }

    async def _check_group(
        self,
        group: list[Request],
        claims: dict[str, Any],
        readable: dict[tuple[str, str], set[str]] | None,
    ) -> list[Visible | None]:
        """One message: the columns the role may read per relation, every filter and every
        RLS ``exists`` of the group, under the subscriber's role and claims. ``readable``:
        the RLS query only where the role may read the key (else the message is refused)."""
        relations = _relations(group)
        exprs: list[sql.Composable] = [_columns_expr(s, t) for s, t in relations]
        plans: list[_Plan] = []
        for change, bindings, _ in group:
            types = await self._types(change.relation)
            values = (change.old if change.type == "DELETE" else change.new) or {}
            plan = _Plan(change, [])
            for binding in bindings:
                if binding.filter is None:
                    plan.filters.append((binding, None))
                    continue
                expr = _filter_expr(binding.filter, values, types)
                plan.filters.append((binding, len(exprs) if expr is not None else _FAILS))
                if expr is not None:
                    exprs.append(expr)
            keys = change.relation.key_names()
            rel = (change.relation.schema, change.relation.table)
            if (
                change.type != "DELETE"
                and keys
                and (readable is None or set(keys) <= readable.get(rel, set()))
            ):
                plan.exists = len(exprs)
                exprs.append(_exists_expr(change, keys, values, types))
            plans.append(plan)
        async with self.pool.connection() as conn:
            answers = await _all_values(
                await conn.execute(_as_subscriber(claims, exprs), prepare=False),
                skip_first=True,
            )
        by_relation = dict(zip(relations, answers, strict=False))
        return [plan.decide(by_relation, answers) for plan in plans]


def _jsonb_key_order(item: tuple[str, Any]) -> tuple[int, bytes]:
    """jsonb keeps an object's keys shorter first, then bytewise (as to_jsonb(r) returns)."""
    key = item[0].encode()
    return len(key), key


#: a filter that cannot pass (its column missing, NULL or an unchanged TOAST value)
_FAILS = -1
#: select-list entries per statement (PostgreSQL allows 1664 target entries)
_CHUNK = 500
#: parameters per statement (the protocol counts them in 16 bits)
_MAX_PARAMS = 65535


@dataclass
class _Plan:
    """Where a request's answers sit in a group's results."""

    change: Change
    filters: list[tuple[Binding, int | None]]  # None: no filter; _FAILS; else the answer's index
    exists: int | None = None

    def decide(self, by_relation: dict[tuple[str, str], Any], answers: list[Any]) -> Visible | None:
        """As ``visible_to`` decides: readable key, a matching binding, RLS lets it see."""
        relation = self.change.relation
        info = by_relation[(relation.schema, relation.table)]
        names = {str(c[0]) for c in info["columns"]}
        keys = relation.key_names()
        if not names or not keys or not set(keys) <= names:
            return None
        ids = [
            binding.id
            for binding, index in self.filters
            if index is None
            or (
                index != _FAILS
                and binding.filter is not None
                and binding.filter.column in names
                and bool(answers[index])
            )
        ]
        if not ids:
            return None
        hidden = self.exists is None or not answers[self.exists]
        if self.change.type != "DELETE" and info["rls"] and hidden:
            return None
        columns = [{"name": str(c[0]), "type": str(c[1])} for c in info["columns"]]
        return Visible(ids, columns)


def _raw_rows(change: Change) -> tuple[dict[str, Any], dict[str, Any]]:
    """The new and old values ``typed_rows`` types ({} where the event has none)."""
    record = (change.new or {}) if change.type != "DELETE" else {}
    if change.type == "INSERT":
        return record, {}
    old_values = change.old
    if old_values is None:  # default replica identity, key unchanged: the key, from new
        old_values = {k: (change.new or {}).get(k) for k in change.relation.key_names()}
    return record, old_values


def _statements(casts: list[tuple[str, list[Any]]]) -> list[tuple[list[str], list[Any]]]:
    """The casts numbered and cut into statements within PostgreSQL's limits: ``_CHUNK``
    select-list entries and ``_MAX_PARAMS`` parameters each."""
    statements: list[tuple[list[str], list[Any]]] = []
    exprs: list[str] = []
    params: list[Any] = []
    for text, row_values in casts:
        if exprs and (len(exprs) == _CHUNK or len(params) + len(row_values) > _MAX_PARAMS):
            statements.append((exprs, params))
            exprs, params = [], []
        first = len(params) + 1
        exprs.append(text.format(*range(first, first + len(row_values))))
        params.extend(row_values)
    statements.append((exprs, params))
    return statements


def _braced(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _partition(
    values: dict[str, Any], types: dict[str, str]
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """jsonb values as their JSON text (as ``_split``); the rest, to cast, in column order."""
    parsed: dict[str, Any] = {}
    cast: list[tuple[str, Any]] = []
    for k, v in values.items():
        if v is UNCHANGED_TOAST:
            continue
        if types[k] == JSONB:
            parsed[k] = None if v is None else RawJSON(str(v))
        else:
            cast.append((k, v))
    return parsed, cast


def _split(
    values: dict[str, Any], types: dict[str, str]
) -> tuple[dict[str, Any], sql.Composable | None]:
    """jsonb values as their JSON text; the rest as one ``(select to_jsonb(r) …)`` expression."""
    present = [(k, v) for k, v in values.items() if v is not UNCHANGED_TOAST]
    # A jsonb value's text is the JSON to_jsonb gives for it (keys already in jsonb's
    # order): kept as that text and written into the frame as it is (protocol.RawJSON), a
    # job's result (tens of kB) is neither sent to the database and back nor parsed and
    # encoded again for every change of its row.
    parsed: dict[str, Any] = {
        k: None if v is None else RawJSON(str(v)) for k, v in present if types[k] == JSONB
    }
    cast = [(k, v) for k, v in present if types[k] != JSONB]
    if not cast:
        return parsed, None
    select = sql.SQL(", ").join(
        sql.SQL("cast({} as {}) as {}").format(sql.Literal(v), sql.SQL(types[k]), sql.Identifier(k))
        for k, v in cast
    )
    return parsed, sql.SQL("(select to_jsonb(r) from (select {}) r)").format(select)


def _relations(group: list[Request]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((c.relation.schema, c.relation.table) for c, _, _ in group))


def _columns_expr(schema: str, table: str) -> sql.Composable:
    """The role's readable columns (``[name, typname]`` in attnum order) and RLS, as JSON."""
    return sql.SQL(
        "(select json_build_object("
        "'rls', coalesce(bool_or(c.relrowsecurity), false), "
        "'columns', coalesce(json_agg(json_build_array(a.attname, t.typname) "
        "order by a.attnum) filter (where a.attnum is not null), '[]'::json)) "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 "
        "and not a.attisdropped and has_column_privilege(a.attrelid, a.attnum, 'SELECT') "
        "left join pg_type t on t.oid = a.atttypid "
        "where n.nspname = {} and c.relname = {})"
    ).format(sql.Literal(schema), sql.Literal(table))


def _exists_expr(
    change: Change, keys: list[str], values: dict[str, Any], types: dict[str, str]
) -> sql.Composable:
    where = sql.SQL(" and ").join(
        sql.SQL("{} = cast({} as {})").format(
            sql.Identifier(k), sql.Literal(values.get(k)), sql.SQL(types[k])
        )
        for k in keys
    )
    return sql.SQL("exists(select 1 from {}.{} where {})").format(
        sql.Identifier(change.relation.schema), sql.Identifier(change.relation.table), where
    )


def _selects(exprs: list[sql.Composable]) -> sql.Composed:
    """``select e1, e2, …;`` in chunks: one simple-protocol message, one result each."""
    return sql.SQL("; ").join(
        sql.SQL("select {}").format(sql.SQL(", ").join(exprs[i : i + _CHUNK]))
        for i in range(0, len(exprs), _CHUNK)
    )


def _as_subscriber(claims: dict[str, Any], exprs: list[sql.Composable]) -> sql.Composed:
    """One message (no parameters: the simple protocol, one implicit transaction) that sets
    the subscriber's role and claims for itself only, then asks every question."""
    return sql.SQL(
        "select set_config('role', {}, true), set_config('request.jwt.claims', {}, true); {}"
    ).format(
        sql.Literal(str(claims.get("role", ""))), sql.Literal(json.dumps(claims)), _selects(exprs)
    )


async def _all_values(cursor: Any, *, skip_first: bool = False) -> list[Any]:
    """Every value of every single-row result of a message (``skip_first``: the set_config
    result of ``_as_subscriber``)."""
    values: list[Any] = []
    skip = skip_first
    while True:
        if cursor.description is not None and not skip:
            row = await cursor.fetchone()
            values.extend(row or ())
        skip = False
        if not cursor.nextset():
            return values


def _filter_expr(
    flt: Filter, values: dict[str, Any], types: dict[str, str]
) -> sql.Composable | None:
    """The filter cast to the column's type against ``values`` (``realtime.check_equality_op``
    compares typed values, never their text); None when it cannot pass."""
    value = values.get(flt.column)
    if flt.column not in types or value is None or value is UNCHANGED_TOAST:
        return None
    column_type = sql.SQL(types[flt.column])
    left = sql.SQL("cast({} as {})").format(sql.Literal(value), column_type)
    if flt.operator == IN_OPERATOR:
        items = sql.SQL(", ").join(
            sql.SQL("cast({} as {})").format(sql.Literal(v), column_type) for v in flt.values
        )
        expr = sql.SQL("{} = any(array[{}])").format(left, items)
    else:
        expr = sql.SQL("{} {} cast({} as {})").format(
            left, sql.SQL(OPERATORS[flt.operator]), sql.Literal(flt.values[0]), column_type
        )
    return sql.SQL("coalesce({}, false)").format(expr)


async def _passes(
    conn: Any, flt: Filter | None, values: dict[str, Any], types: dict[str, str]
) -> bool:
    if flt is None:
        return True
    expr = _filter_expr(flt, values, types)
    if expr is None:
        return False
    row = await (await conn.execute(sql.SQL("select {}").format(expr))).fetchone()
    return bool(row and row[0])


def limit_payload(
    record: dict[str, Any], old: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str] | None]:
    """Over 1 MiB (``json.dumps`` of the rows, values parsed): keep only values of at most 64
    bytes and say so in ``errors``. Rows whose size bound is under the limit are not parsed."""
    if _size_bound(record) + _size_bound(old) <= MAX_PAYLOAD_BYTES:
        return record, old, None
    parsed_record, parsed_old = _parsed(record), _parsed(old)
    size = len(json.dumps(parsed_record)) + len(json.dumps(parsed_old))
    if size <= MAX_PAYLOAD_BYTES:
        return record, old, None

    def small(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if len(json.dumps(v)) <= MAX_KEPT_VALUE_BYTES}

    return small(parsed_record), small(parsed_old), ["Error 413: Payload Too Large"]


def _size_bound(row: dict[str, Any]) -> int:
    """At least ``len(json.dumps(row))`` with its RawJSON values parsed. json.dumps writes
    jsonb's text in at most 3 characters per UTF-8 byte: whitespace, strings and escapes as
    jsonb prints them (", " and ": " separators), a non-ASCII character (2 to 4 bytes) as a
    6- or 12-character escape, a number in at most as many characters as jsonb's digits but
    for a float of 17 or more integer digits with a fraction (at most 22 for 19 or more)."""
    raw = [v.text for v in row.values() if isinstance(v, RawJSON)]
    if not raw:
        return len(json.dumps(row))
    plain = {k: None if isinstance(v, RawJSON) else v for k, v in row.items()}
    # each RawJSON was written as "null" (4 characters) in ``plain``
    return len(json.dumps(plain)) - 4 * len(raw) + sum(3 * len(t.encode()) for t in raw)


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v.text) if isinstance(v, RawJSON) else v for k, v in row.items()}
