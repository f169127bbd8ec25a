"""Decode the ``pgoutput`` logical replication protocol, version 1 (PostgreSQL docs,
"Logical Replication Message Formats"), as returned row by row by
``pg_logical_slot_get_binary_changes(slot, NULL, NULL, 'proto_version', '1',
'publication_names', 'supabase_realtime')``.

Only what Realtime needs: Begin, Relation, Insert, Update, Delete, Commit. Column values
stay in their text form; the server casts them back with the column's declared type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Literal

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

#: a value whose TOASTed content did not change and so was not sent
UNCHANGED_TOAST = object()

ChangeType = Literal["INSERT", "UPDATE", "DELETE"]


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str  # d default, f full, i index, n nothing
    columns: tuple[Column, ...]

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        # kept: a relation keys the stand-in's caches at every change, and the generated
        # hash walked every column each time
        return hash((self.oid, self.schema, self.table, self.replica_identity, self.columns))

    def key_names(self) -> list[str]:
        return [c.name for c in self.columns if c.is_key]


@dataclass
class Change:
    """One row change; ``new``/``old`` map column name to text (None for NULL)."""

    type: ChangeType
    relation: Relation
    new: dict[str, object] | None
    old: dict[str, object] | None


@dataclass
class Transaction:
    xid: int
    commit_time: datetime | None = None
    changes: list[Change] = field(default_factory=list)


class Decoder:
    """Stateful across calls: Relation messages describe the tables the changes refer to."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._current: Transaction | None = None

    def feed(self, message: bytes) -> Transaction | None:
        """Consume one message; returns the transaction when its Commit arrives."""
        kind, body = chr(message[0]), memoryview(message)[1:]
        if kind == "B":
            (_lsn, _ts, xid) = struct.unpack_from("!QqI", body)
            self._current = Transaction(xid)
        elif kind == "C":
            (_flags, _lsn, _end, ts) = struct.unpack_from("!BQQq", body)
            done, self._current = self._current, None
            if done is not None:
                done.commit_time = PG_EPOCH + timedelta(microseconds=ts)
            return done
        elif kind == "R":
            relation = _relation(body)
            self.relations[relation.oid] = relation
        elif kind in "IUD" and self._current is not None:
            self._current.changes.append(self._change(kind, body))
        return None

    def _change(self, kind: str, body: memoryview) -> Change:
        (oid,) = struct.unpack_from("!I", body)
        relation = self.relations[oid]
        pos = 4
        old: dict[str, object] | None = None
        new: dict[str, object] | None = None
        while pos < len(body):
            marker = chr(body[pos])
            values, pos = _tuple(body, pos + 1)
            named = {c.name: v for c, v in zip(relation.columns, values, strict=True)}
            if marker == "N":
                new = named
            elif marker == "K":  # the key columns only (default replica identity)
                old = {c.name: named[c.name] for c in relation.columns if c.is_key}
            else:  # 'O': the whole old row (replica identity full)
                old = named
        change_type: ChangeType = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[kind]  # type: ignore[assignment]
        return Change(change_type, relation, new, old)


def _string(body: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(body[pos:]).index(b"\0") + pos
    return bytes(body[pos:end]).decode(), end + 1


def _relation(body: memoryview) -> Relation:
    (oid,) = struct.unpack_from("!I", body)
    schema, pos = _string(body, 4)
    table, pos = _string(body, pos)
    identity = chr(body[pos])
    (count,) = struct.unpack_from("!H", body, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = body[pos]
        name, pos = _string(body, pos + 1)
        type_oid, modifier = struct.unpack_from("!Ii", body, pos)
        pos += 8
        columns.append(Column(name, type_oid, modifier, bool(flags & 1)))
    return Relation(oid, schema, table, identity, tuple(columns))


def _tuple(body: memoryview, pos: int) -> tuple[list[object], int]:
    (count,) = struct.unpack_from("!H", body, pos)
    pos += 2
    values: list[object] = []
    for _ in range(count):
        kind = chr(body[pos])
        pos += 1
        if kind == "n":
            values.append(None)
        elif kind == "u":
            values.append(UNCHANGED_TOAST)
        else:  # 't' text (or 'b' binary, which we never ask for)
            (length,) = struct.unpack_from("!I", body, pos)
            values.append(str(body[pos + 4 : pos + 4 + length], "utf-8"))
            pos += 4 + length
    return values, pos
