"""Drive ``driver.mjs`` (supabase-js in node) from a test: send commands, await its events."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support import LocalSupabase

Event = dict[str, Any]


class SupabaseJs:
    """One node process with one supabase-js client; every event it printed is in ``events``."""

    def __init__(self, js_dir: Path, server: LocalSupabase) -> None:
        env = {**os.environ, "SUPABASE_URL": server.url, "SUPABASE_ANON_KEY": server.anon_key}
        self.process = subprocess.Popen(
            ["node", "--no-warnings", "driver.mjs"],
            cwd=js_dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[Event] = []
        self._queue: queue.Queue[Event] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self._queue.put(json.loads(line))

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def until(self, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
        """Collect events until ``condition`` holds; fail the test if it never does."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met; supabase-js sent: {self.events}")
            try:
                event = self._queue.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if event["type"] == "crash":
                raise AssertionError(f"supabase-js crashed: {event['error']}")
            self.events.append(event)

    def expect(self, condition: Callable[[Event], bool], timeout_s: float = 15.0) -> Event:
        """The first event (already seen or to come) that meets ``condition``."""
        self.until(lambda: any(condition(e) for e in self.events), timeout_s)
        return next(e for e in self.events if condition(e))

    def systems(self, name: str) -> list[Event]:
        return [e["payload"] for e in self.events if e["type"] == "system" and e["name"] == name]

    def sign_in(self) -> Event:
        self.send(cmd="signIn")
        return self.expect(lambda e: e["type"] == "signedIn")

    def subscribe(self, name: str, bindings: list[dict[str, Any]]) -> None:
        self.send(cmd="subscribe", name=name, topic=name, bindings=bindings)

    def changes(self, name: str, binding: int | None = None) -> list[Event]:
        return [
            e["payload"]
            for e in self.events
            if e["type"] == "change"
            and e["name"] == name
            and (binding is None or e["binding"] == binding)
        ]

    def statuses(self, name: str) -> list[tuple[str, str | None]]:
        return [
            (e["status"], e["error"])
            for e in self.events
            if e["type"] == "status" and e["name"] == name
        ]

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(cmd="exit")
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
