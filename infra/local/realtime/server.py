"""Realtime sockets and channels: the Phoenix protocol of ``/realtime/v1/websocket``.

Mirrors ``realtime_web/channels/realtime_channel.ex`` (supabase/realtime v2.129.8) for what the
official clients exercise: the apikey checked at the upgrade (HTTP 401 with ``{"error"}``),
heartbeats, ``phx_join`` with bindings echoed in order with ids, the ``system`` subscribed /
error messages, ``access_token`` pushes, token expiry while joined, ``phx_leave`` and the
``postgres_changes`` events themselves, one per matching channel with the ids of every binding
that matched. Each socket has an outbox drained by one writer, so a socket sees its frames in
the order the server produced them, and changes in commit order.

Change capture runs only while someone listens, as on the real server: there the first
``postgres_changes`` join starts the tenant's ``ReplicationPoller`` (``Extensions.
PostgresCdcRls.handle_connect`` -> ``start_distributed`` -> ``WorkerSupervisor``, which creates
the temporary slot when it starts), and ``SubscriptionManager`` stops it once no subscriber has
been left for ``@stop_after`` (10 min, checked every minute). Its poll loop polls again at once
after delivering rows, after ``poll_interval_ms`` (100 ms) + 50-100 ms of jitter when the slot
had changes nobody wanted, and after five intervals when the slot was empty (``@idle_multiplier``
in ``replication_poller.ex``). Here the slot is created before "Subscribed to PostgreSQL" is
sent, so every change committed after that message reaches the channel; changes committed
before the first subscription are not in the slot and are never delivered, as on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from infra.local.auth import TokenError, verify_token
from infra.local.keys import project_api_keys
from infra.local.realtime import protocol
from infra.local.realtime.bindings import Binding, BindingError, parse_binding
from infra.local.realtime.capture import ChangeCapture
from infra.local.realtime.database import RealtimeDatabase, Visible, limit_payload
from infra.local.realtime.pgoutput import Change, Transaction
from infra.local.realtime.protocol import Frame

log = logging.getLogger("infra.local.realtime")

IDLE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
#: replication_poller.ex: an empty slot is polled again after this many intervals
IDLE_POLL_MULTIPLIER = 5
#: replication_poller.ex: the jitter after a poll whose changes nobody subscribed to
POLL_JITTER_S = (0.05, 0.1)
#: subscription_manager.ex ``@stop_after``: capture stops once nobody listened for this long
STOP_AFTER_S = 600.0
# the real server answers a join with a bad token after a back-off; clients then retry
JOIN_ERROR_BACKOFF_S = 0.5
TOPIC_PREFIX = "realtime:"


def commit_timestamp(when: datetime) -> str:
    """UTC, milliseconds, ``Z`` (REALTIME.md case 13)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass
class Channel:
    topic: str
    join_ref: str | None
    token: str
    claims: dict[str, Any]
    bindings: list[Binding]
    subscribed: list[Binding] = field(default_factory=list)
    expiry: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.topic.removeprefix(TOPIC_PREFIX)


class Socket:
    """One client connection: its serializer, channels and ordered outbox."""

    def __init__(self, websocket: WebSocket, vsn: str, apikey: str) -> None:
        self.websocket = websocket
        self.vsn = vsn
        self.apikey = apikey
        self.channels: dict[str, Channel] = {}
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def push(self, frame: Frame) -> None:
        self.outbox.put_nowait(protocol.encode(self.vsn, frame))

    def reply(self, frame: Frame, status: str, response: dict[str, Any]) -> None:
        self.push(
            Frame(
                frame.topic,
                "phx_reply",
                {"status": status, "response": response},
                frame.ref,
                frame.join_ref,
            )
        )

    def system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        payload = {
            "channel": channel.name,
            "extension": extension,
            "message": message,
            "status": status,
        }
        self.push(Frame(channel.topic, "system", payload))

    def close_channel(self, channel: Channel) -> None:
        self.channels.pop(channel.topic, None)
        if channel.expiry is not None:
            channel.expiry.cancel()
        self.push(Frame(channel.topic, "phx_close", {}, channel.join_ref, channel.join_ref))

    async def write_forever(self) -> None:
        while (text := await self.outbox.get()) is not None:
            await self.websocket.send_text(text)


#: a channel a change goes to: its socket, the channel, the bindings of it that fire
_Target = tuple[Socket, Channel, list[Binding]]


class RealtimeServer:
    """Serve Realtime sockets for one database; ``start()`` begins change capture."""

    def __init__(
        self,
        db_uri: str,
        jwt_secret: str,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        stop_after_s: float = STOP_AFTER_S,
    ) -> None:
        self.db_uri = db_uri
        self.jwt_secret = jwt_secret
        self.poll_interval_s = poll_interval_s
        self.stop_after_s = stop_after_s
        self.database = RealtimeDatabase(db_uri)
        self.sockets: set[Socket] = set()
        self.capture: ChangeCapture | None = None
        self._poller: asyncio.Task[None] | None = None
        # serialises starting and stopping capture (a join racing the poller's own stop)
        self._capture_lock = asyncio.Lock()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Ready to serve; change capture starts with the first ``postgres_changes`` join."""
        await self.database.open()

    async def stop(self) -> None:
        async with self._capture_lock:
            await self._stop_capture()
        await self.database.close()

    @property
    def capturing(self) -> bool:
        return self._poller is not None and not self._poller.done()

    def listening(self) -> bool:
        """Whether any channel holds a ``postgres_changes`` subscription."""
        return any(c.subscribed for s in self.sockets for c in s.channels.values())

    async def _start_capture(self) -> None:
        """Create the slot and start polling unless already running. Raises when the slot
        cannot be created (no logical decoding, database down): the join is told so."""
        async with self._capture_lock:
            if self.capturing:
                return
            if self.capture is not None:  # a poller that died: its slot and session go first
                with contextlib.suppress(Exception):
                    await self.capture.close()
                self.capture = None
            capture = ChangeCapture(self.db_uri)
            await capture.open()
            self.capture = capture
            self._poller = asyncio.create_task(self._poll_forever(capture))

    async def _stop_capture(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if self.capture is not None:
            await self.capture.close()  # the temporary slot goes with its session
            self.capture = None

    async def _poll_forever(self, capture: ChangeCapture) -> None:
        unused_since = time.monotonic()
        while True:
            try:
                transactions = await capture.poll()
            except Exception:
                log.exception("change capture failed; retrying")
                transactions = []
            pushed = await self._deliver_poll(transactions)
            if self.listening():
                unused_since = time.monotonic()
            elif time.monotonic() - unused_since >= self.stop_after_s:
                async with self._capture_lock:
                    if not self.listening():  # a join may have come in meanwhile
                        await self._stop_capture()
                        return
            await asyncio.sleep(self._next_poll_s(transactions, pushed))

    def _next_poll_s(self, transactions: list[Transaction], pushed: int) -> float:
        if pushed:  # rows went out: there may be more at once
            return 0.0
        if transactions:
            return self.poll_interval_s + random.uniform(*POLL_JITTER_S)
        return self.poll_interval_s * IDLE_POLL_MULTIPLIER

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver_poll(self, transactions: list[Transaction]) -> int:
        """Push a poll's changes to every channel that may see them, with the database asked
        once per poll (one statement for the records, one per claims set; database.py), as
        the real server's one ``realtime.list_changes`` call per poll does. Should that fail,
        transaction by transaction as before, so one bad change costs only its transaction."""
        items: list[tuple[str, Change, list[_Target]]] = []
        for transaction in transactions:
            assert transaction.commit_time is not None  # set by its Commit message
            stamp = commit_timestamp(transaction.commit_time)
            for change in transaction.changes:
                if targets := self._targets(change):
                    items.append((stamp, change, targets))
        if not items:
            return 0
        try:
            typed = await self.database.typed_rows_many([change for _, change, _ in items])
            visible = await self.database.visible_many(
                [(c, matching, ch.claims) for _, c, targets in items for _, ch, matching in targets]
            )
        except Exception:
            log.exception("batched delivery failed; delivering transaction by transaction")
            return await self._deliver_each(transactions)
        answers = iter(visible)
        pushed = 0
        for (stamp, change, targets), (record, old) in zip(items, typed, strict=True):
            for socket, channel, _ in targets:
                seen = next(answers)
                if seen is None or socket.channels.get(channel.topic) is not channel:
                    continue
                event = _event(change, stamp, record, old, seen)
                socket.push(Frame(channel.topic, "postgres_changes", event))
                pushed += 1
        return pushed

    def _targets(self, change: Change) -> list[_Target]:
        return [
            (socket, channel, matching)
            for socket in list(self.sockets)
            for channel in list(socket.channels.values())
            if (matching := _matching(channel, change))
        ]

    async def _deliver_each(self, transactions: list[Transaction]) -> int:
        pushed = 0
        for transaction in transactions:
            try:
                pushed += await self._deliver(transaction)
            except Exception:
                log.exception("delivering transaction %s failed", transaction.xid)
        return pushed

    async def _deliver(self, transaction: Transaction) -> int:
        """Push the transaction's changes to every channel that may see them; how many
        frames went out."""
        assert transaction.commit_time is not None  # set by its Commit message
        stamp = commit_timestamp(transaction.commit_time)
        pushed = 0
        for change in transaction.changes:
            targets = self._targets(change)
            if not targets:
                continue
            record, old = await self.database.typed_rows(change)
            for socket, channel, matching in targets:
                visible = await self.database.visible_to(change, matching, channel.claims)
                if visible is None or socket.channels.get(channel.topic) is not channel:
                    continue
                socket.push(
                    Frame(
                        channel.topic,
                        "postgres_changes",
                        _event(change, stamp, record, old, visible),
                    )
                )
                pushed += 1
        return pushed

    # --- a socket ---------------------------------------------------------------------------

    async def serve(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        websocket = WebSocket(scope, receive, send)
        apikey = websocket.query_params.get("apikey") or websocket.headers.get("apikey") or ""
        vsn = websocket.query_params.get("vsn") or protocol.VSN_1
        try:
            if vsn not in protocol.SUPPORTED:
                raise TokenError("Unsupported", f"unsupported serializer vsn {vsn}")
            verify_token(self.jwt_secret, apikey)
            # Supabase's API gateway (Kong key-auth on /realtime/v1/) lets only the project's
            # two keys through; this server answers for both, keeping REALTIME.md's
            # {"error": …} shape for the refusal as for a token that is no valid JWT above
            if apikey not in project_api_keys(self.jwt_secret):
                raise TokenError("InvalidApiKey", "Invalid API key")
        except TokenError as exc:
            await websocket.send_denial_response(JSONResponse({"error": exc.message}, 401))
            return
        await websocket.accept()
        socket = Socket(websocket, vsn, apikey)
        self.sockets.add(socket)
        writer = asyncio.create_task(socket.write_forever())
        try:
            await self._read_forever(socket)
        finally:
            self.sockets.discard(socket)
            for channel in list(socket.channels.values()):
                if channel.expiry is not None:
                    channel.expiry.cancel()
            socket.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
            with contextlib.suppress(Exception):
                await websocket.close()

    async def _read_forever(self, socket: Socket) -> None:
        while True:
            try:
                text = await asyncio.wait_for(socket.websocket.receive_text(), IDLE_TIMEOUT_S)
            except (TimeoutError, WebSocketDisconnect, RuntimeError, KeyError):
                return  # idle for 60 s, closed, or a binary frame (broadcast only: unused)
            try:
                frame = protocol.decode(socket.vsn, text)
            except protocol.FrameError:
                continue
            await self._handle(socket, frame)

    async def _handle(self, socket: Socket, frame: Frame) -> None:
        if frame.topic == "phoenix" and frame.event == "heartbeat":
            socket.reply(frame, "ok", {})
        elif frame.event == "phx_join":
            await self._join(socket, frame)
        elif (channel := socket.channels.get(frame.topic)) is None:
            socket.reply(frame, "error", {"reason": "unmatched topic"})
        elif frame.event == "phx_leave":
            socket.reply(frame, "ok", {})
            socket.close_channel(channel)
        elif frame.event == "access_token":
            await self._access_token(socket, channel, frame.payload)
        # broadcast and presence pushes: not part of this stand-in; ignored without reply

    async def _join(self, socket: Socket, frame: Frame) -> None:
        previous = socket.channels.get(frame.topic)
        if previous is not None:  # Phoenix closes a duplicate join's older channel
            socket.close_channel(previous)
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        token = payload.get("access_token") or socket.apikey
        try:
            claims = verify_token(self.jwt_secret, token)
        except TokenError as exc:
            await asyncio.sleep(JOIN_ERROR_BACKOFF_S)
            socket.reply(frame, "error", {"reason": f"{exc.kind}: {exc.message}"})
            return
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        raw = config.get("postgres_changes") if isinstance(config, dict) else None
        taken: set[int] = set()
        bindings = [parse_binding(item, taken) for item in (raw if isinstance(raw, list) else [])]
        channel = Channel(frame.topic, frame.join_ref or frame.ref, token, claims, bindings)
        socket.channels[frame.topic] = channel
        socket.reply(frame, "ok", {"postgres_changes": [b.echo() for b in bindings]})
        await self._subscribe(socket, channel)
        self._schedule_expiry(socket, channel)

    async def _subscribe(self, socket: Socket, channel: Channel) -> None:
        if not channel.bindings:
            return
        for binding in channel.bindings:
            try:
                await self.database.check_binding(binding)
            except BindingError:
                channel.subscribed = []
                self._refuse(socket, channel, binding)
                return
        try:
            await self._start_capture()
        except Exception as exc:  # as the real channel does when PostgresCdc.connect fails
            log.exception("change capture did not start")
            channel.subscribed = []
            socket.system(channel, "postgres_changes", "error", f"Unable to subscribe: {exc}")
            return
        # no await between here and the message: the poller's next poll sees this channel
        channel.subscribed = list(channel.bindings)
        socket.system(channel, "postgres_changes", "ok", "Subscribed to PostgreSQL")

    def _refuse(self, socket: Socket, channel: Channel, binding: Binding) -> None:
        socket.system(
            channel,
            "postgres_changes",
            "error",
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            f"enabled for the given connect parameters: {binding.describe()}",
        )

    async def _access_token(self, socket: Socket, channel: Channel, payload: Any) -> None:
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not token or token == channel.token or str(token).startswith("sb_"):
            return
        try:
            claims = verify_token(self.jwt_secret, token)
        except TokenError as exc:
            socket.system(channel, "system", "error", exc.message)
            socket.close_channel(channel)
            return
        channel.token, channel.claims = token, claims
        await self._subscribe(socket, channel)
        self._schedule_expiry(socket, channel)

    def _schedule_expiry(self, socket: Socket, channel: Channel) -> None:
        if channel.expiry is not None:
            channel.expiry.cancel()
        remaining = float(channel.claims["exp"]) - time.time()
        channel.expiry = asyncio.create_task(self._expire(socket, channel, remaining))

    async def _expire(self, socket: Socket, channel: Channel, after_s: float) -> None:
        await asyncio.sleep(max(after_s, 0))
        if socket.channels.get(channel.topic) is not channel:
            return
        expired_for = max(int(time.time() - float(channel.claims["exp"])), 0)
        channel.expiry = None  # close_channel must not cancel this very task
        socket.system(channel, "system", "error", f"Token has expired {expired_for} seconds ago")
        socket.close_channel(channel)


def _matching(channel: Channel, change: Change) -> list[Binding]:
    relation = change.relation
    return [
        b for b in channel.subscribed if b.fires_on(relation.schema, relation.table, change.type)
    ]


def _event(
    change: Change, stamp: str, record: dict[str, Any], old: dict[str, Any], visible: Visible
) -> dict[str, Any]:
    allowed = {c["name"] for c in visible.columns}
    new_row = {k: v for k, v in record.items() if k in allowed}
    old_row = {k: v for k, v in old.items() if k in allowed}
    new_row, old_row, errors = limit_payload(new_row, old_row)
    data: dict[str, Any] = {
        "schema": change.relation.schema,
        "table": change.relation.table,
        "commit_timestamp": stamp,
        "type": change.type,
        "columns": visible.columns,
        "errors": errors,
    }
    if change.type != "DELETE":
        data["record"] = new_row
    if change.type != "INSERT":
        data["old_record"] = old_row
    return {"ids": visible.binding_ids, "data": data}
