"""Fixtures for the Cloud Tasks emulator tests: the emulator, a real client, an HTTP target
(their helpers are in tests/emulator/target.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from google.cloud import tasks_v2

from infra.local.tasks_emulator import EmulatorHandle, start_emulator
from tests.emulator.target import TEST_MIN_DEADLINE_S, Target, TargetServer, make_client


@pytest.fixture
def target() -> Iterator[Target]:
    holder = Target(url="")
    server = TargetServer(holder)
    holder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield holder
    holder.release.set()
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    with start_emulator(min_dispatch_deadline_s=TEST_MIN_DEADLINE_S) as handle:
        yield handle


@pytest.fixture
def client(emulator: EmulatorHandle) -> Iterator[tasks_v2.CloudTasksClient]:
    with make_client(emulator.address) as tasks_client:
        yield tasks_client
