"""The Cloud Tasks emulator alone: CreateTask -> dispatch latency and its CPU per task, A/B.

Each tree's emulator runs as the stack runs it (``python -m infra.local.tasks_emulator``, from
that tree), with one queue; a target process answers every dispatch at once on kept-alive
connections and notes when each task's request arrived. Tasks are created one at a time by
the real client (``google-cloud-tasks``), shaped as the create function makes them (URL, JSON
body, a secret header, dispatch deadline), with a pause between them, as jobs arrive in
``scripts/bench_pickup.py``. Per round and tree:

- ``dispatchMs``: from just before CreateTask is called to the request's arrival at the target
  (both on this machine's monotonic clock), p50/p90;
- ``answerMs``: CreateTask's own latency as the caller sees it, p50;
- ``cpuMsPerTask``: the emulator's CPU per task (every thread), and with ``--threads`` each
  thread's share, named by ``py-spy dump`` (the sync gRPC server's polling thread
  ``Thread-1 (_serve)``, its handler pool ``tasks-emulator-grpc_*``, the dispatch pool
  ``tasks-emulator-dispatch_*``; gRPC's own C threads ``event_engine``).

With ``--paused N``, the queue is paused (nothing is dispatched) and the tasks are created by
N threads at once over one channel, as the create function's threads share one client in
``scripts/bench.py``'s create figure (16 connections, queue paused): then ``answerMs`` (p50,
p90) and ``cpuMsPerTask`` are CreateTask's alone.

Trees alternate (A B, B A, ...) so other load on the shared machine weighs on both alike.

    .venv/bin/python scripts/bench_emulator.py [--compare REV] [--rounds 4] [--tasks 300]
    .venv/bin/python scripts/bench_emulator.py --paused 16 [--compare REV] [--tasks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.host import free_port
from scripts.bench_tools import export_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
QUEUE = "projects/bench/locations/local/queues/q"
_PY_SPY = Path(sys.executable).with_name("py-spy")
_SPY_THREAD = re.compile(r'^Thread (?:0x[0-9A-Fa-f]+ )?\(?(?P<tid>\d+)\)?.*"(?P<name>[^"]+)"')


# --- the target: answers at once, notes arrivals ------------------------------------------


async def _serve_target(port: int) -> None:
    arrivals: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                return  # the emulator closed the connection, or this target is stopping
            arrived = time.monotonic()
            length, name = 0, ""
            for line in head.split(b"\r\n"):
                key, _, value = line.partition(b":")
                if key.lower() == b"content-length":
                    length = int(value)
                elif key.lower() == b"x-cloudtasks-taskname":
                    name = value.strip().decode()
            if length:
                await reader.readexactly(length)
            arrivals[name] = arrived
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    print(json.dumps(arrivals), flush=True)


class Target:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--target", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    def arrivals(self) -> dict[str, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return {str(k): float(v) for k, v in json.loads(out.splitlines()[-1]).items()}


# --- one tree's emulator ----------------------------------------------------------------


def _thread_cpu_s(pid: int) -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


class Emulator:
    def __init__(self, tree: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "infra.local.tasks_emulator"),
                *("--port", str(self.port), "--queue", QUEUE, "--max-concurrent", "100"),
                *("--no-throttle", "--no-ramp-up"),
            ],
            cwd=tree,
            stderr=subprocess.DEVNULL,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(60)
        self.client = tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=self.channel)
        )
        deadline = time.monotonic() + 60
        while True:  # the queue is created just after the port opens
            try:
                self.client.get_queue(name=QUEUE)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def thread_names(self) -> dict[int, str]:
        """Native thread id -> Python thread name, from ``py-spy dump`` (needs ptrace)."""
        dump = subprocess.run(
            [str(_PY_SPY), "dump", "-p", str(self.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        names: dict[int, str] = {}
        for line in dump.splitlines():
            match = _SPY_THREAD.match(line)
            if match:
                names[int(match["tid"])] = match["name"]
        for tid in os.listdir(f"/proc/{self.process.pid}/task"):
            comm = Path(f"/proc/{self.process.pid}/task/{tid}/comm").read_text().strip()
            names.setdefault(int(tid), comm)
        return names

    def close(self) -> None:
        self.channel.close()
        self.process.terminate()
        self.process.wait(30)


def _template(url: str) -> Any:
    http_request = tasks_v2.HttpRequest(
        http_method=tasks_v2.HttpMethod.POST,
        url=url,
        headers={"Content-Type": "application/json", "X-Processor-Secret": "s" * 43},
    )
    task = tasks_v2.Task(
        http_request=http_request, dispatch_deadline=duration_pb2.Duration(seconds=600)
    )
    return tasks_v2.CreateTaskRequest.pb(tasks_v2.CreateTaskRequest(parent=QUEUE, task=task))


def _create(emulator: Emulator, template: Any) -> tuple[str, float, float]:
    """One task from ``template`` with a name and body of its own: (its id, when CreateTask
    was called, how long it took to answer), on the monotonic clock."""
    request = type(template)()
    request.CopyFrom(template)
    task_id = uuid.uuid4().hex
    request.task.name = f"{QUEUE}/tasks/{task_id}"
    request.task.http_request.body = json.dumps({"jobId": task_id, "dispatch": 0}).encode()
    before = time.monotonic()
    emulator.client.create_task(request=tasks_v2.CreateTaskRequest.wrap(request), timeout=30)
    return task_id, before, time.monotonic() - before


def _cpu_shares(emulator: Emulator, by_thread: dict[int, float], tasks: int) -> dict[str, float]:
    names = emulator.thread_names()
    shares: dict[str, float] = {}
    for tid, seconds in by_thread.items():
        name = names.get(tid, str(tid))
        shares[name] = shares.get(name, 0.0) + seconds * 1000 / tasks
    return {name: round(ms, 3) for name, ms in sorted(shares.items(), key=lambda kv: -kv[1]) if ms}


def paused_round(emulator: Emulator, tasks: int, connections: int, threads: bool) -> dict[str, Any]:
    """CreateTask alone: a paused queue, ``connections`` threads creating at once."""
    emulator.client.pause_queue(name=QUEUE)
    template = _template("http://127.0.0.1:9/process")
    answers: list[float] = []
    lock = threading.Lock()

    def create(_: int) -> None:
        _task_id, _before, answer = _create(emulator, template)
        with lock:
            answers.append(answer * 1000)

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(create, range(connections * 4)))  # warm
        answers.clear()
        cpu_before = _thread_cpu_s(emulator.process.pid)
        list(pool.map(create, range(tasks)))
        cpu_after = _thread_cpu_s(emulator.process.pid)
    emulator.client.purge_queue(name=QUEUE)
    by_thread = {t: cpu_after[t] - cpu_before.get(t, 0.0) for t in cpu_after}
    answers.sort()
    result: dict[str, Any] = {
        "answerMs": {
            "p50": round(statistics.median(answers), 3),
            "p90": round(answers[int(len(answers) * 0.9)], 3),
        },
        "cpuMsPerTask": round(sum(by_thread.values()) * 1000 / tasks, 3),
    }
    if threads:
        result["cpuMsPerTaskByThread"] = _cpu_shares(emulator, by_thread, tasks)
    return result


def one_round(emulator: Emulator, tasks: int, pause_s: float, threads: bool) -> dict[str, Any]:
    target = Target()
    template = _template(f"http://127.0.0.1:{target.port}/process")

    def create() -> tuple[str, float, float]:
        return _create(emulator, template)

    for _ in range(5):  # the target's connection, kept alive from here on
        create()
        time.sleep(pause_s)
    cpu_before = _thread_cpu_s(emulator.process.pid)
    sent: dict[str, float] = {}
    answers: list[float] = []
    for _ in range(tasks):
        task_id, before, answer = create()
        sent[task_id] = before
        answers.append(answer * 1000)
        time.sleep(pause_s)
    time.sleep(0.3)  # the last answers read
    cpu_after = _thread_cpu_s(emulator.process.pid)
    arrivals = target.arrivals()
    latency = sorted((arrivals[k] - v) * 1000 for k, v in sent.items() if k in arrivals)
    by_thread = {t: cpu_after[t] - cpu_before.get(t, 0.0) for t in cpu_after}
    result: dict[str, Any] = {
        "dispatchMs": {
            "p50": round(statistics.median(latency), 3),
            "p90": round(latency[int(len(latency) * 0.9)], 3),
        },
        "answerMsP50": round(statistics.median(answers), 3),
        "cpuMsPerTask": round(sum(by_thread.values()) * 1000 / tasks, 3),
        "arrived": len(latency),
    }
    if threads:
        result["cpuMsPerTaskByThread"] = _cpu_shares(emulator, by_thread, tasks)
    return result


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out: dict[str, Any] = {"cpuMsPerTask": med([r["cpuMsPerTask"] for r in rounds])}
    for key in ("dispatchMs", "answerMs"):
        if key in rounds[0]:
            out[key] = {k: med([r[key][k] for r in rounds]) for k in ("p50", "p90")}
    if "answerMsP50" in rounds[0]:
        out["answerMsP50"] = med([r["answerMsP50"] for r in rounds])
    if "cpuMsPerTaskByThread" in rounds[0]:
        names = {n for r in rounds for n in r["cpuMsPerTaskByThread"]}
        out["cpuMsPerTaskByThread"] = {
            n: med([r["cpuMsPerTaskByThread"].get(n, 0.0) for r in rounds]) for n in sorted(names)
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="also measure the tree at this revision")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=300, help="tasks per round and tree")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between creates")
    parser.add_argument("--threads", action="store_true", help="CPU per thread (py-spy dump)")
    parser.add_argument(
        "--paused",
        type=int,
        default=0,
        metavar="N",
        help="CreateTask alone: queue paused, N threads creating at once",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        asyncio.run(_serve_target(args.target))
        return 0
    print(f"load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ajq-emulator-trees-") as scratch:
        trees = {"this": REPO_ROOT}
        if args.compare:
            trees = {args.compare: export_tree(args.compare, Path(scratch) / "base"), **trees}
        emulators = {label: Emulator(tree) for label, tree in trees.items()}
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        try:
            for index in range(args.rounds):
                order = list(emulators.items())
                for label, emulator in order if index % 2 == 0 else order[::-1]:
                    result = (
                        paused_round(emulator, args.tasks, args.paused, args.threads)
                        if args.paused
                        else one_round(emulator, args.tasks, args.pause, args.threads)
                    )
                    rounds[label].append(result)
                    print(f"round {index + 1} {label:>8}: {result}", flush=True)
        finally:
            for emulator in emulators.values():
                emulator.close()
    summary = {
        "loadAverageAtEnd": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "tasks": args.tasks,
        "paused": args.paused,
        "medians": {label: _medians(r) for label, r in rounds.items()},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
