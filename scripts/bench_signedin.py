"""A/B of the API functions' CPU per request for a signed-in caller: this tree against another.

``scripts/bench_apicpu.py`` calls the functions as the shared anonymous caller. A browser calls
them with its session's access token (``Authorization: Bearer``, from the anonymous sign-in)
on every request, every poll included, and the functions verify it (``shared.identity``).
This starts one local stack with JWT identity on (its Auth signs the visitor in, as the
console does), serves get and create of two source trees as gen2 serves them (one
functions-framework/gunicorn worker each), and, round after round, sends each function
``--requests`` requests with the visitor's token over 16 keep-alive connections, A's and B's
runs of an operation back to back (order flipped each round), metering the worker's CPU.
Prints the median CPU ms per request and p90 per tree and operation, the median B/A ratio of
the pairs and the load average.

    git archive <rev> | tar -x -C /tmp/base
    .venv/bin/python scripts/bench_signedin.py --base /tmp/base --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack, StackConfig
from scripts.bench import COMPLEX
from scripts.bench_apicpu import CONNECTIONS, REPO_ROOT, serve
from scripts.bench_tools import RAISED_CAPS, load, stop
from shared.functions import CREATE, GET, Function

OPERATIONS: dict[str, Function] = {"get": GET, "create": CREATE}


def sign_in(stack: LocalStack) -> str:
    """A visitor's access token from the local Auth's anonymous sign-in (POST /signup)."""
    response = httpx.post(
        f"{stack.gateway_url}/auth/v1/signup", json={}, headers={"apikey": stack.anon_key}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def measure(url: str, pid: int, operation: str, *, token: str, job_id: str, requests: int) -> Any:
    auth = {"Authorization": f"Bearer {token}"}
    if operation == "get":
        return load(
            url,
            lambda c, i: c.get(f"/{job_id}", headers=auth),
            connections=CONNECTIONS,
            requests=requests,
            expect=200,
            cpu={"function": pid},
        )
    return load(
        url,
        lambda c, i: c.post("/", json={"query": COMPLEX, "metadata": {"i": i}}, headers=auth),
        connections=CONNECTIONS,
        requests=requests,
        expect=202,
        cpu={"function": pid},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="tree A (e.g. a git archive)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=640)
    args = parser.parse_args(argv)
    trees = {"A": args.base.resolve(), "B": REPO_ROOT}
    env = dict(RAISED_CAPS)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ajq-signedin-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp), reap_interval_s=0, function_env=env, jwt_identity=True
        )
        with LocalStack(config) as stack:
            stack.tasks_client().pause_queue(name=stack.queue_path)
            token = sign_in(stack)
            served: dict[tuple[str, str], tuple[str, int]] = {}
            processes = []
            try:
                for label, tree in trees.items():
                    for operation, function in OPERATIONS.items():
                        process, url, pid = serve(
                            tree, function.entry_point, function.source(tree), stack.function_env
                        )
                        processes.append(process)
                        served[label, operation] = (url, pid)
                with httpx.Client(base_url=served["B", "create"][0], timeout=60) as client:
                    created = client.post(
                        "/", json={"query": COMPLEX}, headers={"Authorization": f"Bearer {token}"}
                    )
                    job_id = created.json()["jobId"]
                for number in range(args.rounds):
                    order = ("A", "B") if number % 2 == 0 else ("B", "A")
                    for operation in OPERATIONS:
                        pair = {}
                        for label in order:
                            url, pid = served[label, operation]
                            result = measure(
                                url,
                                pid,
                                operation,
                                token=token,
                                job_id=job_id,
                                requests=args.requests,
                            )
                            pair[label] = result.cpu_ms_per_request["function"]
                            figures.setdefault(f"{label} {operation} cpu", []).append(pair[label])
                            figures.setdefault(f"{label} {operation} p90", []).append(
                                result.latency_ms["p90"]
                            )
                        figures.setdefault(f"B/A {operation}", []).append(pair["B"] / pair["A"])
                    figures.setdefault("load", []).append(os.getloadavg()[0])
                    print(f"round {number + 1}/{args.rounds} done (order {''.join(order)})")
            finally:
                for process in processes:
                    stop(process)
    report(figures, args.rounds)
    return 0


def report(figures: dict[str, list[float]], count: int) -> None:
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nsigned-in caller, medians over {count} alternated rounds, {CONNECTIONS} connections")
    for operation in OPERATIONS:
        a, b = med[f"A {operation} cpu"], med[f"B {operation} cpu"]
        print(
            f"  {operation:<7} CPU ms/req A {a:.3f}  B {b:.3f}  B/A of pairs "
            f"{med[f'B/A {operation}']:.2f}   p90 ms A {med[f'A {operation} p90']:.1f}  "
            f"B {med[f'B {operation} p90']:.1f}"
        )
        print(
            f"          rounds A {[round(v, 3) for v in figures[f'A {operation} cpu']]}"
            f"  B {[round(v, 3) for v in figures[f'B {operation} cpu']]}"
        )
    print(f"  load average per round: {[round(v, 2) for v in figures['load']]}")


if __name__ == "__main__":
    raise SystemExit(main())
