"""Change capture runs only while someone listens, as on the real server (supabase/realtime:
the first ``postgres_changes`` join starts ``ReplicationPoller`` and its temporary slot;
``SubscriptionManager`` stops it once no subscriber is left): no slot before the first
subscription, one while channels listen, none after the last has gone, and a new one on
the next join. A change committed before the first subscription is not delivered.

The Realtime server runs in this process (uvicorn on a thread), with ``stop_after_s=0`` so
capture stops at the first poll after the last subscriber leaves, instead of the real
server's ten minutes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import psycopg
import pytest
import uvicorn
from websockets.sync.client import ClientConnection, connect
from websockets.sync.connection import Connection

from infra.local.host import free_port
from infra.local.keys import api_key
from infra.local.realtime.server import RealtimeServer
from tests.support import JWT_SECRET, mint, wait_until

JOBS_INSERT = {"event": "INSERT", "schema": "public", "table": "ai_jobs"}


class InProcessRealtime:
    """A RealtimeServer behind uvicorn on a free port, on its own thread and event loop."""

    def __init__(self, db_uri: str) -> None:
        self.realtime = RealtimeServer(db_uri, JWT_SECRET, stop_after_s=0)
        self.port = free_port()
        self.ready = threading.Event()
        self._uvicorn: uvicorn.Server | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _app(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self.realtime.serve(scope, receive, send)

    async def _serve(self) -> None:
        await self.realtime.start()
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            ws="websockets-sansio",
            lifespan="off",
            interface="asgi3",
            log_level="warning",
        )
        self._uvicorn = uvicorn.Server(config)
        serving = asyncio.create_task(self._uvicorn.serve())
        while not self._uvicorn.started and not serving.done():
            await asyncio.sleep(0.01)
        self.ready.set()
        await serving
        await self.realtime.stop()

    def start(self) -> InProcessRealtime:
        self._thread.start()
        assert self.ready.wait(30), "the Realtime server did not start"
        return self

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self._thread.join(30)

    def socket(self) -> ClientConnection:
        key = api_key(JWT_SECRET, "service_role")  # BYPASSRLS: every change of the table is visible
        url = f"ws://127.0.0.1:{self.port}/realtime/v1/websocket?apikey={key}&vsn=1.0.0"
        return connect(url)


@pytest.fixture
def realtime(db_uri: str) -> Iterator[InProcessRealtime]:
    server = InProcessRealtime(db_uri).start()
    yield server
    server.stop()
    # the slot's session ends a moment after its connection closed; the database is dropped next
    wait_until(lambda: slots(db_uri) == 0, "the stopped server's slot to go")


def slots(db_uri: str) -> int:
    """The stand-in's replication slots on this database."""
    with psycopg.connect(db_uri, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_replication_slots"
            " where database = current_database() and slot_name like 'realtime_local_%'"
        ).fetchone()
    return int(row[0]) if row else 0


def new_job(db_uri: str, query: str) -> str:
    with psycopg.connect(db_uri, autocommit=True) as conn:
        row = conn.execute(
            "insert into public.ai_jobs (user_id, type, query) values ('u', 'analysis', %s)"
            " returning id::text",
            (query,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def send(ws: Connection, topic: str, event: str, payload: Any, ref: str) -> None:
    frame = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": ref}
    ws.send(json.dumps(frame))


def receive_until(ws: Connection, found: Any) -> list[dict[str, Any]]:
    """Frames received up to and including the first for which ``found`` holds."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(ws.recv(timeout=30))
        frames.append(frame)
        if found(frame):
            return frames


def subscribe(ws: Connection, topic: str, bindings: list[dict[str, str]]) -> None:
    config = {"postgres_changes": bindings}
    send(ws, topic, "phx_join", {"config": config, "access_token": mint("service_role")}, "1")
    if bindings:
        receive_until(ws, lambda f: f["event"] == "system" and f["payload"]["status"] == "ok")
    else:
        receive_until(ws, lambda f: f["event"] == "phx_reply")


def inserted_ids(frames: list[dict[str, Any]]) -> list[str]:
    return [
        f["payload"]["data"]["record"]["id"] for f in frames if f["event"] == "postgres_changes"
    ]


def until_inserted(job_id: str) -> Any:
    return lambda f: f["event"] == "postgres_changes" and inserted_ids([f]) == [job_id]


def test_no_slot_exists_before_a_postgres_changes_subscription(
    realtime: InProcessRealtime, db_uri: str
) -> None:
    with realtime.socket() as ws:
        subscribe(ws, "realtime:presence-only", [])
        send(ws, "phoenix", "heartbeat", {}, "2")  # answered after the join was handled
        receive_until(ws, lambda f: f["topic"] == "phoenix")

        assert slots(db_uri) == 0


def test_the_first_subscription_creates_the_slot_and_sees_only_later_changes(
    realtime: InProcessRealtime, db_uri: str
) -> None:
    before = new_job(db_uri, "committed before anyone listened")
    with realtime.socket() as ws:
        subscribe(ws, "realtime:jobs", [JOBS_INSERT])
        listening = slots(db_uri)
        after = new_job(db_uri, "committed after the subscription")
        frames = receive_until(ws, until_inserted(after))

    assert listening == 1
    assert inserted_ids(frames) == [after]
    assert before not in inserted_ids(frames)


def test_capture_stops_after_the_last_subscriber_leaves_and_restarts_on_the_next_join(
    realtime: InProcessRealtime, db_uri: str
) -> None:
    with realtime.socket() as first, realtime.socket() as second:
        subscribe(first, "realtime:a", [JOBS_INSERT])
        subscribe(second, "realtime:b", [JOBS_INSERT])
        send(first, "realtime:a", "phx_leave", {}, "3")
        receive_until(first, lambda f: f["event"] == "phx_close")
        kept = new_job(db_uri, "the second channel still listens")
        receive_until(second, until_inserted(kept))
        still_listening = slots(db_uri)
    # both sockets closed: nobody listens any more
    wait_until(lambda: slots(db_uri) == 0, "the slot to be dropped")

    with realtime.socket() as again:
        subscribe(again, "realtime:c", [JOBS_INSERT])
        restarted = slots(db_uri)
        later = new_job(db_uri, "after the restart")
        frames = receive_until(again, until_inserted(later))

    assert still_listening == 1
    assert restarted == 1
    assert inserted_ids(frames) == [later]


def test_a_record_with_jsonb_values_is_what_to_jsonb_gives_for_the_row(
    realtime: InProcessRealtime, db_uri: str
) -> None:
    data = '{"b": 1.50, "aa": [1, {"z": null, "y": "\ud55c"}], "a": true, "n": null}'
    with realtime.socket() as ws:
        subscribe(ws, "realtime:jobs", [JOBS_INSERT])
        with psycopg.connect(db_uri, autocommit=True) as conn:
            row = conn.execute(
                "insert into public.ai_jobs (user_id, type, query, metadata)"
                " values ('u', 'report', 'q', %s::jsonb) returning id::text, to_jsonb(ai_jobs)",
                (data,),
            ).fetchone()
        assert row is not None
        [event] = [
            f for f in receive_until(ws, until_inserted(row[0])) if f["event"] == "postgres_changes"
        ]

    record = event["payload"]["data"]["record"]
    assert record == row[1]
    assert list(record) == list(row[1])  # the same key order
    assert list(record["metadata"]) == list(row[1]["metadata"])


def test_columns_named_with_quotes_braces_and_placeholders_are_typed_as_to_jsonb_types_them(
    realtime: InProcessRealtime, db_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute(
            'create table public.odd ("a%s""{b}$1" int primary key, "100%" timestamptz, j jsonb,'
            " t text[]); grant select on public.odd to service_role;"
            " alter publication supabase_realtime add table public.odd"
        )
    with realtime.socket() as ws:
        subscribe(ws, "realtime:odd", [{"event": "*", "schema": "public", "table": "odd"}])
        with psycopg.connect(db_uri, autocommit=True) as conn:
            row = conn.execute(
                "insert into public.odd values (7, '2026-11-27 10:00:00.5+09', '[1.50, \"%s\"]',"
                " '{x,NULL}') returning to_jsonb(odd)"
            ).fetchone()
            conn.execute('update public.odd set "100%" = null where "a%s""{b}$1" = 7')
        assert row is not None
        frames = receive_until(ws, lambda f: f["payload"].get("data", {}).get("type") == "UPDATE")

    inserted, updated = [f["payload"]["data"] for f in frames if f["event"] == "postgres_changes"]
    assert inserted["record"] == row[0] and list(inserted["record"]) == list(row[0])
    assert updated["record"] == {**row[0], "100%": None}
    assert updated["old_record"] == {'a%s"{b}$1': 7}
    # by the batched path, not by its fallback transaction by transaction
    assert not [r for r in caplog.records if r.name == "infra.local.realtime"]


def test_a_poller_that_died_leaves_no_slot_behind_when_capture_starts_again(
    realtime: InProcessRealtime, db_uri: str
) -> None:
    server = realtime.realtime
    deliver = server._deliver_poll
    failures: list[int] = []

    async def fail_once(transactions: Any) -> Any:
        if transactions and not failures:
            failures.append(1)
            raise RuntimeError("a bug in delivery")  # the poller task ends with it
        return await deliver(transactions)

    server._deliver_poll = fail_once  # type: ignore[method-assign]
    with realtime.socket() as first:
        subscribe(first, "realtime:a", [JOBS_INSERT])
        new_job(db_uri, "kills the poller")
        wait_until(lambda: bool(failures) and not server.capturing, "the poller to die")
        with realtime.socket() as second:
            subscribe(second, "realtime:b", [JOBS_INSERT])  # capture starts again
            restarted = slots(db_uri)
            later = new_job(db_uri, "after the restart")
            frames = receive_until(second, until_inserted(later))

    assert restarted == 1, "the dead poller's slot was dropped, not left beside the new one"
    assert inserted_ids(frames) == [later]
