"""The local Supabase: one base URL for ``/rest/v1`` (the gateway), ``/auth/v1`` (Auth) and
``/realtime/v1/websocket`` (Realtime), as a Supabase project is one URL and
``create_client(url, key)`` derives all three from it.

Served by uvicorn (httptools for HTTP/1.1 keep-alive, the ``websockets`` library for the
Realtime socket) in one process and one event loop. Why uvicorn: it is the reference ASGI
server, keeps HTTP connections alive, speaks websockets in the same process, and can refuse an
upgrade with an HTTP 401 body (the ASGI ``websocket.http.response`` extension) as Realtime
does; it is already in the dependency tree (functions-framework) so nothing new reaches the
deploy. httptools is uvicorn's C parser (a dev dependency): against its pure-Python h11 the
gateway spent 8-13 % less CPU per RPC (scripts/bench_gateway.py).

The gateway stays a WSGI app (its request handling is sync psycopg); ``WSGIBridge`` runs each
request in a worker thread. Its responses are small JSON documents, so the bridge buffers them.

    python -m infra.local.supabase_server --db-uri URI --jwt-secret SECRET [--port 54321]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import uvicorn
from starlette.middleware.cors import CORSMiddleware

from infra.local.auth import AuthService, add_arguments, create_auth_app, service_from_arguments
from infra.local.gateway import DEFAULT_PORT, REST_PREFIX, Gateway, create_app
from infra.local.realtime.server import RealtimeServer

log = logging.getLogger("infra.local.supabase_server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH_PREFIX = "/auth/v1"
REALTIME_PATH = "/realtime/v1/websocket"
# the gateway uses a connection pool of this size; more threads would only queue on it
GATEWAY_THREADS = 16


class WSGIBridge:
    """Serve a WSGI app from ASGI: read the body, run the app in a thread, send the result.

    The body is read as the gateway reads it behind PostgREST: a declared ``Content-Length``
    over ``max_body`` is passed on unread (the app answers 413 from the header), a longer
    chunked body is read only to one byte past the limit, and a body the client abandoned
    (it disconnected before its end) never reaches the app, so no RPC runs on half a request.
    """

    def __init__(
        self, app: Callable[..., Any], threads: int = GATEWAY_THREADS, max_body: int | None = None
    ) -> None:
        self.app = app
        self._limit = asyncio.Semaphore(threads)
        self._max_body = max_body if max_body is not None else getattr(app, "max_body_bytes", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(scope, receive)
        if body is None:
            return  # the client left mid-body: nobody to answer, nothing to run
        async with self._limit:
            status, headers, chunks = await asyncio.to_thread(self._run, scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": chunks})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self._max_body
        declared = _declared_length(scope)
        if limit is not None and declared is not None and declared > limit:
            return b""  # the app refuses it from the declared length; nothing is read
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if limit is not None and len(body) > limit:
                return bytes(body[: limit + 1])
            if not message.get("more_body"):
                return bytes(body)

    def _run(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        environ = _environ(scope, body)
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(k.lower().encode(), v.encode("latin1")) for k, v in headers]

        result = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started["status"], started["headers"], payload


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("127.0.0.1", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf8").decode("latin1"),
        "QUERY_STRING": scope["query_string"].decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": client[0],
        # a declared length the bridge did not read (over the limit) is passed on as declared
        "CONTENT_LENGTH": str(len(body) if body else (_declared_length(scope) or 0)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin1").upper().replace("-", "_")
        value = raw_value.decode("latin1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name not in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            # the bridge has de-chunked the body and states its length (a WSGI app given
            # "chunked" with no terminated input would read an empty body)
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class LocalSupabase:
    """The ASGI app: routes by path prefix, as Supabase's API gateway (Kong) does."""

    def __init__(self, gateway: Gateway, auth: AuthService, realtime: RealtimeServer) -> None:
        self.gateway = gateway
        self.realtime = realtime
        # Supabase's Kong answers CORS on /auth/v1 and /rest/v1 (its `cors` plugin: any origin,
        # the requested headers), so a browser page on another origin can sign in
        self._rest = _cors(WSGIBridge(gateway))
        self._auth = _cors(create_auth_app(auth))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        if kind == "websocket":
            if path.rstrip("/") == REALTIME_PATH:
                await self.realtime.serve(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if path.startswith(REST_PREFIX):
            await self._rest(scope, receive, send)
        elif path.startswith(AUTH_PREFIX):
            await self._auth(scope, receive, send)
        else:
            await _not_found(send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.realtime.start()
                except Exception as exc:
                    log.exception("realtime did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.realtime.stop()
                await asyncio.to_thread(self.gateway.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _cors(app: Any) -> Any:
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])


async def _not_found(send: Send) -> None:
    body = b'{"message":"no Route matched with those values"}'
    headers = [(b"content-type", b"application/json; charset=utf-8")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(db_uri: str, jwt_secret: str, auth: AuthService | None = None) -> ASGIApp:
    """The local Supabase with CORS open to every origin, as Supabase's API gateway answers
    browsers (a page on the function host signs in and calls REST from another origin)."""
    # the project URL: Supabase's API gateway (its API key check) in front of PostgREST
    gateway = create_app(db_uri, jwt_secret, pool_max=GATEWAY_THREADS // 2, require_api_key=True)
    auth = auth or AuthService(jwt_secret)
    app = LocalSupabase(gateway, auth, RealtimeServer(db_uri, jwt_secret))
    cors = CORSMiddleware(
        app,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Content-Range", "X-Supabase-Api-Version"],
        max_age=3600,
    )
    return cors


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.supabase_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--db-uri", required=True, help="admin (owner) URI of the database")
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret of keys and tokens")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    add_arguments(parser)  # --auth-jwt-alg, --auth-refresh-token-reuse-interval
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    uvicorn.run(
        build_app(args.db_uri, args.jwt_secret, service_from_arguments(args, args.jwt_secret)),
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        http="httptools",
        lifespan="on",
        log_level="warning",
        # no keep-alive cut for idle REST clients shorter than Supabase's (Kong: 60 s)
        timeout_keep_alive=60,
        ws_ping_interval=None,  # Realtime's own heartbeat and idle timeout apply
    )


if __name__ == "__main__":
    main()
