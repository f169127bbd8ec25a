"""``python -m client``: create, follow, list and cancel jobs from a shell.

    python -m client submit "모든 서버 분석하고 최적화 리포트 만들어줘" --wait
    python -m client get <jobId>
    python -m client list --status completed
    python -m client cancel <jobId>

The base URL comes from ``--base-url`` or ``AI_JOBS_URL`` (default the local stack,
``http://127.0.0.1:8080``); ``--user`` sets ``X-User-Id``. With a Supabase URL and anon key
(``--supabase-url``/``SUPABASE_URL``, ``--anon-key``/``SUPABASE_ANON_KEY``, or ``--local`` to
take them from ``make stack``'s ``.local/status.json``) the client signs in anonymously: the
jobs are that visitor's own and ``--wait`` follows them through Supabase Realtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from supabase_auth.errors import AuthRetryableError

from client import AIJobsClient, APIError, follow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url", default=os.environ.get("AI_JOBS_URL", "http://127.0.0.1:8080")
    )
    parser.add_argument("--user", help="X-User-Id to act as")
    parser.add_argument("--supabase-url", default=os.environ.get("SUPABASE_URL"))
    parser.add_argument("--anon-key", default=os.environ.get("SUPABASE_ANON_KEY"))
    parser.add_argument(
        "--local", action="store_true", help="URLs and keys from .local/status.json"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="create a job (or get the synchronous answer)")
    submit.add_argument("query")
    submit.add_argument("--type", choices=["analysis", "report", "optimization", "prediction"])
    submit.add_argument("--priority", choices=["low", "normal", "high"])
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="follow the job and print its result")
    submit.add_argument("--poll", type=float, help="poll interval in seconds (default: server's)")
    for name in ("get", "wait", "cancel"):
        command = commands.add_parser(name)
        command.add_argument("job_id")
        if name == "wait":
            command.add_argument("--poll", type=float)
    listing = commands.add_parser("list")
    listing.add_argument("--status")
    listing.add_argument("--type")
    return parser


def _run(jobs: AIJobsClient, args: argparse.Namespace) -> int:
    if args.command == "submit":
        created = jobs.create(
            args.query,
            job_type=args.type,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
        )
        if created.get("mode") == "sync":
            print(created["answer"])
            return 0
        print(json.dumps(created, ensure_ascii=False, indent=2))
        return follow(jobs, created["jobId"], args.poll) if args.wait else 0
    if args.command == "wait":
        return follow(jobs, args.job_id, args.poll)
    if args.command == "get":
        result: Any = jobs.get(args.job_id)
    elif args.command == "cancel":
        result = jobs.cancel(args.job_id)
    else:
        result = list(jobs.list(status=args.status, job_type=args.type))
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


STATUS_FILE = Path(__file__).resolve().parents[1] / ".local" / "status.json"
SESSION_FILE = STATUS_FILE.with_name("client-session.json")


def _client(args: argparse.Namespace) -> AIJobsClient:
    if args.local:
        status = json.loads(STATUS_FILE.read_text())
        args.base_url = status["FUNCTIONS_URL"]
        args.supabase_url, args.anon_key = status["API_URL"], status["ANON_KEY"]
    if args.supabase_url and args.anon_key and not args.user:
        # with --local, one visitor across runs (its session beside status.json), so
        # `get`/`wait`/`cancel` find the job an earlier `submit` created
        session_file = SESSION_FILE if args.local else None
        return AIJobsClient.signed_in(
            args.base_url, args.supabase_url, args.anon_key, session_file=session_file
        )
    return AIJobsClient(args.base_url, user_id=args.user)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _client(args) as jobs:
            return _run(jobs, args)
    except APIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (httpx.TransportError, AuthRetryableError) as exc:
        # the service (or the local stack) is not there: say so, not a traceback
        print(
            f"error: cannot reach {args.base_url} ({exc}); is `make stack` running?",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
