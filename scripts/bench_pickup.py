"""Pickup latency hop by hop: where the time between a job's creation and its claim goes.

Starts its own stack on free ports (as ``scripts/bench.py`` does) and runs jobs one at a
time, the way bench.py's pickup figure does (create, wait until final, 20 ms pause):

1. untraced: pickup p50/p90 (``created_at`` -> ``started_at``, both stamped by Postgres), and
   the CPU the emulator and the front spend per job, one job at a time and in a burst of
   creates from 8 threads nobody polls (bench.py's "quiet" burst);
2. traced: every network system call (read, write, send, receive) of the create function's
   worker, the emulator, the front, the processor's worker and the gateway, with its time on
   one clock: ``perf record`` on the kernel's syscall tracepoints (``-k mono``, shifted onto
   the wall clock Postgres stamps ``now()`` with; nobody is stopped) or, with
   ``--tracer strace``, ``strace -ttt -f -yy`` (which stops each process at every system
   call, so its hops come out longer). Each job's window ``created_at .. started_at`` is cut
   into hops by the first matching call of each; a socket is named by its ports (looked up
   in /proc at the end of the traced run, while the kept-alive connections are still open).

    .venv/bin/python scripts/bench_pickup.py [--jobs 40] [--traced 15] [--json /tmp/p.json]

``--compare REV --rounds N`` measures this tree against the tree at ``REV`` (``git archive``,
with this script and ``bench_tools.py`` as they are now copied in): each round runs the whole
measurement above once per tree, each in a child started from that tree with a stack of its
own, in alternating order (A B, B A, ...) so other load on the shared machine weighs on both
alike; then the median over the rounds of each figure, per tree.

    .venv/bin/python scripts/bench_pickup.py --compare 262f158 --rounds 3 [--json /tmp/p.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts.bench import COMPLEX, jobs_running
from scripts.bench_tools import (
    RAISED_CAPS,
    CpuMeter,
    export_tree,
    host_pids,
    percentiles,
    postmaster_pid,
    wait_final,
    worker_pid,
)
from shared.functions import CREATE, PROCESS

REPO_ROOT = Path(__file__).resolve().parents[1]

#: the system calls that move a request between processes (strace ``-e trace=``)
TRACED_CALLS = "read,write,writev,sendto,recvfrom,sendmsg,recvmsg,connect,accept4"
STRACE = ("strace", "-qq", "-ttt", "-f", "-yy", "-s", "48", "-e", f"trace={TRACED_CALLS}")
#: the processes traced, by the names this script gives them
TRACED = (CREATE.name, "emulator", "front", PROCESS.name, "gateway")

_LINE = re.compile(r"^(?P<tid>\d+)\s+(?P<t>\d+\.\d+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<call>\w+)\((?P<fd>\d+)<(?P<what>(?:->|[^>])*)>")
_RESUMED = re.compile(r"^<\.\.\. (?P<call>\w+) resumed>")
_TCP = re.compile(
    r"TCP(?:v6)?:\[\[?(?:::ffff:)?[\d.]+\]?:(?P<local>\d+)->\[?(?:::ffff:)?[\d.]+\]?:(?P<peer>\d+)\]"
)
_RESULT = re.compile(r"\)\s+=\s+(?P<result>-?\d+)")


@dataclass(frozen=True)
class Call:
    """One completed network system call of a traced process."""

    process: str
    started: float  #: epoch seconds when the call was entered
    ended: float  #: epoch seconds when it returned (the data's arrival, for a blocking read)
    call: str
    local_port: int | None  #: None for a socket that is not TCP (Postgres's Unix socket)
    peer_port: int | None
    result: int
    text: str


def parse_strace(process: str, text: str) -> list[Call]:
    """Calls from ``strace -ttt -f -yy`` output, joining ``<unfinished ...>`` halves."""
    pending: dict[str, tuple[float, str]] = {}
    calls: list[Call] = []
    for raw in text.splitlines():
        line = _LINE.match(raw)
        if line is None:
            continue
        tid, at, rest = line["tid"], float(line["t"]), line["rest"]
        if rest.endswith("<unfinished ...>"):
            pending[tid] = (at, rest)
            continue
        started = at
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            if tid not in pending:
                continue
            started, head = pending.pop(tid)
            rest = head.removesuffix("<unfinished ...>") + rest[resumed.end() :]
        call = _CALL.match(rest)
        result = _RESULT.search(rest)
        if call is None or result is None:
            continue
        tcp = _TCP.match(call["what"])
        calls.append(
            Call(
                process=process,
                started=started,
                ended=at,
                call=call["call"],
                local_port=int(tcp["local"]) if tcp else None,
                peer_port=int(tcp["peer"]) if tcp else None,
                result=int(result["result"]),
                text=rest,
            )
        )
    return calls


@dataclass(frozen=True)
class Ports:
    front: int
    gateway: int
    emulator: int
    processor: int


_SENDS = {"write", "writev", "sendto", "sendmsg"}
_RECEIVES = {"read", "recvfrom", "recvmsg"}


def _hop_rules(ports: Ports) -> list[tuple[str, str, Any]]:
    """(hop name, process, predicate on a Call), in the order a pickup passes them; the time
    of a send is when it was entered, of a receive when it returned with data."""

    def sends(call: Call, *, peer: int | None = None, local: int | None = None) -> bool:
        return call.call in _SENDS and call.result > 0 and _ports(call, peer, local)

    def receives(call: Call, *, peer: int | None = None, local: int | None = None) -> bool:
        return call.call in _RECEIVES and call.result > 0 and _ports(call, peer, local)

    def _ports(call: Call, peer: int | None, local: int | None) -> bool:
        return (peer is None or call.peer_port == peer) and (
            local is None or call.local_port == local
        )

    return [
        # create_job's result arriving from Postgres's Unix socket (after its commit)
        (
            "gateway has create_job's result",
            "gateway",
            lambda c: c.call == "recvfrom" and receives(c) and c.local_port is None,
        ),
        ("gateway answers create_job", "gateway", lambda c: sends(c, local=ports.gateway)),
        ("create fn has the answer", CREATE.name, lambda c: receives(c, peer=ports.gateway)),
        ("create fn sends CreateTask", CREATE.name, lambda c: sends(c, peer=ports.emulator)),
        ("emulator has CreateTask", "emulator", lambda c: receives(c, local=ports.emulator)),
        ("emulator sends the task", "emulator", lambda c: sends(c, peer=ports.front)),
        ("front has the task", "front", lambda c: receives(c, local=ports.front)),
        ("front forwards it", "front", lambda c: sends(c, peer=ports.processor)),
        ("processor has it", PROCESS.name, lambda c: receives(c, local=ports.processor)),
        ("processor sends claim", PROCESS.name, lambda c: sends(c, peer=ports.gateway)),
        ("gateway has claim", "gateway", lambda c: receives(c, local=ports.gateway)),
        # psycopg writes to Postgres's Unix socket with send(): sendto, no TCP ports
        (
            "gateway sends claim SQL",
            "gateway",
            lambda c: c.call == "sendto" and sends(c, peer=None) and c.local_port is None,
        ),
    ]


def hops(calls: list[Call], ports: Ports, created: float, started: float) -> dict[str, float]:
    """Each hop's time in one job's window, the first matching call after the previous hop."""
    window = sorted(
        (c for c in calls if created <= c.started and c.ended <= started),
        key=lambda c: c.started,
    )
    marks = {"created_at": created}
    after = created
    for name, process, matches in _hop_rules(ports):
        for call in window:
            at = call.started if call.call in _SENDS else call.ended
            if call.process == process and at >= after and matches(call):
                marks[name] = at
                after = at
                break
    marks["started_at"] = started
    # what else the emulator and the create function do meanwhile (not on the path)
    for extra, process, port in (
        ("emulator answers CreateTask", "emulator", ports.emulator),
        ("create fn has the CreateTask answer", CREATE.name, ports.emulator),
    ):
        for call in window:
            if call.process != process or call.result <= 0:
                continue
            is_answer = call.call in _SENDS and call.local_port == port
            is_answered = call.call in _RECEIVES and call.peer_port == port
            if (is_answer or is_answered) and call.started >= marks.get(
                "emulator has CreateTask", created
            ):
                marks[extra] = call.started if is_answer else call.ended
                break
    return marks


# --- perf: the same calls from the kernel's tracepoints, without stopping anyone ------------

_PERF_CALLS = ("read", "write", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg")
_PERF_LINE = re.compile(
    r"^\s*(?P<pid>\d+)/(?P<tid>\d+)\s+(?P<t>\d+\.\d+):\s+syscalls:sys_(?P<edge>enter|exit)_"
    r"(?P<call>\w+):\s*(?P<args>.*)$"
)
_PERF_FD = re.compile(r"fd: (0x[0-9a-f]+)")


def tcp_ports_by_fd(pids: dict[str, int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, fd) -> (local port, peer port) of every TCP socket the processes hold now, from
    /proc/<pid>/fd and /proc/net/tcp{,6} (perf names a socket by its number only)."""
    ports_by_inode: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, peer, inode = fields[1], fields[2], fields[9]
            ports_by_inode[inode] = (
                int(local.rsplit(":", 1)[1], 16),
                int(peer.rsplit(":", 1)[1], 16),
            )
    found: dict[tuple[int, int], tuple[int, int]] = {}
    for pid in pids.values():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in ports_by_inode:
                found[(pid, int(fd.name))] = ports_by_inode[target[8:-1]]
    return found


def parse_perf(
    text: str,
    names: dict[int, str],
    sockets: dict[tuple[int, int], tuple[int, int]],
    to_epoch: float,
) -> list[Call]:
    """Calls from ``perf script`` over sys_enter/sys_exit tracepoints (CLOCK_MONOTONIC,
    shifted by ``to_epoch`` onto the wall clock Postgres stamps with)."""
    entered: dict[int, tuple[float, str, int]] = {}
    calls: list[Call] = []
    for raw in text.splitlines():
        line = _PERF_LINE.match(raw)
        if line is None:
            continue
        pid, tid, at = int(line["pid"]), int(line["tid"]), float(line["t"]) + to_epoch
        if line["edge"] == "enter":
            fd = _PERF_FD.search(line["args"])
            entered[tid] = (at, line["call"], int(fd[1], 16) if fd else -1)
            continue
        begun = entered.pop(tid, None)
        if begun is None or begun[1] != line["call"]:
            continue
        result = int(line["args"].strip(), 16)
        ports = sockets.get((pid, begun[2]))
        calls.append(
            Call(
                process=names.get(pid, str(pid)),
                started=begun[0],
                ended=at,
                call=line["call"],
                local_port=ports[0] if ports else None,
                peer_port=ports[1] if ports else None,
                result=result if result < 1 << 63 else result - (1 << 64),
                text="",
            )
        )
    return calls


@contextmanager
def perf_traced(pids: dict[str, int], out: Path) -> Iterator[list[Call]]:
    """``perf record`` of the processes' network calls while the block runs; the list given
    is filled once the block ends (sockets are looked up at its end, while still open)."""
    events = ",".join(
        f"syscalls:sys_{edge}_{call}" for call in _PERF_CALLS for edge in ("enter", "exit")
    )
    data = out / "perf.data"
    command = ["perf", "record", "-q", "-k", "mono", "-e", events, "-o", str(data)]
    tracer = subprocess.Popen(
        [*command, "-p", ",".join(str(pid) for pid in pids.values())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    calls: list[Call] = []
    try:
        time.sleep(1.0)
        yield calls
        sockets = tcp_ports_by_fd(pids)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    to_epoch = time.time() - time.monotonic()
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {pid: name for name, pid in pids.items()}
    calls.extend(parse_perf(script.stdout, names, sockets, to_epoch))


# --- the runs ------------------------------------------------------------------------------


def one_at_a_time(stack: LocalStack, http: httpx.Client, jobs: int) -> list[str]:
    """Jobs created one at a time, each waited for, as bench.py's pickup figure runs them."""
    ids = []
    for _ in range(jobs):
        job_id = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
        wait_final(stack.db_uri, [job_id])
        ids.append(job_id)
        time.sleep(0.02)
    return ids


def stamps(stack: LocalStack, ids: list[str]) -> list[tuple[float, float]]:
    """(created_at, started_at) of each job as epoch seconds, in the order given."""
    with psycopg.connect(stack.db_uri) as conn:
        rows = conn.execute(
            "select id::text, extract(epoch from created_at)::float8,"
            " extract(epoch from started_at)::float8 from ai_jobs where id = any(%s::uuid[])",
            (ids,),
        ).fetchall()
    by_id = {row[0]: (float(row[1]), float(row[2])) for row in rows}
    return [by_id[job_id] for job_id in ids]


@contextmanager
def straced(pids: dict[str, int], out: Path) -> Iterator[dict[str, Path]]:
    """strace attached to each process (all its threads) while the block runs."""
    files = {name: out / f"strace.{name}" for name in pids}
    tracers = [
        subprocess.Popen(
            [*STRACE, "-o", str(files[name]), "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        time.sleep(1.0)  # every thread attached
        yield files
    finally:
        for tracer in tracers:
            tracer.terminate()
        for tracer in tracers:
            tracer.wait(10)


def hop_table(marks: list[dict[str, float]]) -> list[tuple[str, float, int]]:
    """(hop "a -> b", p50 ms, samples) along the path, each from the previous mark present."""
    order = ["created_at"] + [name for name, _p, _m in _hop_rules(Ports(0, 0, 0, 0))]
    order.append("started_at")
    rows = []
    for before, after in itertools.pairwise(order):
        gaps = [(m[after] - m[before]) * 1000 for m in marks if before in m and after in m]
        if gaps:
            rows.append((f"{before} -> {after}", statistics.median(gaps), len(gaps)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="untraced jobs, one at a time")
    parser.add_argument("--burst", type=int, default=60, help="jobs in the quiet burst")
    parser.add_argument("--traced", type=int, default=15, help="jobs traced (0: none)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--trace-dir", type=Path, help="keep the trace output here")
    parser.add_argument(
        "--tracer",
        choices=("perf", "strace"),
        default="perf",
        help="perf (kernel tracepoints: nobody stopped) or strace (stops at every call)",
    )
    parser.add_argument("--compare", metavar="REV", help="also measure the tree at this revision")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds with --compare")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args, argv or sys.argv[1:])
    results = measure(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of this tree (see the module docstring)."""
    results: dict[str, Any] = {"loadAverageAtStart": round(os.getloadavg()[0], 2)}
    env = dict(RAISED_CAPS)
    with tempfile.TemporaryDirectory(prefix="ajq-pickup-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack, httpx.Client(base_url=stack.base_url, timeout=60) as http:
            servers = host_pids(stack.log_text("functions"))
            pids = {name: worker_pid(pid) for name, pid in servers.items()}
            pids |= {
                "front": stack.processes["functions"].pid,
                "gateway": stack.processes["gateway"].pid,
                "emulator": stack.processes["tasks-emulator"].pid,
            }
            one_at_a_time(stack, http, 3)  # warm every path and connection
            cpu_pids = {k: pids[k] for k in ("emulator", "front")}
            meter = CpuMeter(cpu_pids).start()
            ids = one_at_a_time(stack, http, args.jobs)
            meter.stop()
            pickup = [(s - c) * 1000 for c, s in stamps(stack, ids)]
            results["pickupMs"] = percentiles(pickup)
            results["oneAtATimeCpuMsPerJob"] = meter.per(args.jobs)
            if args.burst:
                burst_pids = {**cpu_pids, "postgres": postmaster_pid(stack.db_uri)}
                quiet = jobs_running(stack, http, burst_pids, args.burst, poll=False)
                results["burstCpuMsPerJob"] = quiet["cpuMsPerJob"]
            if args.traced:
                trace_dir = args.trace_dir or Path(tmp)
                trace_dir.mkdir(parents=True, exist_ok=True)
                marks = traced_marks(
                    stack, http, pids, args.traced, trace_dir=trace_dir, tracer=args.tracer
                )
                results["tracedHopsMsP50"] = [
                    {"hop": hop, "p50": round(ms, 3), "n": n} for hop, ms, n in hop_table(marks)
                ]
                results["tracedPickupMsP50"] = round(
                    statistics.median((m["started_at"] - m["created_at"]) * 1000 for m in marks), 2
                )
    return results


# --- A/B against another revision --------------------------------------------------------


def _child_argv(argv: list[str]) -> list[str]:
    """The arguments a child gets: ours without --compare, --rounds and --json."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in {"--compare", "--rounds", "--json", "--trace-dir"}:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over rounds of every figure a run reports (hops matched by name)."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out: dict[str, Any] = {
        "loadAverageAtStart": [run["loadAverageAtStart"] for run in runs],
        "pickupMs": {
            key: median([run["pickupMs"][key] for run in runs]) for key in runs[0]["pickupMs"]
        },
    }
    for figure in ("oneAtATimeCpuMsPerJob", "burstCpuMsPerJob"):
        if figure in runs[0]:
            out[figure] = {
                name: median([run[figure][name] for run in runs]) for name in runs[0][figure]
            }
    if "tracedHopsMsP50" in runs[0]:
        out["tracedPickupMsP50"] = median([run["tracedPickupMsP50"] for run in runs])
        hops_by_name: dict[str, list[float]] = {}
        for run in runs:
            for row in run["tracedHopsMsP50"]:
                hops_by_name.setdefault(row["hop"], []).append(row["p50"])
        out["tracedHopsMsP50"] = [
            {"hop": hop, "p50": median(values), "rounds": len(values)}
            for hop, values in hops_by_name.items()
        ]
    return out


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Alternated rounds of this tree and the tree at ``args.compare``, each run in a child."""
    child_args = _child_argv(argv)
    print(f"load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ajq-pickup-trees-") as scratch:
        base = export_tree(args.compare, Path(scratch) / "base")
        for tool in (Path(__file__), Path(__file__).with_name("bench_tools.py")):
            (base / "scripts" / tool.name).write_bytes(tool.read_bytes())
        trees = {args.compare: base, "this": REPO_ROOT}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for index in range(args.rounds):
            order = list(trees.items())
            for label, tree in order if index % 2 == 0 else order[::-1]:
                out = Path(scratch) / f"{label}-{index}.json"
                subprocess.run(
                    [
                        *(sys.executable, str(tree / "scripts" / Path(__file__).name)),
                        *(*child_args, "--json", str(out)),
                    ],
                    cwd=tree,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                runs[label].append(json.loads(out.read_text()))
                print(f"round {index + 1} {label:>8}: pickup {runs[label][-1]['pickupMs']}")
    result = {
        "loadAverageAtEnd": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "medians": {label: _median_figures(r) for label, r in runs.items()},
    }
    for label, figures in result["medians"].items():
        print(f"--- {label}, median of {args.rounds} rounds")
        report({**figures, "loadAverageAtStart": figures["loadAverageAtStart"]})
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def traced_marks(
    stack: LocalStack,
    http: httpx.Client,
    pids: dict[str, int],
    jobs: int,
    *,
    trace_dir: Path,
    tracer: str,
) -> list[dict[str, float]]:
    """Each traced job's hops (``hops``), jobs run one at a time under the tracer."""
    ports = Ports(
        stack.config.host_port,
        stack.config.gateway_port,
        stack.config.emulator_port,
        _processor_port(stack.log_text("functions")),
    )
    traced_pids = {name: pids[name] for name in TRACED}
    if tracer == "strace":
        with straced(traced_pids, trace_dir) as files:
            ids = one_at_a_time(stack, http, jobs)
        calls = [c for name, f in files.items() for c in parse_strace(name, f.read_text())]
    else:
        with perf_traced(traced_pids, trace_dir) as calls:
            ids = one_at_a_time(stack, http, jobs)
    return [hops(calls, ports, created, started) for created, started in stamps(stack, ids)]


def _processor_port(log_text: str) -> int:
    for line in log_text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == PROCESS.name and parts[2].startswith("port="):
            return int(parts[2][5:])
    raise SystemExit("the host did not log the processor's port")


def report(results: dict[str, Any]) -> None:
    pickup = results["pickupMs"]
    print(f"load average at start {results['loadAverageAtStart']}")
    print(f"pickup created -> claimed, untraced: p50 {pickup['p50']} p90 {pickup['p90']} ms")
    print(f"CPU ms per job, one at a time: {results['oneAtATimeCpuMsPerJob']}")
    if "burstCpuMsPerJob" in results:
        print(f"CPU ms per job, quiet burst:   {results['burstCpuMsPerJob']}")
    if "tracedHopsMsP50" in results:
        print(f"traced pickup p50 {results['tracedPickupMsP50']} ms; hops (p50 ms):")
        for row in results["tracedHopsMsP50"]:
            count = f"n={row['n']}" if "n" in row else f"rounds={row['rounds']}"
            print(f"  {row['p50']:7.3f}  {row['hop']}  ({count})")


if __name__ == "__main__":
    sys.exit(main())
