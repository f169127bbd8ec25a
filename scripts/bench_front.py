"""The function host's front alone: its CPU per proxied request and the latency it adds, A/B.

Each tree's front (``infra.local.host.serve`` on uvloop, as ``python -m infra.local.host`` runs
it, from that tree) stands before one trivial function served as gen2 serves it
(``functions-framework``, gunicorn gthread; the same server for both trees). A client in this
process (asyncio on uvloop, raw sockets, so its own CPU stays small and out of the front's
figure) sends the requests the front carries in the stack, with the headers their real
clients send:

- ``get``: ``GET /fn/<id>`` as httpx sends it (``Connection: keep-alive`` included, a
  hop-by-hop header the front must strip);
- ``task``: ``POST /fn/`` with a JSON body and the ``X-CloudTasks-*`` headers, as the Cloud
  Tasks emulator delivers a task to the processor.

Per round, tree and kind: the front process's CPU ms per proxied request (``/proc`` via psutil,
the front alone) and p50/p90 latency at 16 kept-alive connections, then p50 one request at a
time. Trees alternate (A B, B A, ...) so other load on the shared machine weighs on both alike;
the load average is printed with every round.

    .venv/bin/python scripts/bench_front.py [--compare REV] [--rounds 4] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.host import free_port
from scripts.bench_tools import _wait_port, export_tree, percentiles, serve_function, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 16
_FUNCTION = '''
"""A trivial function: what the front costs, not what a function does."""
import functions_framework


@functions_framework.http
def answer(request):
    request.get_data()
    return {"id": "8c0f5c9e-52f4-4b8e-9f55-3c4b5a1c2d3e", "status": "queued", "progress": 0}
'''
_FRONT = """
import sys
import uvloop
from infra.local.host import Backend, serve
uvloop.run(serve("127.0.0.1", {port}, {{"fn": Backend("fn", {upstream})}}))
"""
_TASK_BODY = b'{"jobId": "8c0f5c9e-52f4-4b8e-9f55-3c4b5a1c2d3e", "attempt": 1}'
REQUESTS = {
    "get": (
        b"GET /fn/8c0f5c9e-52f4-4b8e-9f55-3c4b5a1c2d3e HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"User-Agent: python-httpx/0.28.1\r\nX-User-Id: bench\r\n\r\n"
    ),
    "task": (
        b"POST /fn/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"User-Agent: Google-Cloud-Tasks\r\nContent-Type: application/json\r\n"
        b"X-CloudTasks-QueueName: q\r\nX-CloudTasks-TaskName: job-1\r\n"
        b"X-CloudTasks-TaskRetryCount: 0\r\nX-CloudTasks-TaskExecutionCount: 0\r\n"
        b"X-CloudTasks-TaskETA: 1700000000.0\r\nAuthorization: Bearer bench\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_TASK_BODY), _TASK_BODY)
    ),
}


async def _read_answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:200]!r}")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


async def _client(port: int, request: bytes, count: int, samples: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)  # connect and warm outside the timed part
    await _read_answer(reader)
    for _ in range(count):
        began = time.perf_counter()
        writer.write(request)
        await _read_answer(reader)
        samples.append((time.perf_counter() - began) * 1000)
    writer.close()


def measure(port: int, front_pid: int, request: bytes, requests: int) -> dict[str, float]:
    """CPU ms per request of the front and latency at 16 connections, then one at a time."""
    front = psutil.Process(front_pid)

    async def run(connections: int, count: int) -> tuple[list[float], float]:
        samples: list[float] = []
        before = front.cpu_times()
        await asyncio.gather(
            *(_client(port, request, count // connections, samples) for _ in range(connections))
        )
        after = front.cpu_times()
        spent = (after.user + after.system) - (before.user + before.system)
        return samples, spent

    samples, spent = uvloop.run(run(CONNECTIONS, requests))
    single, _ = uvloop.run(run(1, requests // 8))
    many = percentiles(samples)
    return {
        "cpuMs": 1000 * spent / (len(samples) + CONNECTIONS),
        "p50": many["p50"],
        "p90": many["p90"],
        "oneP50": percentiles(single)["p50"],
    }


def start_front(tree: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _FRONT.format(port=port, upstream=upstream)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_port(port, process)
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default="", help="a revision to measure beside this tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-front-") as tmp:
        source = Path(tmp) / "fn" / "main.py"
        source.parent.mkdir()
        source.write_text(_FUNCTION)
        trees = {"B (this tree)": REPO_ROOT}
        if args.compare:
            trees = {f"A ({args.compare})": export_tree(args.compare, Path(tmp) / "a"), **trees}
        function, url = serve_function("answer", source, {})
        fronts = {
            name: start_front(tree, int(url.rsplit(":", 1)[1])) for name, tree in trees.items()
        }
        figures: dict[str, list[dict[str, float]]] = {}
        try:
            for round_no in range(args.rounds):
                order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
                for name in order:
                    process, port = fronts[name]
                    for kind, request in REQUESTS.items():
                        result = measure(port, process.pid, request, args.requests)
                        figures.setdefault(f"{kind} {name}", []).append(result)
                        print(
                            f"round {round_no + 1} {kind:4} {name}: "
                            f"front CPU {result['cpuMs']:.4f} ms/request, "
                            f"16 conn p50 {result['p50']} p90 {result['p90']} ms, "
                            f"one at a time p50 {result['oneP50']} ms; "
                            f"load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
        finally:
            for process, _port in fronts.values():
                stop(process)
            stop(function)
    print(f"\nmedians over {args.rounds} alternated rounds, {CONNECTIONS} connections")
    for key, rows in figures.items():
        medians = {field: statistics.median(row[field] for row in rows) for field in rows[0]}
        print(
            f"  {key:24} front CPU {medians['cpuMs']:.4f} ms/request  "
            f"p50 {medians['p50']:.3f}  p90 {medians['p90']:.3f}  one p50 {medians['oneP50']:.3f}"
        )
    print(f"load average at end: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
