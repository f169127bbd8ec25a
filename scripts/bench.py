"""Benchmark the local stack: latency, CPU and round trips per request, cold starts, and the
queue's cost per job next to a peer, each beside a floor measured in the same run.

Starts its own stack on free ports (local writer, so the figures are the queue's own cost,
not a model's) and, on the same Postgres server:

- floors: bare functions-framework functions (served as the project's are: gunicorn) doing the
  one INSERT or SELECT a create or a get needs, with psycopg straight to Postgres;
- the API at 16 keep-alive connections with the queue paused (create, get, list), then with
  jobs running; CPU milliseconds per request of each process; round trips to Supabase and
  Cloud Tasks per operation;
- cold starts: a fresh ``functions-framework`` process per function, process start -> first
  answered request, next to a bare function;
- jobs: pickup latency (created -> claimed), CPU per job across every process beyond the AI
  work itself (nobody polling or watching, as the peer runs), burst throughput, and the extra
  CPU per job while one Realtime watcher follows the jobs table; and the same for
  Procrastinate on the same Postgres.

Prints a table, writes ``docs/bench.json`` and draws ``docs/bench.png``.

    make bench        # or: .venv/bin/python scripts/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts import bench_peer
from scripts.bench_tools import (
    RAISED_CAPS,
    CpuMeter,
    LoadResult,
    Watcher,
    ai_cpu_ms,
    cold_start_ms,
    host_pids,
    json_ready,
    load,
    percentiles,
    postmaster_pid,
    serve_function,
    stop,
    wait_final,
    worker_pid,
)
from shared.functions import CANCEL, CREATE, GET, LIST, PROCESS

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "docs"
BENCH_FUNCTIONS = Path(__file__).resolve().parent / "bench_functions"
COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"
CONNECTIONS = 16
#: what --parts can name, in the order they run
PARTS = ("api", "trips", "pieces", "cold", "jobs", "peer")


def say(text: str) -> None:
    print(text, flush=True)


def row(name: str, result: LoadResult, cpu_key: str) -> None:
    lat = result.latency_ms
    say(
        f"  {name:<34} p50 {lat['p50']:7.1f}  p90 {lat['p90']:7.1f}  p99 {lat['p99']:7.1f} ms"
        f"  {result.rps:7.1f} req/s  CPU {result.cpu_ms_per_request.get(cpu_key, 0):5.2f} ms/req"
    )


# --- floors ----------------------------------------------------------------------------------


#: bench_functions/clients.py's functions
CLIENT_FLOORS = (
    "claim_with_clients",
    "create_with_clients",
    "get_with_clients",
    "list_with_clients",
)


def start_floors(
    stack: LocalStack, *, with_clients: bool = False
) -> tuple[dict[str, Any], list[Any]]:
    """The psycopg floors; ``with_clients``: also the client-library floors
    (``bench_functions/clients.py``) on the stack's settings."""
    assert stack.pg is not None
    uri = stack.pg.create_database("bench_floor")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(
            "create table bench_floor (id uuid primary key, body jsonb not null,"
            " created_at timestamptz not null default now())"
        )
    env = {"BENCH_DATABASE_URL": uri}
    floors: dict[str, Any] = {"uri": uri}
    processes = []
    for target in ("insert_row", "select_row"):
        process, url = serve_function(target, BENCH_FUNCTIONS / "floor.py", env)
        processes.append(process)
        floors[target] = {"url": url, "pid": worker_pid(process.pid)}
    for target in CLIENT_FLOORS if with_clients else ():
        # the floor's tasks go to its own claim function (started first), straight to its
        # server: no front on the way, so this floor's pickup is, if anything, short
        task_url = floors.get("claim_with_clients", {}).get("url")
        env = {**stack.function_env, **({"PROCESSOR_URL": task_url} if task_url else {})}
        process, url = serve_function(target, BENCH_FUNCTIONS / "clients.py", env)
        processes.append(process)
        floors[target] = {"url": url, "pid": worker_pid(process.pid)}
    return floors, processes


# --- round trips -------------------------------------------------------------------------------


def in_process_functions(stack: LocalStack) -> dict[str, Any]:
    """The public functions loaded in this process as an instance loads them (Flask test
    clients), with the stack's settings."""
    import functions_framework

    import shared.store
    import shared.tasks
    from shared.settings import get_settings

    os.environ.update(stack.function_env)
    for cached in (get_settings, shared.store.get_store, shared.tasks.get_queue):
        cached.cache_clear()
    return {
        f.name: functions_framework.create_app(  # type: ignore[no-untyped-call]
            f.entry_point, str(f.source(REPO_ROOT))
        ).test_client()
        for f in (CREATE, GET, LIST, CANCEL)
    }


def round_trips(stack: LocalStack) -> dict[str, dict[str, int]]:
    """Requests each operation sends to Supabase (HTTP, counted at the transport) and calls it
    makes to Cloud Tasks, with the functions loaded in this process as an instance loads them."""
    import shared.tasks
    from shared.settings import get_settings

    clients = in_process_functions(stack)
    counts = {"supabase": 0, "cloudTasks": 0}
    send = httpx.Client.send

    def counting_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        if str(request.url).startswith(stack.gateway_url):
            counts["supabase"] += 1
        return send(self, request, **kwargs)

    queue = shared.tasks.get_queue(get_settings())
    call_rpc = queue._call  # every Cloud Tasks RPC goes through it (one channel per queue)

    def counted(method: str, **kwargs: Any) -> Any:
        counts["cloudTasks"] += 1
        return call_rpc(method, **kwargs)

    queue._call = counted  # type: ignore[method-assign]

    def measure(call: Callable[[], Any]) -> tuple[dict[str, int], Any]:
        counts.update(supabase=0, cloudTasks=0)
        httpx.Client.send = counting_send  # type: ignore[method-assign]
        try:
            result = call()
        finally:
            httpx.Client.send = send  # type: ignore[method-assign]
        return dict(counts), result

    out: dict[str, dict[str, int]] = {}
    out["create"], created = measure(
        lambda: clients[CREATE.name].post("/", json={"query": COMPLEX})
    )
    job_id = created.get_json()["jobId"]
    out["get"], _ = measure(lambda: clients[GET.name].get(f"/{job_id}"))
    out["get with logs"], _ = measure(lambda: clients[GET.name].get(f"/{job_id}?logs=true"))
    out["list"], _ = measure(lambda: clients[LIST.name].get("/"))
    out["cancel"], _ = measure(lambda: clients[CANCEL.name].post("/", json={"jobId": job_id}))
    return out


# --- where a request's CPU goes ------------------------------------------------------------------


def _cpu_ms(call: Callable[[], Any], repeats: int) -> float:
    """CPU milliseconds of this process (every thread: gRPC's too) per call, after a warm-up."""
    for _ in range(20):
        call()
    began = time.process_time()
    for _ in range(repeats):
        call()
    return round((time.process_time() - began) * 1000 / repeats, 3)


def cpu_pieces(stack: LocalStack, floor_uri: str, repeats: int) -> dict[str, float]:
    """CPU per call of each layer of a create and a get, one call at a time in this process:
    the handler whole (Flask's test client, as ``round_trips``), the Supabase client's call,
    the same HTTP request sent by its httpx client and by the standard library, the Cloud
    Tasks client's create_task, and psycopg's statement for the floor. What the handler costs
    beyond the library calls is this project's own code plus Flask's."""
    import http.client
    from urllib.parse import urlsplit

    from shared.settings import get_settings
    from shared.store import get_store
    from shared.tasks import get_queue

    clients = in_process_functions(stack)
    settings = get_settings()
    store = get_store(settings)
    queue = get_queue(settings)
    job_id = clients[CREATE.name].post("/", json={"query": COMPLEX}).get_json()["jobId"]
    params = {"p_job_id": job_id, "p_user_id": "anonymous"}
    body = json.dumps(params).encode()
    url = f"{settings.supabase_url}/rest/v1/rpc/get_job"
    headers = dict(store.client.postgrest.headers)
    session = store.client.postgrest.session  # the httpx.Client the store gave supabase-py
    parts = urlsplit(url)
    raw = http.client.HTTPConnection(parts.hostname or "", parts.port)
    default_httpx = httpx.Client(timeout=60)

    def stdlib_post() -> Any:
        raw.request("POST", parts.path, body=body, headers=headers)
        return json.loads(raw.getresponse().read())

    conn = psycopg.connect(floor_uri, autocommit=True)
    floor_id = uuid.uuid4()
    conn.execute("insert into bench_floor (id, body) values (%s, '{}')", (floor_id,))
    cases: dict[str, Callable[[], Any]] = {
        "create handler whole (test client)": lambda: clients[CREATE.name].post(
            "/", json={"query": COMPLEX}
        ),
        "get handler whole (test client)": lambda: clients[GET.name].get(f"/{job_id}"),
        "supabase-py rpc('get_job').execute()": lambda: (
            store.client.rpc("get_job", params).execute().data
        ),
        "  same request, its httpx.Client": lambda: session.post(
            url, content=body, headers=headers
        ).json(),
        "  same request, http.client": stdlib_post,
        # the store's client sends through shared/transport.py; httpx's own transport, to compare
        "  same request, httpx default transport": lambda: default_httpx.post(
            url, content=body, headers=headers
        ).json(),
        "google-cloud-tasks create_task": lambda: queue.enqueue(uuid.uuid4(), 1),
        "psycopg SELECT (the floor's)": lambda: conn.execute(
            "select id, body, created_at from bench_floor where id = %s", (floor_id,)
        ).fetchone(),
    }
    out: dict[str, float] = {}
    # the handlers' log lines are not figures
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for name, call in cases.items():
            out[name] = _cpu_ms(call, repeats)
    raw.close()
    default_httpx.close()
    conn.close()
    for name, ms in out.items():
        say(f"  {name:<40} {ms:6.3f} ms CPU per call")
    return out


# --- cold starts -------------------------------------------------------------------------------


def cold_starts(stack: LocalStack, http: httpx.Client, repeats: int) -> dict[str, Any]:
    from shared.tasks import SECRET_HEADER

    env = dict(stack.function_env)
    done = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]

    # queued jobs for the cancel runs, made before any timing starts
    to_cancel = [
        str(http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"])
        for _ in range(repeats)
    ]

    cases: dict[str, tuple[str, Path, Callable[[httpx.Client], httpx.Response], set[int]]] = {
        "bare function": (
            "hello",
            BENCH_FUNCTIONS / "bare.py",
            lambda c: c.get("/"),
            {200},
        ),
        CREATE.name: (
            CREATE.entry_point,
            CREATE.source(REPO_ROOT),
            lambda c: c.post("/", json={"query": COMPLEX}),
            {202},
        ),
        GET.name: (
            GET.entry_point,
            GET.source(REPO_ROOT),
            lambda c: c.get(f"/{done}"),
            {200},
        ),
        LIST.name: (
            LIST.entry_point,
            LIST.source(REPO_ROOT),
            lambda c: c.get("/"),
            {200},
        ),
        CANCEL.name: (
            CANCEL.entry_point,
            CANCEL.source(REPO_ROOT),
            lambda c: c.post("/", json={"jobId": to_cancel.pop()}),
            {200},
        ),
        PROCESS.name: (
            PROCESS.entry_point,
            PROCESS.source(REPO_ROOT),
            lambda c: c.post(
                "/",
                json={"jobId": str(uuid.uuid4())},
                headers={
                    SECRET_HEADER: stack.secret,
                    "X-CloudTasks-QueueName": "ai-jobs",
                    "X-CloudTasks-TaskName": "cold-start-probe",
                },
            ),
            {200},
        ),
    }
    out: dict[str, Any] = {}
    for name, (target, source, first, expect) in cases.items():
        runs = [cold_start_ms(target, source, env, first, expect) for _ in range(repeats)]
        wall = sorted(ms for ms, _cpu in runs)
        cpu = sorted(cpu for _ms, cpu in runs)
        out[name] = {"ms": wall, "median": wall[len(wall) // 2], "cpuMs": cpu[len(cpu) // 2]}
        say(f"  {name:<34} {out[name]['median']:7.0f} ms wall  {out[name]['cpuMs']:6.0f} ms CPU")
    return out


# --- jobs ------------------------------------------------------------------------------------


def ai_work_cpu_ms(repeats: int = 9) -> float:
    """CPU of the AI work alone (the local writer), run in this process: what a job costs
    whatever queue carries it."""
    from shared.ai import pipeline
    from shared.jobs import JobType
    from shared.settings import AISettings

    settings = AISettings.from_env({"AI_WRITER": "local"})
    pipeline.run(COMPLEX, JobType.REPORT, lambda _p, _s: True, settings=settings)
    runs = []
    for _ in range(repeats):
        began = time.thread_time()
        pipeline.run(COMPLEX, JobType.REPORT, lambda _p, _s: True, settings=settings)
        runs.append(time.thread_time() - began)
    return round(statistics.median(runs) * 1000, 2)  # a run a neighbour slowed counts less


def pickup_ms(stack: LocalStack, http: httpx.Client, jobs: int) -> dict[str, float]:
    """created -> claimed (both stamped by Postgres), one job at a time."""
    ids = []
    for _ in range(jobs):
        job_id = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
        wait_final(stack.db_uri, [job_id])
        ids.append(job_id)
        time.sleep(0.02)
    return started_minus_created(stack, ids)


def pickup_floor_ms(stack: LocalStack, floors: dict[str, Any], jobs: int) -> dict[str, float]:
    """The same through the client-library floor: its create function's task claimed by its
    bare claim function (``bench_functions/clients.py``), one job at a time, each waited for
    as ``pickup_ms`` waits (Postgres asked every 20 ms)."""
    ids = []
    url = floors["create_with_clients"]["url"]
    with (
        httpx.Client(base_url=url, timeout=60) as client,
        psycopg.connect(stack.db_uri, autocommit=True) as conn,
    ):
        for _ in range(jobs):
            job_id = client.post("/", json={}).json()["jobId"]
            deadline = time.monotonic() + 60
            while _unclaimed(conn, job_id):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the floor's job {job_id} was not claimed")
                time.sleep(0.02)
            ids.append(job_id)
            time.sleep(0.02)
    return started_minus_created(stack, ids)


def _unclaimed(conn: psycopg.Connection[Any], job_id: str) -> bool:
    row = conn.execute("select started_at is null from ai_jobs where id = %s", (job_id,))
    return bool(row.fetchone() == (True,))


def started_minus_created(stack: LocalStack, ids: list[str]) -> dict[str, float]:
    with psycopg.connect(stack.db_uri) as conn:
        rows = conn.execute(
            "select extract(epoch from started_at - created_at) * 1000 from ai_jobs"
            " where id = any(%s::uuid[])",
            (ids,),
        ).fetchall()
    return dict(percentiles([float(r[0]) for r in rows]))


def jobs_running(
    stack: LocalStack,
    http: httpx.Client,
    pids: dict[str, int],
    jobs: int,
    *,
    poll: bool = True,
    watcher: Watcher | None = None,
) -> dict[str, Any]:
    """Creates from 8 threads while the jobs they start run, with ``poll`` a poller beside
    them; then the CPU each process spent per job (until ``watcher`` has had every job's
    completion) and the burst's throughput."""
    polls: list[float] = []
    stop_polling = threading.Event()
    probe = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
    wait_final(stack.db_uri, [probe])

    def poller() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            while poll and not stop_polling.is_set():
                began = time.perf_counter()
                client.get(GET.path(probe))
                polls.append((time.perf_counter() - began) * 1000)
                time.sleep(0.05)

    creates: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()

    def create(_: int) -> None:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            began = time.perf_counter()
            response = client.post(CREATE.path(), json={"query": COMPLEX})
            with lock:
                creates.append((time.perf_counter() - began) * 1000)
                ids.append(response.json()["jobId"])

    meter = CpuMeter(pids).start()
    poll_thread = threading.Thread(target=poller)
    poll_thread.start()
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(jobs)))
    wait_final(stack.db_uri, ids)
    elapsed = time.perf_counter() - began
    if watcher is not None:
        watcher.drain(ids)
    stop_polling.set()
    poll_thread.join()
    meter.stop()
    cpu = meter.per(jobs)
    # the AI work's own CPU as the processor measured it for each job (its thread's CPU
    # time, logged with the completion): the same work under this burst's load
    ai = ai_cpu_ms(stack.log_text("functions"), set(ids))
    return {
        "createMs": percentiles(creates),
        **({"pollMs": percentiles(polls)} if poll else {}),
        "burst": {
            "jobs": jobs,
            "seconds": round(elapsed, 3),
            "jobsPerSecond": round(jobs / elapsed, 2),
        },
        "cpuMsPerJob": {**cpu, "total": round(sum(cpu.values()), 3)},
        **({"aiCpuMsPerJobInPlace": round(sum(ai) / len(ai), 2)} if len(ai) == jobs else {}),
    }


# --- the run -----------------------------------------------------------------------------------


def api_under_load(
    stack: LocalStack,
    floors: dict[str, Any],
    pids: dict[str, int],
    requests: int,
    finished_id: str,
    *,
    rounds: int,
) -> dict[str, Any]:
    """``finished_id``: a job that ran, so a get with ``?logs=true`` has logs to send."""
    tasks = stack.tasks_client()
    floor_insert = floors["insert_row"]
    floor_select = floors["select_row"]
    with httpx.Client(base_url=floor_insert["url"], timeout=60) as client:
        floor_id = client.post("/", json={"query": COMPLEX}).json()["id"]
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        job_id = client.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
    with httpx.Client(base_url=floors["create_with_clients"]["url"], timeout=60) as client:
        clients_job_id = client.post("/", json={}).json()["jobId"]
    shared_cpu = {k: v for k, v in pids.items() if k in {"front", "gateway", "postgres"}}
    gateway_cpu = {k: v for k, v in pids.items() if k in {"gateway", "postgres"}}
    out: dict[str, Any] = {}
    cases = [
        (
            "floor INSERT (psycopg)",
            floor_insert["url"],
            lambda c, i: c.post("/", json={"query": COMPLEX, "i": i}),
            202,
            {"function": floor_insert["pid"], "postgres": pids["postgres"]},
        ),
        (
            "create job (202)",
            stack.base_url,
            lambda c, i: c.post(CREATE.path(), json={"query": COMPLEX, "metadata": {"i": i}}),
            202,
            {"function": pids[CREATE.name], "emulator": pids["emulator"], **shared_cpu},
        ),
        (
            CLIENTS_CREATE,
            floors["create_with_clients"]["url"],
            lambda c, i: c.post("/", json={"i": i}),
            202,
            {
                "function": floors["create_with_clients"]["pid"],
                "emulator": pids["emulator"],
                **gateway_cpu,
            },
        ),
        (
            "floor SELECT (psycopg)",
            floor_select["url"],
            lambda c, i: c.get(f"/{floor_id}"),
            200,
            {"function": floor_select["pid"], "postgres": pids["postgres"]},
        ),
        (
            "get job (200)",
            stack.base_url,
            lambda c, i: c.get(GET.path(job_id)),
            200,
            {"function": pids[GET.name], **shared_cpu},
        ),
        (
            CLIENTS_GET,
            floors["get_with_clients"]["url"],
            lambda c, i: c.get(f"/{clients_job_id}"),
            200,
            {"function": floors["get_with_clients"]["pid"], **gateway_cpu},
        ),
        (
            "get job with logs (finished job)",
            stack.base_url,
            lambda c, i: c.get(GET.path(finished_id) + "?logs=true"),
            200,
            {"function": pids[GET.name], **shared_cpu},
        ),
        (
            "list jobs (20 per page)",
            stack.base_url,
            lambda c, i: c.get(LIST.path()),
            200,
            {"function": pids[LIST.name], **shared_cpu},
        ),
        (
            CLIENTS_LIST,
            floors["list_with_clients"]["url"],
            lambda c, i: c.get("/"),
            200,
            {"function": floors["list_with_clients"]["pid"], **gateway_cpu},
        ),
    ]
    # Alternated rounds: each floor runs right before the operations measured against it, in
    # every round, so a ratio compares figures taken moments apart (the machine's load drifts
    # over a run far more than between neighbours); each case keeps its median round.
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
    for round_ in range(rounds):
        if rounds > 1:
            say(f"  -- round {round_ + 1} of {rounds}")
        # every round from the same state: the rounds before it deleted from the table, and
        # their tasks (held by the paused queue) purged
        forget_api_jobs(stack, keep=[finished_id, job_id, clients_job_id])
        tasks.purge_queue(name=stack.queue_path)
        for name, url, call, expect, cpu in cases:
            result = load(
                url, call, connections=CONNECTIONS, requests=requests, expect=expect, cpu=cpu
            )
            runs[name].append(json_ready(result))
            row(name, result, "function")
    for name, results in runs.items():
        by_p90 = sorted(results, key=lambda r: float(r["latencyMs"]["p90"]))
        out[name] = {**by_p90[len(by_p90) // 2], "rounds": results}
    return out


CLIENTS_CREATE = "floor supabase-py + CreateTask"
CLIENTS_GET = "floor supabase-py get_job"
CLIENTS_LIST = "floor supabase-py list_jobs"
#: (measure, project row, floor row, figure, goal): the issue's goals at 16 connections; then,
#: without a goal, how the function CPU splits: the client libraries' floor over the psycopg
#: floor (what DESIGN.md's clients cost) and the project over the libraries' floor (what our
#: code costs)
RATIOS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("create p90 / INSERT floor p90", "create job (202)", "floor INSERT (psycopg)", "p90", 2.5),
    ("get p90 / SELECT floor p90", "get job (200)", "floor SELECT (psycopg)", "p90", 2.0),
    ("create CPU / INSERT floor CPU", "create job (202)", "floor INSERT (psycopg)", "cpu", 1.5),
    ("get CPU / SELECT floor CPU", "get job (200)", "floor SELECT (psycopg)", "cpu", 1.5),
    (
        "list CPU / SELECT floor CPU",
        "list jobs (20 per page)",
        "floor SELECT (psycopg)",
        "cpu",
        1.5,
    ),
    (
        "clients floor CPU / INSERT floor",
        CLIENTS_CREATE,
        "floor INSERT (psycopg)",
        "cpu",
        None,
    ),
    ("create CPU / clients floor CPU", "create job (202)", CLIENTS_CREATE, "cpu", None),
    ("clients floor CPU / SELECT floor", CLIENTS_GET, "floor SELECT (psycopg)", "cpu", None),
    ("get CPU / clients floor CPU", "get job (200)", CLIENTS_GET, "cpu", None),
    ("list CPU / clients floor CPU", "list jobs (20 per page)", CLIENTS_LIST, "cpu", None),
)


def api_ratios(api: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each project figure over its floor's from the same run, beside the goal."""

    def figure(run: dict[str, Any], which: str) -> float:
        if which == "cpu":
            return float(run["cpuMsPerRequest"]["function"])
        return float(run["latencyMs"][which])

    out: dict[str, Any] = {}
    for name, ours, floor, which, goal in RATIOS:
        # the ratio of each round (a floor and its operation measured moments apart), median
        per_round = sorted(
            round(figure(mine, which) / figure(base, which), 2)
            for mine, base in zip(api[ours]["rounds"], api[floor]["rounds"], strict=True)
        )
        ratio = per_round[len(per_round) // 2]
        out[name] = {"ratio": ratio, "goal": goal, "rounds": per_round}
        target = f"goal <= {goal}x" if goal is not None else "no goal"
        say(f"  {name:<34} {ratio:5.2f}x   ({target}; rounds {per_round})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}; a partial run prints its figures"
        " and writes nothing unless --json names a file",
    )
    parser.add_argument("--json", type=Path, help="where a partial run writes its figures")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")
    requests = 160 if args.quick else 640
    jobs = 20 if args.quick else 60
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # other work on the machine blurs the wall-clock figures, not the CPU ones
            "loadAverageAtStart": round(os.getloadavg()[0], 2),
        },
        "connections": CONNECTIONS,
    }
    env = dict(RAISED_CAPS)
    with tempfile.TemporaryDirectory(prefix="ajq-bench-") as tmp:
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=env)
        with LocalStack(config) as stack, httpx.Client(base_url=stack.base_url, timeout=60) as http:
            floors, floor_processes = start_floors(stack, with_clients=True)
            try:
                results.update(
                    run_all(
                        stack,
                        http,
                        floors,
                        requests=requests,
                        jobs=jobs,
                        quick=args.quick,
                        parts=parts,
                    )
                )
            finally:
                for process in floor_processes:
                    stop(process)
    if parts != set(PARTS):
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    from scripts import bench_chart

    bench_chart.draw(results, args.out / "bench.png")
    say(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


def run_all(
    stack: LocalStack,
    http: httpx.Client,
    floors: dict[str, Any],
    *,
    requests: int,
    jobs: int,
    quick: bool,
    parts: set[str],
) -> dict[str, Any]:
    servers = host_pids(stack.log_text("functions"))
    postmaster = postmaster_pid(stack.db_uri)
    pids = {name: worker_pid(pid) for name, pid in servers.items()}
    pids |= {
        "front": stack.processes["functions"].pid,
        "gateway": stack.processes["gateway"].pid,
        "emulator": stack.processes["tasks-emulator"].pid,
        "postgres": postmaster,
    }
    results: dict[str, Any] = {}
    tasks = stack.tasks_client()
    # warm every path once
    finished = http.post(CREATE.path(), json={"query": COMPLEX}).json()["jobId"]
    wait_final(stack.db_uri, [finished])
    http.get(LIST.path())
    http.get(GET.path(finished) + "?logs=true")

    if "api" in parts:
        say(f"\n== API at {CONNECTIONS} keep-alive connections, queue paused ==")
        tasks.pause_queue(name=stack.queue_path)
        results["apiQueuePaused"] = api_under_load(
            stack, floors, pids, requests, finished, rounds=1 if quick else 3
        )
        results["apiRatios"] = api_ratios(results["apiQueuePaused"])
    if "trips" in parts:
        say("\n== round trips per operation (Supabase HTTP requests, Cloud Tasks calls) ==")
        results["roundTrips"] = round_trips(stack)
        for name, counts in results["roundTrips"].items():
            say(f"  {name:<34} Supabase {counts['supabase']}  Cloud Tasks {counts['cloudTasks']}")
    if "pieces" in parts:
        say("\n== CPU per call, layer by layer (one call at a time, in this process) ==")
        results["cpuPieces"] = cpu_pieces(stack, floors["uri"], 100 if quick else 300)
    if "cold" in parts:
        say("\n== cold start: process start -> first answered request ==")
        results["coldStartMs"] = cold_starts(stack, http, 1 if quick else 3)
    # The creates above left thousands of queued jobs: drop their tasks (the reaper is off, so
    # they stay queued and idle) so the job figures below measure only their own jobs.
    tasks.purge_queue(name=stack.queue_path)
    forget_api_jobs(stack, keep=[finished])
    tasks.resume_queue(name=stack.queue_path)
    # The peer first: the jobs part ends with a Realtime watcher, whose change capture (as
    # the real server's) lingers for minutes after the watcher left and would decode the
    # peer's WAL too, counted as the peer's Postgres CPU.
    if "peer" in parts:
        results["peer"] = peer_part(stack, postmaster, quick=quick)
    if "jobs" in parts:
        results["jobs"] = jobs_part(stack, http, pids, postmaster, floors, jobs=jobs, quick=quick)
    return results


def forget_api_jobs(stack: LocalStack, *, keep: list[str]) -> None:
    """Delete the jobs earlier API load left queued (its caps raised to a million), all but
    ``keep``, and let Postgres see the table as it is. Otherwise every later create_job would
    count those thousands of rows against its caps (the last minute's and the unfinished jobs of
    the user) — growing with each round — which a user never has where the caps hold (30 a
    minute, 10 unfinished), and which the floors and the peer never pay."""
    with psycopg.connect(stack.db_uri, autocommit=True) as conn:
        conn.execute("delete from public.ai_jobs where id <> all(%s::uuid[])", (keep,))
        conn.execute("vacuum analyze public.ai_jobs")
        conn.execute("vacuum analyze public.ai_job_logs")


def jobs_part(
    stack: LocalStack,
    http: httpx.Client,
    pids: dict[str, int],
    postmaster: int,
    floors: dict[str, Any],
    *,
    jobs: int,
    quick: bool,
) -> dict[str, Any]:
    say("\n== jobs (local writer) ==")
    ai_ms = ai_work_cpu_ms()
    pickup = pickup_ms(stack, http, 10 if quick else 20)
    pickup_floor = pickup_floor_ms(stack, floors, 10 if quick else 20)
    queue_pids = {k: pids[k] for k in (PROCESS.name, "front", "gateway", "emulator")}
    queue_pids["postgres"] = postmaster
    burst_pids = {**queue_pids, CREATE.name: pids[CREATE.name]}
    # latencies with a client polling a finished job (its ~90 kB result) every 50 ms
    running = jobs_running(stack, http, burst_pids, jobs)
    # the queue's own cost, what the peer's figure is: creates and jobs, nobody watching
    quiet = jobs_running(stack, http, burst_pids, jobs, poll=False)
    # the same with one Realtime subscriber
    with Watcher(f"{stack.api_url}/realtime/v1", stack.service_key) as watcher:
        watched = jobs_running(stack, http, burst_pids, jobs, poll=False, watcher=watcher)

    def queue_cpu(burst: dict[str, Any]) -> float:
        return float(sum(v for k, v in burst["cpuMsPerJob"].items() if k in queue_pids))

    def ai_in(burst: dict[str, Any]) -> float:
        # the AI work as the processor measured it during this burst (the same work under the
        # same load), or, from a tree whose processor does not log it, measured alone
        return float(burst.get("aiCpuMsPerJobInPlace", ai_ms))

    result = {
        "aiWorkCpuMsPerJob": ai_ms,
        "aiWorkCpuMsPerJobInPlace": ai_in(quiet),
        "pickupMs": pickup,
        "pickupClientsFloorMs": pickup_floor,
        **running,
        "queueOwnCpuMsPerJobWithPoller": round(queue_cpu(running) - ai_in(running), 2),
        "quietCpuMsPerJob": quiet["cpuMsPerJob"],
        # the queue's own CPU per job: all its processes in a burst nobody polls or watches,
        # less the AI work measured in place; against the AI work measured alone (on a shared
        # machine the two differ by a few ms either way) it was queueOwnCpuMsPerJobAiAlone
        "queueOwnCpuMsPerJob": round(queue_cpu(quiet) - ai_in(quiet), 2),
        "queueOwnCpuMsPerJobAiAlone": round(queue_cpu(quiet) - ai_ms, 2),
        "realtimeWatcher": {
            "cpuMsPerJob": watched["cpuMsPerJob"],
            "eventsPerJob": round(watcher.events / jobs, 1),
            "extraCpuMsPerJob": round(queue_cpu(watched) - queue_cpu(quiet), 2),
        },
    }
    say(f"  AI work alone                      {ai_ms:.1f} ms CPU per job")
    say(f"  pickup created -> claimed          p50 {pickup['p50']:.1f}  p90 {pickup['p90']:.1f} ms")
    say(
        f"  the same, client-library floor     p50 {pickup_floor['p50']:.1f}"
        f"  p90 {pickup_floor['p90']:.1f} ms"
    )
    say(
        f"  create while jobs run              p90 {running['createMs']['p90']:.1f} ms"
        f"   poll p90 {running['pollMs']['p90']:.1f} ms"
    )
    say(
        f"  burst of {jobs} jobs                   {running['burst']['jobsPerSecond']} jobs/s;"
        f" CPU per job {running['cpuMsPerJob']}"
    )
    say(f"  the same burst, nobody polling     CPU per job {quiet['cpuMsPerJob']}")
    say(
        f"  queue's own CPU per job            {result['queueOwnCpuMsPerJob']} ms, nobody"
        f" polling or watching, as the peer, beyond the AI work measured in place"
        f" ({result['aiWorkCpuMsPerJobInPlace']} ms in the processor; against the AI work"
        f" alone: {result['queueOwnCpuMsPerJobAiAlone']} ms; with the poller beside:"
        f" {result['queueOwnCpuMsPerJobWithPoller']} ms)"
    )
    rt = result["realtimeWatcher"]
    say(f"  the same, one Realtime watcher     CPU per job {rt['cpuMsPerJob']}")
    say(
        f"  + one Realtime watcher             {rt['extraCpuMsPerJob']} ms CPU per job"
        f" ({rt['eventsPerJob']} events per job)"
    )

    return result


def peer_part(stack: LocalStack, postmaster: int, *, quick: bool) -> dict[str, Any]:
    say("\n== peer: Procrastinate on the same Postgres (no-op task) ==")
    assert stack.pg is not None
    peer_uri = stack.pg.create_database("bench_peer")
    peer = bench_peer.measure(
        peer_uri, postmaster, sequential=10 if quick else 20, burst=100 if quick else 200
    )
    say(f"  pickup deferred -> started         p50 {peer['pickupMs']['p50']:.1f} ms")
    burst = peer["burst"]
    say(f"  burst of {burst['jobs']} jobs                  {burst['jobsPerSecond']} jobs/s")
    say(f"  CPU per job                        {peer['cpuMsPerJob']}")
    return peer


if __name__ == "__main__":
    sys.exit(main())
