"""The whole local stack: Postgres, the local Supabase (REST gateway, Auth and Realtime under
one base URL), the Cloud Tasks emulator, the function host and a stand-in for Cloud Scheduler
that calls the reaper. ``make stack`` prints the Supabase values under the names
``supabase status -o json`` uses and writes them to ``.local/status.json``.

Each service runs as its own process (so a test can kill the function host mid-job, as a
crashed Cloud Functions instance would die) and the production code reaches each through
its real client, configured only by environment variables.

    python -m infra.local.stack            # make stack: serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from infra.local.host import free_port  # one definition (tests import it from here too)
from infra.local.postgres import DEFAULT_DATA_DIR, Postgres, start_postgres
from shared.functions import CONSOLE, FUNCTIONS, PROCESS, REAP

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The Supabase CLI's local JWT secret: local only, never a production value.
LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
PROJECT = "local-project"
LOCATION = "asia-northeast1"
QUEUE = "ai-jobs"
DATABASE = "ai_jobs"


@dataclass
class StackConfig:
    host_port: int = 8080
    gateway_port: int = 54321
    emulator_port: int = 8123
    data_dir: Path = DEFAULT_DATA_DIR
    #: use this database (e.g. one the tests created on their server) instead of starting one
    database_uri: str | None = None
    log_dir: Path | None = None
    #: seconds between reaper calls (the local Cloud Scheduler); 0 turns it off
    reap_interval_s: float = 60.0
    #: extra environment for the function host (overrides the defaults below)
    function_env: dict[str, str] = field(default_factory=dict)
    #: queue retry configuration (Cloud Tasks RetryConfig), small for local runs
    min_backoff_s: float = 1.0
    max_backoff_s: float = 10.0
    max_doublings: int = 3
    max_task_attempts: int = 5
    max_concurrent_dispatches: int = 10
    quiet: bool = False
    #: give the functions SUPABASE_JWT_SECRET, so a Bearer access token acts as its ``sub``
    #: (visitors signed in through the local Auth); tests that name users with X-User-Id
    #: (trusted only without it) turn it off
    jwt_identity: bool = True

    @classmethod
    def for_tests(cls, tmp: Path, **overrides: Any) -> StackConfig:
        """Free ports and a private data folder, so tests never collide with a running stack."""
        overrides.setdefault("jwt_identity", False)
        return cls(
            host_port=free_port(),
            gateway_port=free_port(),
            emulator_port=free_port(),
            data_dir=tmp / "pgdata",
            log_dir=tmp / "logs",
            quiet=True,
            **overrides,
        )


class LocalStack:
    """Starts everything, waits until each answers, and stops it all (a context manager)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.pg: Postgres | None = None
        self.db_uri = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="ajq-logs-"))
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self.secret = secrets.token_urlsafe(24)
        self.service_key = ""
        self.function_env: dict[str, str] = {}
        self._groups: set[int] = set()  #: pids of the process groups this stack leads

    # --- addresses ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.config.host_port}"

    @property
    def gateway_url(self) -> str:
        """The local Supabase's one base URL (REST, Auth and Realtime)."""
        return f"http://127.0.0.1:{self.config.gateway_port}"

    @property
    def api_url(self) -> str:
        return self.gateway_url

    @property
    def anon_key(self) -> str:
        from infra.local.keys import api_key

        return api_key(LOCAL_JWT_SECRET, "anon")

    def status(self) -> dict[str, str]:
        """What ``supabase status -o json`` reports, plus where the functions are."""
        return {
            "API_URL": self.api_url,
            "REST_URL": f"{self.api_url}/rest/v1",
            "REALTIME_URL": f"{self.api_url.replace('http', 'ws', 1)}/realtime/v1",
            "DB_URL": self.db_uri,
            "ANON_KEY": self.anon_key,
            "SERVICE_ROLE_KEY": self.service_key,
            "JWT_SECRET": LOCAL_JWT_SECRET,
            "FUNCTIONS_URL": self.base_url,
        }

    @property
    def emulator_host(self) -> str:
        return f"127.0.0.1:{self.config.emulator_port}"

    @property
    def queue_path(self) -> str:
        return f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def say(self, message: str) -> None:
        if not self.config.quiet:
            print(message, flush=True)

    def start(self) -> None:
        from infra.local.keys import api_key
        from infra.local.migrate import apply_migrations

        self._log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.database_uri:
            self.db_uri = self.config.database_uri
        else:
            self.say("starting Postgres ...")
            self.pg = start_postgres(self.config.data_dir)
            self._ensure_database()
        applied = apply_migrations(self.db_uri)
        self.say(f"  migrations applied now: {', '.join(applied) or 'none pending'}")
        self.service_key = api_key(LOCAL_JWT_SECRET, "service_role")
        self.start_gateway()
        self.start_emulator()
        self.function_env = self._function_env()
        self.start_host()
        if self.config.reap_interval_s > 0:
            self._scheduler = threading.Thread(target=self._schedule_reaper, daemon=True)
            self._scheduler.start()

    def _ensure_database(self) -> None:
        import psycopg

        assert self.pg is not None
        if os.environ.get("DATABASE_URL"):
            self.db_uri = self.pg.uri
            return
        with psycopg.connect(self.pg.uri, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{DATABASE}"')
        self.db_uri = self.pg.database_uri(DATABASE)

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, *, group: bool = False
    ) -> None:
        log = (self._log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            # the function host is a supervisor and one server per function: one group, so
            # killing it kills every instance at once
            start_new_session=group,
        )
        if group:
            self._groups.add(self.processes[name].pid)

    def start_gateway(self) -> None:
        self.say(f"starting the local Supabase (REST, Auth, Realtime) on {self.gateway_url} ...")
        self._spawn(
            "gateway",
            [
                "infra.local.supabase_server",
                "--db-uri",
                self.db_uri,
                "--jwt-secret",
                LOCAL_JWT_SECRET,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.config.gateway_port),
            ],
            # a service of its own, as the function host: in the caller's session (the kernel
            # groups a session's threads for CPU) its one event-loop thread was weighed
            # against every thread of the caller, e.g. the benchmark's sixteen clients
            group=True,
        )
        # with the key: Supabase's API gateway (Kong key-auth) guards /rest/v1/ whole
        ready = f"{self.gateway_url}/rest/v1/?apikey={self.anon_key}"
        self._wait("gateway", lambda: httpx.get(ready).status_code == 200)

    def start_emulator(self) -> None:
        self.say(f"starting the Cloud Tasks emulator on {self.emulator_host} ...")
        self._spawn(
            "tasks-emulator",
            [
                "infra.local.tasks_emulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.config.emulator_port),
            ],
        )
        self._wait("tasks-emulator", self._create_queue)

    def _create_queue(self) -> bool:
        from google.api_core import exceptions as gexc
        from google.cloud import tasks_v2
        from google.protobuf import duration_pb2

        client = self.tasks_client()
        c = self.config
        queue = tasks_v2.Queue(
            name=self.queue_path,
            rate_limits=tasks_v2.RateLimits(
                max_concurrent_dispatches=c.max_concurrent_dispatches,
                max_dispatches_per_second=50,
            ),
            retry_config=tasks_v2.RetryConfig(
                max_attempts=c.max_task_attempts,
                min_backoff=duration_pb2.Duration(nanos=0, seconds=int(c.min_backoff_s)),
                max_backoff=duration_pb2.Duration(seconds=int(c.max_backoff_s)),
                max_doublings=c.max_doublings,
            ),
        )
        try:
            client.create_queue(
                parent=f"projects/{PROJECT}/locations/{LOCATION}", queue=queue, timeout=2
            )
        except gexc.AlreadyExists:
            pass
        except gexc.GoogleAPIError:
            return False
        finally:
            client.transport.close()
        return True

    def tasks_client(self) -> Any:
        from shared.tasks import emulator_client

        return emulator_client(self.emulator_host)

    def _function_env(self) -> dict[str, str]:
        env = {
            "SUPABASE_URL": self.gateway_url,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_key,
            "GCP_PROJECT": PROJECT,
            "FUNCTION_REGION": LOCATION,
            "TASKS_LOCATION": LOCATION,
            "TASKS_QUEUE": QUEUE,
            "CLOUD_TASKS_EMULATOR_HOST": self.emulator_host,
            "PROCESSOR_URL": PROCESS.url(self.base_url),
            "REAPER_URL": REAP.url(self.base_url),
            "PROCESSOR_SHARED_SECRET": self.secret,
            "PUBLIC_BASE_URL": self.base_url,
            "AI_WRITER": "local",
            "REAP_GRACE_S": "30",
            "PYTHONUNBUFFERED": "1",
        }
        if self.config.jwt_identity:
            env["SUPABASE_JWT_SECRET"] = LOCAL_JWT_SECRET
            # the console signs visitors in anonymously and follows their jobs over Realtime
            env["SUPABASE_ANON_KEY"] = self.anon_key
        env.update(self.config.function_env)
        return env

    def start_host(self, extra_env: dict[str, str] | None = None) -> None:
        self.say(f"starting the function host on {self.base_url} ...")
        env = {**self.function_env, **(extra_env or {})}
        self._spawn(
            "functions",
            ["infra.local.host", "--host", "127.0.0.1", "--port", str(self.config.host_port)],
            env,
            group=True,
        )
        self._wait("functions", lambda: httpx.get(f"{self.base_url}/").status_code == 200)

    def restart_host(self, extra_env: dict[str, str] | None = None) -> None:
        """Kill the function host and start it again (with other settings, if given)."""
        self.kill("functions")
        self.start_host(extra_env)

    def kill(self, name: str) -> None:
        """Kill one service at once (SIGKILL): a crashed instance, or a service that is down."""
        process = self.processes.pop(name, None)
        if process is not None:
            process.kill()
            self._kill_group(process.pid)
            process.wait(10)

    def _kill_group(self, pid: int) -> None:
        """SIGKILL whatever is left of a group this stack started (the function host's
        servers outlive a killed supervisor otherwise)."""
        if pid in self._groups:
            self._groups.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def reap(self) -> httpx.Response:
        """What Cloud Scheduler does: call the private reaper."""
        from shared.tasks import SECRET_HEADER

        return httpx.post(REAP.url(self.base_url), headers={SECRET_HEADER: self.secret}, timeout=30)

    def _schedule_reaper(self) -> None:
        while not self._stop.wait(self.config.reap_interval_s):
            try:
                self.reap()
            except httpx.HTTPError:
                continue

    def _wait(self, name: str, ready: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {self._log_dir / name}.log"
                )
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready in {timeout_s:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=35)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            self._kill_group(process.pid)
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def log_text(self, name: str) -> str:
        path = self._log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def print_functions(base_url: str, reap_interval_s: float) -> None:
    """Each function's URL, from the table of functions (shared/functions.py)."""
    notes = {REAP: f"every {reap_interval_s:.0f}s", CONSOLE: "open it in a browser"}
    # the console's page loads its assets relative to its own URL, so it is shown with its /
    urls = {f: f.url(base_url, "") if f is CONSOLE else f.url(base_url) for f in FUNCTIONS}
    width = max(map(len, urls.values()))
    for function, url in urls.items():
        note = "; ".join(filter(None, (function.summary, notes.get(function))))
        print(f"  {url:<{width}}  ({function.access}: {note})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole stack locally until Ctrl-C.")
    defaults = StackConfig()
    parser.add_argument("--port", type=int, default=defaults.host_port, help="function host")
    parser.add_argument(
        "--supabase-port", type=int, default=defaults.gateway_port, help="REST, Auth, Realtime"
    )
    parser.add_argument(
        "--tasks-port", type=int, default=defaults.emulator_port, help="Cloud Tasks emulator"
    )
    parser.add_argument("--reap-interval", type=float, default=defaults.reap_interval_s)
    args = parser.parse_args(argv)
    config = StackConfig(
        host_port=args.port,
        gateway_port=args.supabase_port,
        emulator_port=args.tasks_port,
        reap_interval_s=args.reap_interval,
        log_dir=REPO_ROOT / ".local" / "logs",
    )
    busy = [port for port in (args.port, args.supabase_port, args.tasks_port) if _in_use(port)]
    if busy:
        print(
            f"port {', '.join(map(str, busy))} is in use (another stack?); stop it, or choose"
            " others: make stack ARGS='--port N --supabase-port N --tasks-port N'",
            file=sys.stderr,
        )
        return 2
    stopping = threading.Event()
    # SIGINT too: a shell that starts `make stack &` hands it SIGINT ignored, and Ctrl-C or
    # `kill -INT` must still stop everything
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    with LocalStack(config) as stack:
        status_path = REPO_ROOT / ".local" / "status.json"
        status_path.write_text(json.dumps(stack.status(), indent=2) + "\n")
        print("\nthe stack is up:")
        print_functions(stack.base_url, args.reap_interval)
        print(f"  Cloud Tasks emulator {stack.emulator_host}\n\nlocal Supabase ({status_path}):")
        for key, value in stack.status().items():
            print(f"  {key:<17}{value}")
        print(f"  logs in {config.log_dir}\nCtrl-C stops everything.", flush=True)
        try:
            while not stopping.wait(0.5):
                for name, process in stack.processes.items():
                    if process.poll() is not None:
                        print(f"{name} exited ({process.returncode}); stopping", file=sys.stderr)
                        stopping.set()
        except KeyboardInterrupt:
            pass
        print("stopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
