"""Change capture by logical decoding, the way Supabase Realtime reads the database.

The real server polls a temporary ``wal2json`` slot every ~100 ms; plain PostgreSQL has no
wal2json, so this polls a temporary slot with the built-in ``pgoutput`` plugin over the SQL
interface (``pg_logical_slot_get_binary_changes``) limited to the ``supabase_realtime``
publication. Same source, same guarantees: only committed transactions, whole, in commit
order, with their commit time; nothing is added to the project's schema.

Needs ``wal_level = logical`` (the embedded server is configured so by
``infra.local.postgres``); anything else fails at start with a message saying so.

Each call of ``pg_logical_slot_get_binary_changes`` decodes the WAL again from the slot's
``restart_lsn``, not from ``confirmed_flush_lsn`` (what it returns starts there): restart_lsn
moves only to a running-transactions record the decoding has passed (PostgreSQL docs,
"Logical Decoding Concepts"; ``LogicalIncreaseRestartDecodingForSlot`` in logical.c), and the
server logs one only every 15 s of activity (``LOG_SNAPSHOT_INTERVAL_MS`` in bgwriter.c). Polled
ten times a second while changes flow, the stand-in re-read up to 15 s of WAL per poll, and its
cost per poll rose and fell with that lag (1.5 -> 3.5 ms of the poll's backend with a job's
writes every 20 ms). So after a poll that returned changes, at most once a second, it logs
that record itself (``pg_log_standby_snapshot()``, PostgreSQL 16+, superuser or a grant), and
restart_lsn trails by about a second of WAL. Without the function or the right to run it,
polling goes on as before.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import psycopg

from infra.local.realtime.pgoutput import Decoder, Transaction

PUBLICATION = "supabase_realtime"
#: the least time between two running-transactions records the poll logs itself
SNAPSHOT_INTERVAL_S = 1.0

log = logging.getLogger("infra.local.realtime")


class LogicalDecodingUnavailable(RuntimeError):
    """The server is not configured for logical decoding."""


class ChangeCapture:
    """A temporary logical slot on its own connection; ``poll()`` drains what committed."""

    def __init__(self, db_uri: str) -> None:
        self.db_uri = db_uri
        self.slot = f"realtime_local_{secrets.token_hex(6)}"
        self.decoder = Decoder()
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        #: when the poll last logged a running-transactions record; None: it may not
        self._snapshot_at: float | None = 0.0

    async def open(self) -> None:
        conn: psycopg.AsyncConnection[tuple[Any, ...]] = await psycopg.AsyncConnection.connect(
            self.db_uri, autocommit=True
        )
        row = await (await conn.execute("show wal_level")).fetchone()
        if row is None or row[0] != "logical":
            await conn.close()
            raise LogicalDecodingUnavailable(
                f"Realtime needs wal_level = logical; this server has {row and row[0]!r}. "
                "The embedded server is configured by infra.local.postgres; for DATABASE_URL "
                "set it in postgresql.conf and restart."
            )
        # temporary: dropped with this session, so a killed stand-in leaves no slot behind
        await conn.execute(
            "select pg_create_logical_replication_slot(%s, 'pgoutput', true)", (self.slot,)
        )
        self._conn = conn

    async def poll(self) -> list[Transaction]:
        """Every transaction committed since the last poll, in commit order."""
        assert self._conn is not None, "open() first"
        cursor = await self._conn.execute(
            "select data from pg_logical_slot_get_binary_changes("
            "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)",
            (self.slot, PUBLICATION),
            # bytea in binary: the server does not write each message (a job's result is
            # tens of kB) as hex text, nor this process read it back
            binary=True,
        )
        rows = await cursor.fetchall()
        done: list[Transaction] = []
        for (data,) in rows:
            transaction = self.decoder.feed(bytes(data))
            if transaction is not None and transaction.changes:
                done.append(transaction)
        if rows:
            await self._advance_restart_point()
        return done

    async def _advance_restart_point(self) -> None:
        """Log a running-transactions record for the next poll to pass (module docstring)."""
        now = time.monotonic()
        if self._conn is None or self._snapshot_at is None:
            return
        if now - self._snapshot_at < SNAPSHOT_INTERVAL_S:
            return
        self._snapshot_at = now
        try:
            await self._conn.execute("select pg_log_standby_snapshot()")
        except psycopg.Error as exc:  # before PostgreSQL 16, or not permitted: as before
            log.info("restart_lsn advances at the server's own pace: %s", exc)
            self._snapshot_at = None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
