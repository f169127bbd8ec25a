"""Command line: `python -m infra.local.tasks_emulator [--port 8123] [--queue NAME ...]`.

Serves until SIGINT or SIGTERM, logging one line per dispatch to stderr, then stops cleanly.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from infra.local.tasks_emulator import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MIN_DISPATCH_DEADLINE_ENV,
    EmulatorError,
    QueueConfig,
    ThrottlePolicy,
    start_emulator,
)
from infra.local.tasks_emulator.engine import DEFAULT_TOMBSTONE_TTL_S, LOGGER
from infra.local.tasks_emulator.model import DEFAULT_MAX_CONCURRENT_DISPATCHES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.tasks_emulator",
        description="Local Cloud Tasks (google.cloud.tasks.v2) endpoint for HTTP tasks.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (0: any free)")
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="projects/P/locations/L/queues/Q",
        help="queue to create at start (repeatable)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_DISPATCHES,
        metavar="N",
        help="rate_limits.max_concurrent_dispatches of the --queue queues",
    )
    parser.add_argument(
        "--min-dispatch-deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"lower the 15 s dispatch_deadline floor (or set ${MIN_DISPATCH_DEADLINE_ENV})",
    )
    parser.add_argument(
        "--no-throttle",
        action="store_true",
        help="no system throttling on 429/503/5xx or a high error rate",
    )
    parser.add_argument(
        "--no-ramp-up", action="store_true", help="new and idle queues dispatch at full rate"
    )
    parser.add_argument(
        "--tombstone-ttl",
        type=float,
        default=DEFAULT_TOMBSTONE_TTL_S,
        metavar="SECONDS",
        help="how long a deleted or executed task's name is refused (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s")
    LOGGER.setLevel(logging.INFO)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    queues = [
        QueueConfig(name, max_concurrent_dispatches=args.max_concurrent) for name in args.queue
    ]
    try:
        emulator = start_emulator(
            args.host,
            args.port,
            queues=queues,
            min_dispatch_deadline_s=args.min_dispatch_deadline,
            throttle=ThrottlePolicy(throttle=not args.no_throttle, ramp_up=not args.no_ramp_up),
            tombstone_ttl_s=args.tombstone_ttl,
        )
    except (EmulatorError, OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    with emulator:
        # Everything made so far (modules, grpc's and protobuf's tables, the queues) lives as
        # long as the process: out of the collector's reach, a full collection walks only what
        # tasks made since instead of every object of the start, as the functions do after
        # their first answer (shared/http.py; https://docs.python.org/3/library/gc.html).
        gc.freeze()
        LOGGER.info(
            "Cloud Tasks emulator listening on %s (certs: %s; queues: %s)",
            emulator.address,
            emulator.certs_url,
            ", ".join(args.queue) or "none",
        )
        # Event.wait in short slices so the signal handler runs promptly on every platform.
        while not stop_requested.wait(0.5):
            pass
        LOGGER.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
