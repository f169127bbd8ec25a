"""One local process that hosts every function under the cloudfunctions.net URL scheme.

Each ``functions/<name>/main.py`` is loaded with ``functions_framework.create_app(target,
source)``, exactly as the Cloud Functions runtime loads it, and mounted at ``/<name>``;
``http://127.0.0.1:8080/ai-jobs-get/<id>`` then reaches ``get_job`` with the path ``/<id>``.

    python -m infra.local.host [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"

#: deployed name -> entry point (the same table deploy.sh deploys)
FUNCTIONS: dict[str, str] = {
    "ai-jobs-create": "create_job",
    "ai-jobs-get": "get_job",
    "ai-jobs-list": "list_jobs",
    "ai-jobs-cancel": "cancel_job",
    "ai-jobs-process": "process_job",
    "ai-jobs-reap": "reap_jobs",
    "ai-jobs-console": "console",
}


def _index(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    request = Request(environ)
    if request.path in {"", "/"}:
        body: dict[str, Any] = {"functions": sorted(FUNCTIONS)}
        status = 200
    else:
        body = {"error": {"code": "not_found", "message": "no such function", "details": {}}}
        status = 404
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    return response(environ, start_response)


class _RootPath:
    """Cloud Functions hands ``/ai-jobs-create`` to the function as path ``/``; after
    DispatcherMiddleware strips the prefix the path is empty, which Flask would redirect."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


def build_app(functions_dir: Path = FUNCTIONS_DIR) -> DispatcherMiddleware:
    import functions_framework

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # deploy.sh stages shared/ beside main.py
    mounts: dict[str, Any] = {
        f"/{name}": _RootPath(
            functions_framework.create_app(  # type: ignore[no-untyped-call]
                target, str(functions_dir / name / "main.py")
            )
        )
        for name, target in FUNCTIONS.items()
    }
    return DispatcherMiddleware(_index, mounts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve every function on one local port.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, build_app(), threaded=True)
    stop = threading.Event()

    def shutdown(*_: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"function host on http://{args.host}:{server.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
