"""Request parsing: the RPC's arguments from the query string (GET) or the JSON body (POST).

The body is bounded (413 PGRST102 past ``max_body_bytes``, refused on its declared length
before a byte is read) and must be a strict UTF-8 JSON object, else 400 PGRST102, as PostgREST.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from infra.local.gateway.errors import ApiError


def arguments(
    request: Request, max_body_bytes: int, body: bytes | None = None
) -> tuple[dict[str, Any], str]:
    """The parsed arguments, and the JSON text handed to Postgres.

    ``body``: the request's body when the server has read it already (``RestApp`` reads it on
    the event loop, to at most one byte past the bound); else it is read from the request.

    As PostgREST (``JsonArgs (payRaw …)``), the body's own text goes to Postgres once it
    parsed as strict UTF-8 JSON: numbers keep their digits (``1e999`` included), and
    ``NaN``/``Infinity``, which Python alone would accept, are invalid as for Aeson.
    """
    if request.method == "GET":
        args = request.args.to_dict()
        return args, json.dumps(args)
    raw = (
        read_body(request, max_body_bytes)
        if body is None
        else bounded(request, body, max_body_bytes)
    )
    if not raw.strip():
        return {}, "{}"
    invalid = ApiError(400, "PGRST102", "Empty or invalid json")
    try:
        text = raw.decode("utf-8")
        body = _DECODER.decode(text)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than Python's parser goes. PostgREST drops the
        # parser's message for this generic one (its issue 2344).
        raise invalid from None
    if not isinstance(body, dict):
        raise invalid
    return body, text


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "PGRST102",
        "Request body too large",
        details=f"The gateway accepts at most {limit} bytes",
    )


def bounded(request: Request, body: bytes, limit: int) -> bytes:
    """A body read already, refused as ``read_body`` refuses it (its declared length first).

    The server reads a body to at most one byte past the bound, and not at all when its
    declared length is past it: so only an empty body can have been declared too long (the
    declared length is parsed only then)."""
    if len(body) > limit or (
        not body and request.content_length is not None and request.content_length > limit
    ):
        raise _too_large(limit)
    return body


def read_body(request: Request, limit: int) -> bytes:
    """The body, refused on its declared length before reading, and read only to the limit."""
    too_large = _too_large(limit)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    try:
        while chunk := request.stream.read(min(65536, limit + 1 - received)):
            chunks.append(chunk)
            received += len(chunk)
            if received > limit:
                raise too_large
    except HTTPException:
        # The client went away mid-body, or sent broken chunked encoding.
        raise ApiError(400, "PGRST102", "Empty or invalid json") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: ``json.loads(text, parse_constant=_reject_constant)``'s decoder, made once (``loads`` with an
#: argument makes a new one, and its scanner, on every call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
