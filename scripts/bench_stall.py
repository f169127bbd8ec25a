"""Where the api part's slow requests (the create p99 stall) come from, with and without the fix.

``--detail``: the rounds of ``scripts/bench.py --parts api`` (same stack, floors, clients and
warm-up) for the floors, create and get, with every request's start and end kept, this
process's own garbage collections timed, and the kernel's TCP counters (``nstat``, global:
other work on the machine moves them too) read around each case. Each slow request (over
``--slow-ms``) is printed with how many other connections were slow at the same moment (one
alone points at that connection: TCP, a server thread; all sixteen at a process-wide pause)
and the collections in this process that overlapped it.

Default: ``--runs`` runs of ``scripts/bench.py --parts api`` itself, each in a fresh
interpreter, alternating its client (``bench_tools.load``) with the heap left to the collector
through each timed load, as before, and frozen (``freeze_heap``, the default), printing every
case's p90/p99 per round, the full (generation 2) collections of the benchmark process that
fell inside it, and the objects that process held when the case began.

    .venv/bin/python scripts/bench_stall.py [--runs 6]
    .venv/bin/python scripts/bench_stall.py --detail [--rounds 3] [--slow-ms 170]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts.bench import COMPLEX, CONNECTIONS, forget_api_jobs, start_floors
from scripts.bench_tools import RAISED_CAPS, load, percentiles, stop, wait_final
from shared.functions import CREATE, GET

#: the kernel counters a lost or late segment moves (global: other work on the machine too)
TCP_COUNTERS = (
    "TcpRetransSegs",
    "TcpExtTCPLossProbes",
    "TcpExtTCPTimeouts",
    "TcpExtDelayedACKs",
    "TcpExtDelayedACKLost",
    "TcpExtListenOverflows",
    "TcpExtTCPSynRetrans",
)


def nstat() -> dict[str, int]:
    out = subprocess.run(["nstat", "-az"], capture_output=True, text=True, check=False).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in TCP_COUNTERS:
            counts[parts[0]] = int(parts[1])
    return counts


@dataclass
class GcLog:
    """Start and end (perf_counter) and generation of each collection in this process, and
    whether the heap was frozen then (the collection ``load`` itself runs before the clock
    starts comes before its freeze)."""

    spans: list[tuple[float, float, int, bool]] = field(default_factory=list)
    _began: float = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            frozen = gc.get_freeze_count() > 0
            span = (self._began, time.perf_counter(), int(info["generation"]), frozen)
            self.spans.append(span)


@dataclass
class Sample:
    connection: int
    began: float
    ended: float

    @property
    def ms(self) -> float:
        return (self.ended - self.began) * 1000


def timed_load(
    base_url: str,
    make_request: Callable[[httpx.Client, int], httpx.Response],
    *,
    requests: int,
    expect: int,
    freeze_heap: bool,
) -> list[Sample]:
    """bench_tools.load (same clients, warm-up, barrier and heap), each request's times kept."""
    samples: list[Sample] = []
    lock = threading.Lock()

    def keep(connection: int, began: float, ended: float) -> None:
        with lock:
            samples.append(Sample(connection, began, ended))

    load(
        base_url,
        make_request,
        connections=CONNECTIONS,
        requests=requests,
        expect=expect,
        freeze_heap=freeze_heap,
        on_sample=keep,
    )
    return samples


def report(
    name: str, samples: list[Sample], gcs: GcLog, tcp: dict[str, int], slow_ms: float
) -> None:
    lat = percentiles([s.ms for s in samples])
    t0 = min(s.began for s in samples)
    tcp_moved = " ".join(f"{k.removeprefix('TcpExt')}+{v}" for k, v in tcp.items() if v)
    print(
        f"  {name:<26} p50 {lat['p50']:6.1f} p90 {lat['p90']:6.1f} p99 {lat['p99']:6.1f} ms"
        f"  | tcp {tcp_moved or '-'}",
        flush=True,
    )
    t1 = max(s.ended for s in samples)
    for beg, end, gen, _frozen in gcs.spans:
        if gen == 2 and beg < t1 and end > t0:
            print(f"     client gc2 {(end - beg) * 1000:6.1f} ms at +{(beg - t0) * 1000:7.1f} ms")
    for s in sorted((s for s in samples if s.ms > slow_ms), key=lambda s: s.began):
        alongside = {
            o.connection
            for o in samples
            if o is not s and o.ms > slow_ms / 2 and o.began < s.ended and o.ended > s.began
        }
        overlap = [
            f"gc{gen} {(end - beg) * 1000:.0f}ms"
            for beg, end, gen, _frozen in gcs.spans
            if beg < s.ended and end > s.began
        ]
        print(
            f"     slow {s.ms:6.1f} ms at +{(s.began - t0) * 1000:7.1f} ms conn {s.connection:2d}"
            f"  other slow conns {len(alongside):2d}  client gc: {', '.join(overlap) or '-'}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs of the api part, alternated")
    parser.add_argument("--detail", action="store_true", help="per-request timing instead")
    parser.add_argument("--rounds", type=int, default=3, help="--detail: rounds")
    parser.add_argument("--requests", type=int, default=640, help="--detail: per case")
    parser.add_argument("--slow-ms", type=float, default=170.0, help="--detail: what is slow")
    parser.add_argument("--frozen", action="store_true", help="--detail: freeze the heap")
    parser.add_argument("--only", default="", help="--detail: case-name prefixes, comma-separated")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.child_out)
    if not args.detail:
        return alternate(args.runs)
    gcs = GcLog()
    gc.callbacks.append(gcs)
    env = dict(RAISED_CAPS)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ajq-stall-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack, httpx.Client(base_url=stack.base_url, timeout=60) as http:
            floors, processes = start_floors(stack)
            try:
                run(stack, http, floors, gcs, args)
            finally:
                for process in processes:
                    stop(process)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


# --- bench.py's api part, its client's heap thawed or frozen -----------------------

#: bench_tools.load with this process's heap left to the collector (as before the fix) or
#: frozen through each timed load (``freeze_heap``, the default since)
VARIANTS = ("thawed", "frozen")


def child(variant: str, out: Path) -> int:
    """One run of ``bench.py --parts api`` in this interpreter; writes each case's figures per
    round and the full collections of this process that fell in its timed load."""
    from scripts import bench

    gcs = GcLog()
    gc.callbacks.append(gcs)
    windows: list[tuple[float, float]] = []
    objects: list[int] = []
    cases: list[dict[str, Any]] = []
    bench_load = vars(bench)["load"]
    row = bench.row

    def traced_load(*args: Any, **kwargs: Any) -> Any:
        objects.append(len(gc.get_objects()))
        began = time.perf_counter()
        try:
            return bench_load(*args, freeze_heap=variant == "frozen", **kwargs)
        finally:
            windows.append((began, time.perf_counter()))

    def traced_row(name: str, result: Any, cpu_key: str) -> None:
        row(name, result, cpu_key)
        began, ended = windows[-1]
        full = [
            round((end - beg) * 1000, 1)
            for beg, end, gen, frozen in gcs.spans
            if gen == 2
            and beg < ended
            and end > began
            # not the collection a frozen load runs before its clock starts
            and (frozen or variant != "frozen")
        ]
        cases.append(
            {"case": name, **result.latency_ms, "clientFullGcMs": full, "objects": objects[-1]}
        )

    # bench.py calls load and row by the names it imported: wrap them there
    vars(bench)["load"] = traced_load
    vars(bench)["row"] = traced_row
    figures = out.with_suffix(".bench.json")
    load_before = os.getloadavg()[0]
    bench.main(["--parts", "api", "--json", str(figures)])
    ratios = json.loads(figures.read_text())["apiRatios"]
    out.write_text(
        json.dumps(
            {
                "variant": variant,
                "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "cases": cases,
                "ratios": ratios,
            }
        )
    )
    return 0


def alternate(runs: int) -> int:
    """``runs`` fresh interpreters, thawed and frozen in turn; a line per run."""
    with tempfile.TemporaryDirectory(prefix="ajq-stall-") as tmp:
        for index in range(runs):
            variant = VARIANTS[index % len(VARIANTS)]
            out = Path(tmp) / f"run{index}.json"
            done = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--child-out", str(out)],
                check=False,
                stdout=subprocess.DEVNULL,
            )
            if done.returncode:  # its traceback went to stderr; the other runs still count
                print(f"run {index + 1} {variant} failed (exit {done.returncode})", flush=True)
                continue
            print_run(index + 1, json.loads(out.read_text()))
    return 0


def print_run(number: int, run: dict[str, Any]) -> None:
    print(f"run {number} {run['variant']:<6} load {run['load'][0]:.2f}->{run['load'][1]:.2f}")
    rounds: dict[str, list[dict[str, Any]]] = {}
    for case in run["cases"]:
        rounds.setdefault(case["case"], []).append(case)
    for name, per_round in rounds.items():
        figures = "  ".join(
            f"p90 {r['p90']:6.1f} p99 {r['p99']:6.1f} ({r['objects'] // 1000}k)"
            + (
                f" [gc2 {'+'.join(str(ms) for ms in r['clientFullGcMs'])}]"
                if r["clientFullGcMs"]
                else ""
            )
            for r in per_round
        )
        print(f"  {name:<34} {figures}")
    for name in ("create p90 / INSERT floor p90", "get p90 / SELECT floor p90"):
        ratio = run["ratios"][name]
        print(f"  {name:<34} {ratio['ratio']:.2f}x rounds {ratio['rounds']}")
    sys.stdout.flush()


def run(
    stack: LocalStack,
    http: httpx.Client,
    floors: dict[str, Any],
    gcs: GcLog,
    args: argparse.Namespace,
) -> None:
    finished = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
    wait_final(stack.db_uri, [finished])
    tasks = stack.tasks_client()
    tasks.pause_queue(name=stack.queue_path)
    with httpx.Client(base_url=floors["insert_row"]["url"]) as client:
        floor_id = client.post("/", json={"query": COMPLEX}).json()["id"]
    job_id = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
    cases: list[tuple[str, str, Callable[[httpx.Client, int], httpx.Response], int]] = [
        (
            "floor INSERT",
            floors["insert_row"]["url"],
            lambda c, i: c.post("/", json={"query": COMPLEX, "i": i}),
            202,
        ),
        (
            "create job",
            stack.base_url,
            lambda c, i: c.post(CREATE.path(), json={"query": COMPLEX, "metadata": {"i": i}}),
            202,
        ),
        ("floor SELECT", floors["select_row"]["url"], lambda c, i: c.get(f"/{floor_id}"), 200),
        ("get job", stack.base_url, lambda c, i: c.get(GET.path(job_id)), 200),
    ]
    only = [o for o in args.only.split(",") if o]
    for round_ in range(args.rounds):
        print(f"  -- round {round_ + 1} (load {os.getloadavg()[0]:.2f})", flush=True)
        forget_api_jobs(stack, keep=[finished, job_id])
        tasks.purge_queue(name=stack.queue_path)
        for name, url, call, expect in cases:
            if only and not any(name.startswith(o) for o in only):
                continue
            before = nstat()
            samples = timed_load(
                url, call, requests=args.requests, expect=expect, freeze_heap=args.frozen
            )
            after = nstat()
            moved = {k: after.get(k, 0) - before.get(k, 0) for k in TCP_COUNTERS}
            report(name, samples, gcs, moved, args.slow_ms)


if __name__ == "__main__":
    sys.exit(main())
