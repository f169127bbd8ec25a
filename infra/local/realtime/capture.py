"""Change capture by logical decoding, the way Supabase Realtime reads the database.

The real server polls a temporary ``wal2json`` slot every ~100 ms; plain PostgreSQL has no
wal2json, so this polls a temporary slot with the built-in ``pgoutput`` plugin over the SQL
interface (``pg_logical_slot_get_binary_changes``) limited to the ``supabase_realtime``
publication. Same source, same guarantees: only committed transactions, whole, in commit
order, with their commit time; nothing is added to the project's schema.

Needs ``wal_level = logical`` (the embedded server is configured so by
``infra.local.postgres``); anything else fails at start with a message saying so.

Each call of ``pg_logical_slot_get_binary_changes`` decodes the WAL again from the slot's
``restart_lsn``; what it returns starts at ``confirmed_flush_lsn``, which every poll advances.
restart_lsn moves only past a running-transactions record the decoding has passed
(``LogicalIncreaseRestartDecodingForSlot`` in logical.c), which the server logs every 15 s of
activity (``LOG_SNAPSHOT_INTERVAL_MS`` in bgwriter.c): a poll re-reads at most those 15 s of
WAL, so its cost does not grow with time (measured: restart lag a saw-tooth of 0-2 MB, per-poll
CPU of the backend 1.3-3.5 ms with a job's writes every 20 ms). Logging that record ourselves
each second (``pg_log_standby_snapshot()``) cut the re-reading but put ~40 ms on the
commit -> event p50 (likely: decoding such a record writes the snapshot to disk, snapbuild.c), and
the real server does not do it either; so not done.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from infra.local.realtime.pgoutput import Decoder, Transaction

PUBLICATION = "supabase_realtime"


class LogicalDecodingUnavailable(RuntimeError):
    """The server is not configured for logical decoding."""


class ChangeCapture:
    """A temporary logical slot on its own connection; ``poll()`` drains what committed."""

    def __init__(self, db_uri: str) -> None:
        self.db_uri = db_uri
        self.slot = f"realtime_local_{secrets.token_hex(6)}"
        self.decoder = Decoder()
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

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
        done: list[Transaction] = []
        for (data,) in await cursor.fetchall():
            transaction = self.decoder.feed(bytes(data))
            if transaction is not None and transaction.changes:
                done.append(transaction)
        return done

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
