"""The processor's own cost per delivery, in process: this tree against another revision.

A child process per tree loads ``ai-jobs-process`` as an instance does
(``functions_framework.create_app``) with a local stack's settings and calls its WSGI app
directly, one delivery at a time, with the environ gunicorn builds for a Cloud Tasks request
(no server, front or emulator in the figures). The jobs are real: created through the stack's
API with the queue paused, claimed and completed through its gateway and Postgres. Per child:

- ``toClaimSentUs``: the WSGI call -> the claim request's bytes handed to the socket
  (``shared.transport._send``), p50 and p90 in microseconds: the part of the pickup hop
  "processor has it -> processor sends claim" that is not gunicorn's parsing;
- ``cpuBeyondAiMs``: the process's CPU per delivery (every thread, user + system) less the
  CPU of the AI work (``shared.ai.pipeline.run`` on its own thread): what a job costs the
  processor besides the AI work, as ``scripts/bench.py``'s queue figure counts it.

The trees take turns (A B, B A, ...) on one stack, so other load on the shared machine weighs
on both alike; the median of each figure over the rounds is printed per tree.

    .venv/bin/python scripts/bench_processor.py --compare 0ee0b73 [--rounds 4] [--jobs 60]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the child: one tree's processor, in process ---------------------------------------------


def _environ(job_id: str, secret: str) -> dict[str, Any]:
    """What gunicorn hands the app for a Cloud Tasks delivery of the job's first task."""
    body = json.dumps({"jobId": job_id}).encode()
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "RAW_URI": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_USER_AGENT": "Google-Cloud-Tasks",
        "HTTP_X_CLOUDTASKS_QUEUENAME": "ai-jobs",
        "HTTP_X_CLOUDTASKS_TASKNAME": f"job-{job_id}-d1",
        "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "0",
        "HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT": "0",
        "HTTP_X_AI_JOBS_SECRET": secret,
    }


def child(env: dict[str, str]) -> int:
    """Serve the driver's batches (one JSON line of job ids each) until stdin ends."""
    os.environ.update(env)
    os.environ["K_SERVICE"] = "ai-jobs-process"
    sys.path.insert(0, os.getcwd())
    import functions_framework

    from shared import transport
    from shared.ai import pipeline

    sent: list[float] = []
    send = transport._send

    def noting_send(*args: Any) -> None:
        sent.append(time.perf_counter())
        send(*args)

    transport._send = noting_send  # type: ignore[assignment]
    ai_cpu = [0.0]
    run = pipeline.run

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return run(*args, **kwargs)
        finally:
            ai_cpu[0] += time.thread_time() - began

    pipeline.run = timed_run
    app = functions_framework.create_app("process_job", "functions/ai-jobs-process/main.py")  # type: ignore[no-untyped-call]
    secret = env["PROCESSOR_SHARED_SECRET"]

    def deliver(job_id: str) -> str:
        statuses: list[str] = []

        def start(status: str, headers: object, exc_info: object = None) -> None:
            statuses.append(status)

        b"".join(app(_environ(job_id, secret), start))
        return statuses[0]

    figures_out = sys.stdout
    with open(os.devnull, "w") as function_logs:
        sys.stdout = function_logs  # the function's log lines are not the driver's
        serve_batches(deliver, sent, ai_cpu, figures_out)
    return 0


def serve_batches(
    deliver: Callable[[str], str], sent: list[float], ai_cpu: list[float], out: IO[str]
) -> None:
    for line in sys.stdin:
        ids = json.loads(line)
        deliver(ids[0])  # warm: the first delivery of a batch is not counted
        to_send, ai_cpu[0] = [], 0.0
        began_cpu = time.process_time()
        for job_id in ids[1:]:
            sent.clear()
            began = time.perf_counter()
            status = deliver(job_id)
            if not status.startswith("200") or not sent:
                raise SystemExit(f"delivery of {job_id}: {status}")
            to_send.append((sent[0] - began) * 1e6)
        cpu = time.process_time() - began_cpu
        count = len(ids) - 1
        cuts = statistics.quantiles(to_send, n=10, method="inclusive")
        figures = {
            "toClaimSentUs": {"p50": round(cuts[4], 1), "p90": round(cuts[8], 1)},
            "cpuMsPerDelivery": round(cpu / count * 1000, 3),
            "aiCpuMs": round(ai_cpu[0] / count * 1000, 3),
            "cpuBeyondAiMs": round((cpu - ai_cpu[0]) / count * 1000, 3),
        }
        out.write(json.dumps(figures) + "\n")
        out.flush()


# --- the driver ------------------------------------------------------------------------------


class Child:
    """One tree's child, fed batches of job ids."""

    def __init__(self, label: str, tree: Path, env: dict[str, str]) -> None:
        self.label = label
        script = tree / "scripts" / "bench_processor.py"
        self.process = subprocess.Popen(
            [sys.executable, str(script), "--child", json.dumps(env)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(self, ids: list[str]) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(ids) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise SystemExit(f"the {self.label} child ended")
        return dict(json.loads(line))

    def close(self) -> None:
        pipe: IO[str] | None = self.process.stdin
        if pipe is not None:
            pipe.close()
        self.process.wait(30)


def _median(rounds: list[dict[str, Any]], path: tuple[str, ...]) -> float:
    def pick(figures: dict[str, Any]) -> float:
        value: Any = figures
        for key in path:
            value = value[key]
        return float(value)

    return round(statistics.median(pick(figures) for figures in rounds), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--compare", default=None, help="a git revision to measure too")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=60, help="deliveries per tree per round")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(json.loads(args.child))

    import httpx

    sys.path.insert(0, str(REPO_ROOT))
    from infra.local.stack import LocalStack, StackConfig
    from scripts.bench import COMPLEX
    from scripts.bench_tools import RAISED_CAPS, export_tree

    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this": REPO_ROOT}
        if args.compare:
            base = export_tree(args.compare, Path(tmp) / "base")
            (base / "scripts" / "bench_processor.py").write_bytes(Path(__file__).read_bytes())
            trees = {args.compare: base, **trees}
        config = StackConfig.for_tests(Path(tmp), reap_interval_s=0, function_env=dict(RAISED_CAPS))
        with LocalStack(config) as stack, httpx.Client(base_url=stack.base_url) as http:
            stack.tasks_client().pause_queue(name=stack.queue_path)  # nothing else claims
            children = [Child(label, tree, stack.function_env) for label, tree in trees.items()]
            results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
            try:
                for round_no in range(args.rounds):
                    order = children if round_no % 2 == 0 else children[::-1]
                    for one in order:
                        ids = [
                            http.post("/ai-jobs-create", json={"query": COMPLEX}).json()["jobId"]
                            for _ in range(args.jobs + 1)
                        ]
                        figures = one.measure(ids)
                        results[one.label].append(figures)
                        print(f"round {round_no + 1} {one.label:>8}: {figures}", flush=True)
            finally:
                for one in children:
                    one.close()
    summary = {
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "jobs": args.jobs,
        "median": {
            label: {
                "toClaimSentUsP50": _median(rounds, ("toClaimSentUs", "p50")),
                "toClaimSentUsP90": _median(rounds, ("toClaimSentUs", "p90")),
                "cpuBeyondAiMs": _median(rounds, ("cpuBeyondAiMs",)),
                "aiCpuMs": _median(rounds, ("aiCpuMs",)),
            }
            for label, rounds in results.items()
        },
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
