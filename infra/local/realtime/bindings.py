"""A channel's ``postgres_changes`` bindings and their filters (REALTIME.md, "Filters").

A binding is what the client sent — echoed back verbatim with an ``id`` — plus its parsed
filter ``column=op.value``, split at the first ``=`` and the first ``.``, as the real server
does (``Realtime.PostgresCdc...`` parses filters the same way).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
IN_OPERATOR = "in"
MAX_IN_VALUES = 100
EVENTS = ("*", "INSERT", "UPDATE", "DELETE")


class BindingError(ValueError):
    """A binding the server cannot subscribe (answered with a ``system`` error)."""


@dataclass(frozen=True)
class Filter:
    column: str
    operator: str  # a key of OPERATORS, or "in"
    values: tuple[str, ...]


@dataclass(frozen=True)
class Binding:
    id: int
    raw: dict[str, Any]  # exactly what the client sent
    event: str
    schema: str
    table: str | None  # None: every table of the schema in the publication
    filter: Filter | None

    def echo(self) -> dict[str, Any]:
        return {**self.raw, "id": self.id}

    def fires_on(self, schema: str, table: str, change_type: str) -> bool:
        return (
            self.schema == schema
            and self.table in (None, table)
            and self.event in ("*", change_type)
        )

    def describe(self) -> str:
        """As the real server words it (realtime_channel_test.exs): ``[event: *, schema: public,
        table: t, filters: [{"col", "eq", "v"}], select: nil]``."""
        if self.filter is None:
            filters = "[]"
        else:
            quoted = ", ".join(
                f'"{part}"'
                for part in (self.filter.column, self.filter.operator, *self.filter.values)
            )
            filters = f"[{{{quoted}}}]"
        return (
            f"[event: {self.event}, schema: {self.schema}, table: {self.table or '*'}, "
            f"filters: {filters}, select: nil]"
        )


def new_binding_id(taken: set[int]) -> int:
    """A distinct non-zero positive integer, the size of the real server's phash2 ids."""
    while True:
        candidate = secrets.randbelow(2**27 - 1) + 1
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def parse_binding(raw: Any, taken: set[int]) -> Binding:
    """Parse one binding; a malformed one still gets an id (the join stays ok) and is
    reported by ``BindingError`` when it is subscribed."""
    spec = raw if isinstance(raw, dict) else {}
    table = spec.get("table")
    raw_filter = spec.get("filter")
    return Binding(
        id=new_binding_id(taken),
        raw=dict(spec),
        event=str(spec.get("event", "*")).upper(),
        schema=str(spec.get("schema") or "public"),
        table=None if table in (None, "*") else str(table),
        filter=_safe_filter(raw_filter),
    )


def _safe_filter(raw: Any) -> Filter | None:
    if raw is None or raw == "":
        return None
    try:
        return parse_filter(str(raw))
    except BindingError:
        # keep the bad text so subscribe() reports it; an impossible operator marks it
        return Filter(column="", operator="invalid", values=(str(raw),))


def parse_filter(text: str) -> Filter:
    column, sep, rest = text.partition("=")
    operator, dot, value = rest.partition(".")
    if not sep or not dot or not column:
        raise BindingError(f"malformed filter {text!r}")
    if operator == IN_OPERATOR:
        if not (value.startswith("(") and value.endswith(")")):
            raise BindingError(f"malformed in filter {text!r}")
        values = tuple(v.strip().strip('"') for v in value[1:-1].split(",") if v.strip())
        if not values or len(values) > MAX_IN_VALUES:
            raise BindingError(f"an in filter takes 1 to {MAX_IN_VALUES} values")
        return Filter(column, operator, values)
    if operator not in OPERATORS:
        raise BindingError(f"unknown operator {operator!r}")
    return Filter(column, operator, (value,))
