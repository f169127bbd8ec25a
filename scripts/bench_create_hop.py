"""The create function's share of the pickup, in process: from create_job's answer to CreateTask.

Starts a local stack (queue paused, caps raised) and drives the create function in this process
through functions-framework's app (Flask's test client: no HTTP in front of the function, the
real store and Cloud Tasks clients behind it), one create at a time with a pause between, as
``scripts/bench_pickup.py`` runs jobs. Timestamps are taken (``perf_counter_ns``) where each
layer hands on: the answer's last ``recv`` in shared/transport.py, the transport's
``httpx.Response``, ``httpx.Client.send``, postgrest-py's ``execute``, the store's ``rpc`` and
``create_job``, ``TaskQueue.enqueue`` and grpc's ``_blocking`` (the unary call, just before the
C core frames and sends it). Prints the p50 of each span and of the whole, in microseconds, with
the load average. What follows ``_blocking`` up to the ``sendmsg`` is gRPC's C core: see
``scripts/bench_pickup.py --traced`` for the hop as the kernel sees it.

    .venv/bin/python scripts/bench_create_hop.py [--creates 300]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts.bench import COMPLEX
from scripts.bench_tools import RAISED_CAPS

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where the time is taken, in the order the create path passes them.
MARKS = (
    "answer received",
    "transport returned",
    "httpx send returned",
    "postgrest execute returned",
    "store rpc returned",
    "store create_job returned",
    "enqueue entered",
    "grpc _blocking entered",
)
WARM_UP = 50


def _timed(owner: Any, name: str, mark: str, marks: dict[str, int], *, on_entry: bool) -> None:
    """Wrap ``owner.name`` so that each call stamps ``mark`` on entry or on return."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if on_entry:
            marks[mark] = time.perf_counter_ns()
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        marks[mark] = time.perf_counter_ns()
        return result

    setattr(owner, name, wrapper)


def _instrument(marks: dict[str, int]) -> None:
    import grpc._channel
    import httpx
    import postgrest._sync.request_builder as builders

    import shared.store
    import shared.tasks
    import shared.transport

    reader = shared.transport._Reader
    _timed(reader, "_more", MARKS[0], marks, on_entry=False)  # the last read is the answer's
    _timed(shared.transport.KeepAliveTransport, "handle_request", MARKS[1], marks, on_entry=False)
    _timed(httpx.Client, "send", MARKS[2], marks, on_entry=False)
    _timed(builders.SyncSingleRequestBuilder, "execute", MARKS[3], marks, on_entry=False)
    _timed(shared.store.JobStore, "rpc", MARKS[4], marks, on_entry=False)
    _timed(shared.store.JobStore, "create_job", MARKS[5], marks, on_entry=False)
    _timed(shared.tasks.TaskQueue, "enqueue", MARKS[6], marks, on_entry=True)
    unary = grpc._channel._UnaryUnaryMultiCallable
    _timed(unary, "_blocking", MARKS[7], marks, on_entry=True)


def measure(creates: int) -> dict[str, list[int]]:
    """Nanoseconds of each span per create, after a warm-up."""
    import functions_framework

    from shared.functions import CREATE

    marks: dict[str, int] = {}
    spans: dict[str, list[int]] = {}
    _instrument(marks)
    app = functions_framework.create_app(  # type: ignore[no-untyped-call]
        CREATE.entry_point, str(CREATE.source(REPO_ROOT))
    )
    client = app.test_client()
    for number in range(WARM_UP + creates):
        marks.clear()
        answer = client.post("/", json={"query": COMPLEX, "metadata": {"i": number}})
        if answer.status_code != 202:
            raise SystemExit(f"create answered {answer.status_code}: {answer.get_data()[:200]!r}")
        if number >= WARM_UP:
            for first, then in itertools.pairwise(MARKS):
                spans.setdefault(f"{first} -> {then}", []).append(marks[then] - marks[first])
            spans.setdefault("whole", []).append(marks[MARKS[-1]] - marks[MARKS[0]])
        time.sleep(0.005)  # one at a time, as the pickup runs
    return spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=300)
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ajq-createhop-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=dict(RAISED_CAPS))
        with LocalStack(config) as stack:
            stack.tasks_client().pause_queue(name=stack.queue_path)
            os.environ.update(stack.function_env)
            spans = measure(args.creates)
    for name, values in spans.items():
        print(f"{statistics.median(values) / 1000:8.1f} us  {name}")
    print(f"load average at end: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
