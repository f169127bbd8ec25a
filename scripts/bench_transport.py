"""A/B of the store's httpx transport: this tree's ``shared/transport.py`` against another's.

The CPU of the calling thread per call (``time.thread_time``: the server's work and other
threads are not counted), for a plain ``httpx.Client.post(...).json()`` and for supabase-py's
``rpc().execute()``, each through either tree's ``KeepAliveTransport``, in alternated rounds
(A B, B A, ...). The server is a subprocess answering every POST as PostgREST answers an RPC
(its headers, a job row of about 500 bytes), so only the client side differs.

    git archive <rev> | tar -x -C /tmp/base
    .venv/bin/python scripts/bench_transport.py --base /tmp/base
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_ID = "0b9d6c1e-8f0e-4a57-9a47-3b1b2f0c1d2e"
#: an anon-key-shaped token: supabase-py checks the key's form
KEY = "eyJ" + "a" * 100 + "." + "b" * 60 + "." + "c" * 40

SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = json.dumps({"id": sys.argv[1], "query": "x" * 200, "status": "queued", "progress": 0,
                   "result": None, "metadata": {}, "created_at": "2026-11-27T23:00:00+00:00"})
body = body.encode()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        for name, value in [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Range", "0-0/*"), ("Content-Profile", "public"),
                            ("Vary", "Accept-Encoding"), ("Content-Length", str(len(body)))]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def transport_module(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "shared" / "transport.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thread_ms(call: Callable[[], Any], calls: int) -> float:
    for _ in range(50):
        call()
    began = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - began) * 1000 / calls


def main(argv: list[str] | None = None) -> int:
    from supabase import ClientOptions, create_client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="tree A (e.g. a git archive)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-c", SERVER, JOB_ID], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        modules = {
            "A": transport_module(args.base.resolve(), "transport_a"),
            "B": transport_module(REPO_ROOT, "transport_b"),
        }
        http = {
            k: httpx.Client(transport=m.KeepAliveTransport(), timeout=20)
            for k, m in modules.items()
        }
        supabase = {
            k: create_client(
                base,
                KEY,
                options=ClientOptions(
                    httpx_client=client, auto_refresh_token=False, persist_session=False
                ),
            )
            for k, client in http.items()
        }
        body = json.dumps({"p_job_id": JOB_ID, "p_user_id": "anonymous"}).encode()
        params = {"p_job_id": JOB_ID, "p_user_id": "anonymous"}
        headers = {
            "apikey": KEY,
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
        }
        cases: dict[str, Callable[[str], Callable[[], Any]]] = {
            "httpx.Client.post().json()": lambda k: (
                lambda: (
                    http[k]
                    .post(f"{base}/rest/v1/rpc/get_job", content=body, headers=headers)
                    .json()
                )
            ),
            "supabase-py rpc().execute()": lambda k: (
                lambda: supabase[k].rpc("get_job", params).execute()
            ),
        }
        print(f"load average at start: {os.getloadavg()}")
        for name, make in cases.items():
            figures: dict[str, list[float]] = {"A": [], "B": []}
            for number in range(args.rounds):
                for label in ("A", "B") if number % 2 == 0 else ("B", "A"):
                    figures[label].append(thread_ms(make(label), args.calls))
            a, b = (statistics.median(figures[k]) for k in ("A", "B"))
            print(
                f"{name:<30} A {a:.3f}  B {b:.3f} ms CPU per call (B/A {b / a:.2f}; medians of "
                f"{args.rounds} alternated rounds of {args.calls})"
            )
        print(f"load average at end: {os.getloadavg()}")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
