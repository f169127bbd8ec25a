"""What the Realtime stand-in asks the database: binding checks at subscribe time, the typed
record of a change, and per subscriber what it may see — the real server's
``realtime.apply_rls`` / ``realtime.subscription_check_filters`` logic, in SQL of our own
session, never in objects of the project's schema.

Per change and subscriber, after commit (REALTIME.md, "How the real server decides"): the
columns the subscriber's role may SELECT (``attnum`` order, ``pg_type.typname``), the filter
cast to the column's type against the new row (the old key for DELETE), and — when the table
has RLS and the change is not a DELETE — ``exists(select 1 from table where pk = …)`` run with
``role`` and ``request.jwt.claims`` set to the subscriber's, so its SELECT policy decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from infra.local.realtime.bindings import IN_OPERATOR, OPERATORS, Binding, BindingError, Filter
from infra.local.realtime.capture import PUBLICATION
from infra.local.realtime.pgoutput import UNCHANGED_TOAST, Change, Relation

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


class RealtimeDatabase:
    def __init__(self, db_uri: str) -> None:
        self.pool = AsyncConnectionPool(db_uri, min_size=2, max_size=4, open=False)
        self._type_cache: dict[Relation, dict[str, str]] = {}

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
        present = [(k, v) for k, v in values.items() if v is not UNCHANGED_TOAST]
        # A jsonb value's text is the JSON to_jsonb gives for it (keys already in jsonb's
        # order): parsed here, a job's result (tens of kB) is not sent to the database and
        # back for every change of its row.
        record = {k: _json(v) for k, v in present if types[k] == JSONB}
        cast = [(k, v) for k, v in present if types[k] != JSONB]
        if cast:
            select = sql.SQL(", ").join(
                sql.SQL("cast({} as {}) as {}").format(
                    sql.Literal(v), sql.SQL(types[k]), sql.Identifier(k)
                )
                for k, v in cast
            )
            query = sql.SQL("select to_jsonb(r) from (select {}) r").format(select)
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query)).fetchone()
            record.update(row[0] if row else {})
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


def _json(text: Any) -> Any:
    return None if text is None else json.loads(text)


def _jsonb_key_order(item: tuple[str, Any]) -> tuple[int, bytes]:
    """jsonb keeps an object's keys shorter first, then bytewise (as to_jsonb(r) returns)."""
    key = item[0].encode()
    return len(key), key


async def _passes(
    conn: Any, flt: Filter | None, values: dict[str, Any], types: dict[str, str]
) -> bool:
    if flt is None:
        return True
    value = values.get(flt.column)
    if flt.column not in types or value is None or value is UNCHANGED_TOAST:
        return False
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
    row = await (await conn.execute(sql.SQL("select coalesce({}, false)").format(expr))).fetchone()
    return bool(row and row[0])


def limit_payload(
    record: dict[str, Any], old: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str] | None]:
    """Over 1 MiB: keep only values of at most 64 bytes and say so in ``errors``."""
    size = len(json.dumps(record)) + len(json.dumps(old))
    if size <= MAX_PAYLOAD_BYTES:
        return record, old, None

    def small(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if len(json.dumps(v)) <= MAX_KEPT_VALUE_BYTES}

    return small(record), small(old), ["Error 413: Payload Too Large"]
