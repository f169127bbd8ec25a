"""A/B of the API functions' CPU per request: this tree against another checkout, alternated.

Starts one local stack (this tree's stand-ins, queue paused) and, beside it, the public API
functions (create, get, list, cancel) of two source trees, each served as gen2 serves it
(``functions-framework`` under gunicorn, one worker, its default threads) with the stack's
settings, plus the bare floor functions of ``scripts/bench.py``. Then, round after round,
each function takes ``--requests`` requests over 16 keep-alive connections while its worker's
CPU is metered, A's and B's runs of an operation back to back (the order flipped each round),
so a pair sees the same load. Prints, per operation and tree, the median over rounds of CPU ms
per request and of p90 latency, the median B/A ratio of the pairs, and each over the floor
measured in the same rounds, with the load average (other work on a shared machine blurs
latency far more than CPU).

    git archive <rev> | tar -x -C /tmp/base
    .venv/bin/python scripts/bench_apicpu.py --base /tmp/base --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.host import free_port
from infra.local.stack import LocalStack, StackConfig
from scripts.bench import COMPLEX, start_floors
from scripts.bench_tools import RAISED_CAPS, load, stop, worker_pid
from shared.functions import CANCEL, CREATE, GET, LIST, Function

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 16
OPERATIONS = ("create", "get", "list", "cancel")
FLOOR_OF = {"create": "insert", "get": "select", "list": "select", "cancel": "insert"}
Request = Callable[[httpx.Client, int], httpx.Response]


def serve(tree: Path, target: str, source: Path, env: dict[str, str]) -> tuple[Any, str, int]:
    """``functions-framework`` (gunicorn) from ``tree``: its ``shared`` is the one imported."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            f"--target={target}",
            f"--source={source}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        cwd=tree,
        env={**os.environ, **env, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=60) as client:
        for _ in range(600):
            try:
                client.get(url + "/_ready")
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise SystemExit(f"{target} from {tree} exited") from None
                time.sleep(0.05)
    return process, url, worker_pid(process.pid)


def start_tree(tree: Path, env: dict[str, str]) -> tuple[dict[str, tuple[str, int]], list[Any]]:
    served: dict[str, tuple[str, int]] = {}
    processes = []
    functions: dict[str, Function] = {"create": CREATE, "get": GET, "list": LIST, "cancel": CANCEL}
    for operation, function in functions.items():
        process, url, pid = serve(tree, function.entry_point, function.source(tree), env)
        processes.append(process)
        served[operation] = (url, pid)
    return served, processes


def queued_jobs(url: str, count: int) -> list[str]:
    """Jobs to cancel, created through ``url`` (a create function)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return [client.post("/", json={"query": COMPLEX}).json()["jobId"] for _ in range(count)]


def measure(
    served: dict[str, tuple[str, int]], operation: str, requests: int, job_id: str
) -> tuple[float, float]:
    """CPU ms per request of the function's worker, and p90 ms, for one operation."""
    url, pid = served[operation]
    calls: dict[str, tuple[Request, int]] = {
        "create": (
            lambda c, i: c.post("/", json={"query": COMPLEX, "metadata": {"i": i}}),
            202,
        ),
        "get": (lambda c, i: c.get(f"/{job_id}"), 200),
        "list": (lambda c, i: c.get("/"), 200),
    }
    if operation == "cancel":
        # jobs to cancel, created (unmetered) through the same tree's create
        call, expect = _cancel_call(queued_jobs(served["create"][0], requests + CONNECTIONS)), 200
    else:
        call, expect = calls[operation]
    result = load(
        url, call, connections=CONNECTIONS, requests=requests, expect=expect, cpu={"function": pid}
    )
    return result.cpu_ms_per_request["function"], result.latency_ms["p90"]


def _cancel_call(jobs: list[str]) -> Request:
    """Each call cancels the next job of ``jobs`` (warm-up calls included), so every job is
    cancelled once and every answer is 200 (a list iterator's ``next`` is atomic under the GIL)."""
    pending = iter(jobs)
    return lambda client, _index: client.post("/", json={"jobId": next(pending)})


def floor_round(floors: dict[str, Any], requests: int, floor_id: str) -> dict[str, float]:
    out = {}
    for name, target, call, expect in (
        (
            "insert",
            "insert_row",
            lambda c, i: c.post("/", json={"query": COMPLEX, "i": i}),
            202,
        ),
        ("select", "select_row", lambda c, i: c.get(f"/{floor_id}"), 200),
    ):
        result = load(
            floors[target]["url"],
            call,
            connections=CONNECTIONS,
            requests=requests,
            expect=expect,
            cpu={"function": floors[target]["pid"]},
        )
        out[name] = result.cpu_ms_per_request["function"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="tree A (e.g. a git archive)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=640)
    args = parser.parse_args(argv)
    trees = {"A": args.base.resolve(), "B": REPO_ROOT}
    env = dict(RAISED_CAPS)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ajq-apicpu-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack:
            stack.tasks_client().pause_queue(name=stack.queue_path)
            floors, processes = start_floors(stack)
            served = {}
            try:
                for label, tree in trees.items():
                    served[label], started = start_tree(tree, stack.function_env)
                    processes += started
                with httpx.Client(base_url=served["B"]["create"][0], timeout=60) as client:
                    job_id = client.post("/", json={"query": COMPLEX}).json()["jobId"]
                with httpx.Client(base_url=floors["insert_row"]["url"]) as client:
                    floor_id = client.post("/", json={"query": COMPLEX}).json()["id"]
                figures = rounds(
                    served,
                    floors,
                    count=args.rounds,
                    requests=args.requests,
                    job_id=job_id,
                    floor_id=floor_id,
                )
            finally:
                for process in processes:
                    stop(process)
    report(figures, args.rounds)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    return 0


def rounds(
    served: dict[str, dict[str, tuple[str, int]]],
    floors: dict[str, Any],
    *,
    count: int,
    requests: int,
    job_id: str,
    floor_id: str,
) -> dict[str, list[float]]:
    """Each operation of A and of B back to back (the order flipped each round), so each
    pair sees the same load; the B/A ratio of each pair is kept beside the figures."""
    figures: dict[str, list[float]] = {}
    for number in range(count):
        order = ("A", "B") if number % 2 == 0 else ("B", "A")
        for name, value in floor_round(floors, requests, floor_id).items():
            figures.setdefault(f"floor {name} cpu", []).append(value)
        for operation in OPERATIONS:
            pair = {}
            for label in order:
                cpu, p90 = measure(served[label], operation, requests, job_id)
                pair[label] = cpu
                figures.setdefault(f"{label} {operation} cpu", []).append(cpu)
                figures.setdefault(f"{label} {operation} p90", []).append(p90)
            figures.setdefault(f"B/A {operation}", []).append(pair["B"] / pair["A"])
        load_1 = os.getloadavg()[0]
        figures.setdefault("load", []).append(load_1)
        print(f"round {number + 1}/{count} done (order {''.join(order)}, load {load_1:.2f})")
    return figures


def report(figures: dict[str, list[float]], count: int) -> None:
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nmedians over {count} alternated rounds, {CONNECTIONS} connections")
    print(
        f"  floor CPU ms/req: insert {med['floor insert cpu']:.3f}  select "
        f"{med['floor select cpu']:.3f}"
    )
    for operation in OPERATIONS:
        floor = med[f"floor {FLOOR_OF[operation]} cpu"]
        a, b = med[f"A {operation} cpu"], med[f"B {operation} cpu"]
        print(
            f"  {operation:<7} CPU ms/req A {a:.3f} ({a / floor:.2f}x floor)  "
            f"B {b:.3f} ({b / floor:.2f}x)  B/A of pairs {med[f'B/A {operation}']:.2f}   "
            f"p90 ms A {med[f'A {operation} p90']:.1f}  B {med[f'B {operation} p90']:.1f}"
        )
        print(
            f"          rounds A {[round(v, 3) for v in figures[f'A {operation} cpu']]}"
            f"  B {[round(v, 3) for v in figures[f'B {operation} cpu']]}"
        )
    print(f"  load average per round: {[round(v, 2) for v in figures['load']]}")


if __name__ == "__main__":
    raise SystemExit(main())
