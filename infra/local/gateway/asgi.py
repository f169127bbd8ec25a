"""The gateway as an ASGI application: the request's body read on the event loop, the call
made there (``Gateway.serve``), the answer sent.

The body is read as the gateway reads it behind PostgREST: a declared ``Content-Length`` over
``max_body_bytes`` is passed on unread (the gateway answers 413 from the header), a longer
chunked body is read only to one byte past the limit, and a body the client abandoned (it
disconnected before its end) never reaches the gateway, so no RPC runs on half a request.

The request reaches the gateway as the WSGI environ it would get from a WSGI server (one
parsing of headers, query and cookies for both ways of serving it); its responses are small
JSON documents, so they are sent whole.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from werkzeug.wrappers import Response

from infra.local.gateway.app import HEADERS_DOCUMENT, Answer, Gateway, headers_document

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RestApp:
    """``gateway`` served from ASGI; a ``lifespan`` shutdown releases its pools."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        body = await read_body(scope, receive, self.gateway.max_body_bytes)
        if body is None:
            return  # the client left mid-body: nobody to answer, nothing to run
        env = environ(scope, body)
        response = await self.gateway.serve(env, body)
        if not isinstance(response, Answer):
            response = as_sent(response, env)
        start = {"type": "http.response.start", "status": response.status}
        await send({**start, "headers": response.headers})
        await send({"type": "http.response.body", "body": response.body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def close(self) -> None:
        await self.gateway.close_async()
        await asyncio.to_thread(self.gateway.close)


def as_sent(response: Response, env: dict[str, Any]) -> Answer:
    """A werkzeug response as a WSGI server would send it (werkzeug settles the headers for
    the status and the method here)."""
    chunks, status, wsgi_headers = response.get_wsgi_response(env)
    headers = [(k.lower().encode(), v.encode("latin1")) for k, v in wsgi_headers]
    return Answer(int(status.split(" ", 1)[0]), headers, b"".join(chunks))


async def read_body(scope: Scope, receive: Receive, limit: int | None) -> bytes | None:
    """The request's body (None: the client disconnected before its end), read to ``limit``."""
    declared = _declared_length(scope)
    if limit is not None and declared is not None and declared > limit:
        return b""  # the gateway refuses it from the declared length; nothing is read
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    first = message.get("body", b"")
    if not message.get("more_body") and (limit is None or len(first) <= limit):
        # the whole body in one message (a small request's): taken as it came, not copied
        return first if type(first) is bytes else bytes(first)
    body = bytearray(first)
    while True:
        if limit is not None and len(body) > limit:
            return bytes(body[: limit + 1])
        if not message.get("more_body"):
            return bytes(body)
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP request whose body was read (PEP 3333), with the
    request's headers document (``HEADERS_DOCUMENT``) worked out with it."""
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("127.0.0.1", 0)
    # a declared length not read (over the limit) is passed on as declared
    length = str(len(body) if body else (_declared_length(scope) or 0))
    head = _head(scope["headers"])
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf8").decode("latin1"),
        "QUERY_STRING": scope["query_string"].decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": client[0],
        "CONTENT_LENGTH": length,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **head.environ,
    }
    # headers_document(env) of this environ: CONTENT_LENGTH is its one header entry before the
    # request's headers (the others are none of the document's), and always in it
    env[HEADERS_DOCUMENT] = f'{{"content-length": "{length}"{head.document_tail}'
    return env


class _Head:
    """What a request's headers give the environ: its header entries, and the headers
    document (``headers_document``) of those after the leading content-length entry."""

    __slots__ = ("document_tail", "environ", "size")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        env: dict[str, str] = {}
        self.size = 0  # the headers' bytes
        for raw_name, raw_value in headers:
            self.size += len(raw_name) + len(raw_value)
            key = _environ_keys.get(raw_name)
            if key is None:
                key = _environ_key(raw_name)
            value = raw_value.decode("latin1")
            if key == "CONTENT_TYPE":
                env["CONTENT_TYPE"] = value
            elif key:
                env[key] = f"{env[key]},{value}" if key in env else value
        self.environ = env
        document = headers_document(env)
        self.document_tail = "}" if document == "{}" else ", " + document[1:]


def _head(headers: Iterable[tuple[bytes, bytes]]) -> _Head:
    """The request's ``_Head``, worked out once per set of headers (a client's requests repeat
    theirs: the keys, the client's name, the profile) but for its Content-Length, which is
    never an environ header entry (the environ states the body's length) and varies with the
    body. At most ``HEADS_KEPT`` are remembered, each of at most ``HEAD_KEPT_MAX_BYTES`` (a
    bound in bytes too: clients choose their headers, and httptools bounds none)."""
    key = tuple(header for header in headers if header[0] != b"content-length")
    head = _heads.get(key)
    if head is None:
        head = _Head(key)
        if head.size > HEAD_KEPT_MAX_BYTES:
            return head  # worked out for this request only
        if len(_heads) >= HEADS_KEPT:
            _heads.clear()
        _heads[key] = head
    return head


#: Each set of request headers seen (Content-Length left out), with its ``_Head``.
_heads: dict[tuple[tuple[bytes, bytes], ...], _Head] = {}
HEADS_KEPT = 1024
#: the largest set of headers remembered (names and values; the project's clients send < 1 KB)
HEAD_KEPT_MAX_BYTES = 8192


def _environ_key(raw_name: bytes) -> str:
    """The environ key of a header's name ('' for the two the environ states otherwise)."""
    name = raw_name.decode("latin1").upper().replace("-", "_")
    if name == "CONTENT_TYPE":
        key = name
    elif name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
        # the body is de-chunked and its length stated (a WSGI app given "chunked" with no
        # terminated input would read an empty body)
        key = ""
    else:
        key = f"HTTP_{name}"
    if len(_environ_keys) < ENVIRON_KEYS_KEPT:  # a bound: clients choose header names
        _environ_keys[raw_name] = key
    return key


#: Each header name seen (as sent), with its environ key; at most ``ENVIRON_KEYS_KEPT``.
_environ_keys: dict[bytes, str] = {}
ENVIRON_KEYS_KEPT = 1024
