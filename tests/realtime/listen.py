"""The official Python Realtime client (realtime-py 2.34.1) as a test subscriber: a channel
whose every callback appends to lists the test then asserts on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates

from tests.support import LocalSupabase

#: (event, table, filter) of a binding
Spec = tuple[str, str, str | None]


@dataclass
class Listener:
    client: AsyncRealtimeClient
    channel: AsyncRealtimeChannel
    changes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    systems: list[dict[str, Any]] = field(default_factory=list)
    states: list[tuple[str, str | None]] = field(default_factory=list)

    def payloads(self, binding: int | None = None) -> list[dict[str, Any]]:
        return [p for i, p in self.changes if binding is None or i == binding]

    async def close(self) -> None:
        await self.client.close()


async def listen(
    server: LocalSupabase,
    topic: str,
    specs: Sequence[Spec],
    *,
    token: str | None = None,
    as_user: str | None = None,
    wait_for_subscribed: bool = True,
    max_retries: int = 5,
) -> Listener:
    """Connect with the anon key, join ``topic`` (with ``token`` as the user's access token)
    with one binding per spec, and wait for the ``system`` "Subscribed" message. ``as_user``:
    with a fresh access token of that user."""
    if as_user is not None:
        token = server.user_token(as_user)
    client = AsyncRealtimeClient(
        f"{server.url}/realtime/v1", server.anon_key, initial_backoff=0.2, max_retries=max_retries
    )
    await client.connect()
    if token:
        await client.set_auth(token)
    channel = client.channel(topic)
    listener = Listener(client, channel)
    for index, (event, table, flt) in enumerate(specs):
        channel.on_postgres_changes(
            event,  # type: ignore[arg-type]
            callback=_append(listener.changes, index),
            table=table,
            schema="public",
            filter=flt,
        )
    channel.on_system(lambda payload: listener.systems.append(dict(payload)))

    def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
        listener.states.append((str(state.value), None if error is None else str(error)))

    await channel.subscribe(on_state)
    if wait_for_subscribed:
        await until(
            lambda: any(s.get("message") == "Subscribed to PostgreSQL" for s in listener.systems)
        )
    return listener


def _append(sink: list[tuple[int, dict[str, Any]]], index: int) -> Callable[[Any], None]:
    return lambda payload: sink.append((index, dict(payload)))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition``; fail (not time) the test when it never holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def settle(seconds: float = 1.0) -> None:
    """Give the server time to deliver what it would (to assert that nothing came)."""
    await asyncio.sleep(seconds)
