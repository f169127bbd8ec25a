"""Serving the gateway on its own, on a background thread, and the CLI.

The local stack serves the gateway under uvicorn with Auth and Realtime
(``infra.local.supabase_server``: ``RestApp``, the call made on the event loop); ``start_gateway``
serves it alone, for tests and for ``python -m infra.local.gateway --db-uri URI --jwt-secret
SECRET``: as a WSGI application under werkzeug's threaded server, or with ``asgi=True`` as the
local stack serves it (``RestApp`` under uvicorn with httptools).
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any, TypedDict, Unpack

import uvicorn
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from infra.local.gateway.app import Gateway, log
from infra.local.gateway.asgi import RestApp
from infra.local.gateway.config import DEFAULT_PORT, REST_PREFIX
from infra.local.gateway.http import HttpProtocol


class GatewayOptions(TypedDict, total=False):
    """``Gateway``'s keyword arguments, passed through by ``create_app`` and ``start_gateway``."""

    schemas: Sequence[str]
    anonymous_role: str | None
    pool_min: int
    pool_max: int
    pool_timeout: float
    max_rows: int | None
    max_body_bytes: int
    require_api_key: bool


def create_app(db_uri: str, jwt_secret: str, **options: Unpack[GatewayOptions]) -> Gateway:
    """The gateway as a WSGI application (call ``.close()`` to release its pool)."""
    return Gateway(db_uri, jwt_secret, **options)


class _RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging one line per request at debug level only."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


class _Server(ThreadedWSGIServer):
    """Remembers open client connections so ``stop()`` can end idle keep-alive ones."""

    def __init__(self, host: str, port: int, app: Gateway) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(host, port, app, handler=_RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            live = list(self._open)
        for conn in live:
            with suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)


class _UvicornServer:
    """``RestApp`` under uvicorn (httptools, as the local Supabase server) on its own loop and
    thread, with ``_Server``'s surface; its lifespan shutdown releases the gateway's pools."""

    def __init__(self, host: str, port: int, app: Gateway) -> None:
        self._socket = socket.create_server((host, port))
        self.server_address = self._socket.getsockname()
        config = uvicorn.Config(
            RestApp(app),
            http=HttpProtocol,  # httptools, a response's head and body in one write
            lifespan="on",
            log_level="warning",
            log_config=None,  # leave the host process's logging as it is
            timeout_keep_alive=60,  # as the local Supabase server
        )
        self._server = uvicorn.Server(config)

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        del poll_interval  # uvicorn's own tick
        self._server.run(sockets=[self._socket])

    def wait_started(self, thread: threading.Thread, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway's uvicorn server did not start")
            time.sleep(0.01)

    def shutdown(self) -> None:
        self._server.should_exit = True  # it ends idle keep-alive connections on the way out

    def close_open_connections(self) -> None:
        pass  # uvicorn's shutdown does


class GatewayHandle(AbstractContextManager["GatewayHandle", None]):
    """A gateway serving on a background thread; ``stop()`` (or ``with``) shuts it down."""

    def __init__(self, app: Gateway, host: str, port: int, *, asgi: bool = False) -> None:
        self.app = app
        self._server = _UvicornServer(host, port, app) if asgi else _Server(host, port, app)
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"rest-gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if isinstance(self._server, _UvicornServer):
            self._server.wait_started(self._thread)
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_open_connections()
        self._thread.join()  # serve_forever closes the socket and joins the handlers
        self.app.close()

    def wait(self) -> None:
        """Block until the server stops (the CLI's foreground loop)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_gateway(
    db_uri: str,
    jwt_secret: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    asgi: bool = False,
    **options: Unpack[GatewayOptions],
) -> GatewayHandle:
    """Serve the gateway on ``host:port`` (0: a free port) in a background thread: as a WSGI
    application, or with ``asgi`` as the local Supabase server serves it (``RestApp``)."""
    app = Gateway(db_uri, jwt_secret, **options)
    try:
        return GatewayHandle(app, host, port, asgi=asgi)
    except BaseException:
        app.close()
        raise


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.gateway",
        description="PostgREST-compatible /rest/v1/rpc gateway for the local stack.",
    )
    parser.add_argument("--db-uri", required=True, help="admin (owner) URI of the database")
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret of the API keys")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--debug", action="store_true", help="log one line per request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    handle = start_gateway(args.db_uri, args.jwt_secret, args.host, args.port)
    log.info("serving %s%s/rpc", handle.url, REST_PREFIX)
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
