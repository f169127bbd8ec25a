"""Change signals for one job from Supabase Realtime, for ``AIJobsClient.watch``.

Realtime says *when* the job changed; the client then reads *what* changed from the public
API (``ai-jobs-get`` with ``If-None-Match`` and ``logsAfter``). So a watcher sees exactly the
same job documents and log lines whether it is pushed or polls, and a dropped event can never
lose a log line: the next read carries everything after the last one seen.

realtime-py is asyncio; the client is synchronous, so the channel lives on a small thread
with its own event loop and hands signals over through a ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Any, Self

SUBSCRIBED = "Subscribed to PostgreSQL"


class JobSignal:
    """A channel on one job's row and its log lines; ``wait()`` returns when either changed."""

    def __init__(self, supabase_url: str, anon_key: str, access_token: str, job_id: str) -> None:
        self.supabase_url = supabase_url.rstrip("/")
        self.anon_key = anon_key
        self.access_token = access_token
        self.job_id = job_id
        self._changed = threading.Event()
        self._ready = threading.Event()
        self._failed: str | None = None
        #: monotonic receive time of every change event (the benchmark reads it)
        self.received_at: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"realtime-{job_id}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(15) or self._failed:
            self.close()
            raise ConnectionError(f"Realtime subscription failed: {self._failed or 'timeout'}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait(self, timeout_s: float) -> bool:
        """True when a change arrived (since the last call) within ``timeout_s``."""
        changed = self._changed.wait(timeout_s)
        self._changed.clear()
        return changed

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._follow())
        finally:
            self._loop.close()

    async def _follow(self) -> None:
        from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

        self._stop = asyncio.Event()
        client = AsyncRealtimeClient(f"{self.supabase_url}/realtime/v1", self.anon_key)
        try:
            await client.connect()
            await client.set_auth(self.access_token)
            channel = client.channel(f"ai-job-{self.job_id}")
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.Update,
                self._on_change,
                table="ai_jobs",
                filter=f"id=eq.{self.job_id}",
            )
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.Insert,
                self._on_change,
                table="ai_job_logs",
                filter=f"job_id=eq.{self.job_id}",
            )
            channel.on_system(self._on_system)
            await channel.subscribe(self._on_state)
            await self._stop.wait()
        except Exception as exc:  # connect refused, bad key: the watcher falls back to polling
            self._failed = str(exc) or type(exc).__name__
            self._ready.set()
        finally:
            await client.close()

    def _on_change(self, payload: Any) -> None:
        self.received_at.append(time.monotonic())
        self._changed.set()

    def _on_system(self, payload: Any) -> None:
        if dict(payload).get("message") == SUBSCRIBED:  # a pydantic model in realtime-py
            self._ready.set()

    def _on_state(self, state: Any, error: Exception | None) -> None:
        if error is not None or str(getattr(state, "value", state)) in (
            "CHANNEL_ERROR",
            "TIMED_OUT",
        ):
            self._failed = str(error or state)
            self._ready.set()
            self._changed.set()  # wake the watcher: it reads, and keeps going by polling
