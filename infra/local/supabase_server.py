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

The gateway is served on the event loop (``infra.local.gateway.asgi.RestApp``: asyncio psycopg),
not in a worker thread per request: the thread hand-off cost this process about as much CPU
per RPC as the rest of the request's Python work (scripts/bench_gateway.py).

    python -m infra.local.supabase_server --db-uri URI --jwt-secret SECRET [--port 54321]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import uvicorn
from starlette.middleware.cors import CORSMiddleware

from infra.local.auth import AuthService, add_arguments, create_auth_app, service_from_arguments
from infra.local.gateway import DEFAULT_PORT, REST_PREFIX, Gateway, create_app
from infra.local.gateway.asgi import RestApp
from infra.local.gateway.http import HttpProtocol
from infra.local.realtime.server import RealtimeServer

log = logging.getLogger("infra.local.supabase_server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH_PREFIX = "/auth/v1"
REALTIME_PATH = "/realtime/v1/websocket"
#: the gateway's connections to Postgres (its pool's largest size)
GATEWAY_CONNECTIONS = 8


class LocalSupabase:
    """The ASGI app: routes by path prefix, as Supabase's API gateway (Kong) does."""

    def __init__(self, gateway: Gateway, auth: AuthService, realtime: RealtimeServer) -> None:
        self.gateway = gateway
        self.realtime = realtime
        self._gateway_app = RestApp(gateway)
        # CORS is answered once, for every path, by build_app's middleware around this app (a
        # second layer here added its headers twice: "Vary: Origin, Origin")
        self._rest = self._gateway_app
        self._auth = create_auth_app(auth)

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
                await self._gateway_app.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _not_found(send: Send) -> None:
    body = b'{"message":"no Route matched with those values"}'
    headers = [(b"content-type", b"application/json; charset=utf-8")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(db_uri: str, jwt_secret: str, auth: AuthService | None = None) -> ASGIApp:
    """The local Supabase with CORS open to every origin, as Supabase's API gateway answers
    browsers (a page on the function host signs in and calls REST from another origin)."""
    # the project URL: Supabase's API gateway (its API key check) in front of PostgREST
    gateway = create_app(db_uri, jwt_secret, pool_max=GATEWAY_CONNECTIONS, require_api_key=True)
    auth = auth or AuthService(jwt_secret)
    app = LocalSupabase(gateway, auth, RealtimeServer(db_uri, jwt_secret))
    # Supabase's Kong answers CORS on /auth/v1 and /rest/v1 (its `cors` plugin: any origin, the
    # requested headers), so a browser page on another origin can sign in and call REST
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
        http=HttpProtocol,  # httptools, a response's head and body in one write
        lifespan="on",
        log_level="warning",
        # no keep-alive cut for idle REST clients shorter than Supabase's (Kong: 60 s)
        timeout_keep_alive=60,
        ws_ping_interval=None,  # Realtime's own heartbeat and idle timeout apply
        # as Realtime's Phoenix endpoint: its sockets set no ``compress`` (Phoenix.Endpoint
        # socket/3: per-message compression defaults to false); deflating each ~80 kB event
        # cost this process about a tenth of its CPU per event
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
