"""The one HTTP layer every function uses.

``endpoint(...)`` wraps a handler: it answers CORS preflight, refuses other methods (405),
refuses a public POST that is not ``application/json`` (415: a browser must then preflight, so
``ALLOWED_ORIGINS`` holds for every write), and builds every error response in one function,
``error_response``: ``{"error": {"code", "message", "details"}}`` for a 4xx, and for a 5xx only
the code, a fixed sentence and a request id, the rest going to the log line (with the same
request id) with the traceback.

The request is read here and nowhere else: ``read_json`` refuses on ``Content-Length`` before
reading (413), reads a chunked body only up to the limit, refuses a body that arrives
incomplete (400 ``incomplete_body``: no job from half a request), and ``parse_json`` accepts
only JSON the database and the response serializer can hold (depth, finite numbers, no lone
surrogates or NUL). ``parse_model`` is the only place a pydantic error becomes a 400: a row
that fails to load later is a 500, not the client's fault.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import math
import re
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import flask
import pydantic
import pydantic_core

from shared import errors, logs
from shared.jobs import CANONICAL_UUID
from shared.settings import Settings, get_settings

Handler = Callable[[flask.Request, Settings], flask.Response]
Model = TypeVar("Model", bound=pydantic.BaseModel)

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-None-Match, X-User-Id"
_EXPOSED_HEADERS = "ETag, Location, Retry-After, X-Poll-Interval, Idempotent-Replayed"

#: Arrays/objects nested in any JSON the API reads (the body object itself is level 1).
#: Far below what the serializers and Postgres handle (pydantic-core gives up near 255).
MAX_JSON_DEPTH = 16
#: Reads the body in pieces of this size, so a limit is enforced while reading.
_READ_CHUNK = 64 * 1024


def dump_json(body: Any) -> str:
    """The API's JSON: compact, UTF-8 as is.

    Written by pydantic-core's serializer (``to_json``), which writes what
    ``json.dumps(body, ensure_ascii=False, separators=(",", ":"))`` writes for the JSON types
    the handlers pass (dicts with str keys, lists, str, int, float, bool, None; floats may
    differ in spelling only: ``1e-7`` for ``1e-07``) at about a quarter of the CPU: 0.18 vs
    0.64 ms for a finished job's 74 KB report. What it refuses (a lone surrogate) goes to
    ``json.dumps``. Beyond those types the two differ (pydantic-core writes datetimes, UUIDs,
    sets; ``json.dumps`` raises): the handlers convert such values first (``shared.jobs``'
    wire models). A float's spelling changes the ETag of the same job between this release
    and the previous one, so during a rollout a poller may get one 200 instead of a 304."""
    try:
        return pydantic_core.to_json(body).decode()
    except pydantic_core.PydanticSerializationError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def dump_json_bytes(body: Any) -> bytes:
    """``dump_json(body)`` as the UTF-8 bytes sent: the serializer's own bytes, not decoded
    into text to be encoded again for the ETag and the response (twice over a 74 KB report)."""
    try:
        return pydantic_core.to_json(body)
    except pydantic_core.PydanticSerializationError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return json_text_response(dump_json_bytes(body), status, headers)


def json_text_response(
    text: str | bytes, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    """A JSON answer from ``dump_json``'s text or ``dump_json_bytes``'s bytes (for a handler
    that needed them itself)."""
    response = flask.Response(text, status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(error: errors.AppError) -> flask.Response:
    """The one place an error becomes a response.

    A 4xx says what was wrong (``details``: which field, which limit). A 5xx tells the client
    only its code and the class's fixed sentence: the message and details may hold backend
    text, so they are logged, with the traceback when an exception is being handled."""
    headers: dict[str, str] = {}
    if isinstance(error, errors.RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, errors.DependencyDown):
        headers["Retry-After"] = "5"
    body: dict[str, Any]
    if error.status >= 500:
        request_id = _request_id()
        logs.error(
            error.message,
            code=error.code,
            status=error.status,
            requestId=request_id,
            details=error.details or None,
            stack_trace=_current_traceback(),
        )
        body = {"code": error.code, "message": type(error).public_message, "requestId": request_id}
    else:
        body = {"code": error.code, "message": error.message, "details": error.details}
    return json_response({"error": body}, error.status, headers)


def _request_id() -> str:
    """What joins a 5xx answer to its log line: the trace id Cloud Run gives the request
    (``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1``, https://cloud.google.com/trace/docs/
    trace-context), else a fresh one."""
    if flask.has_request_context():
        trace = flask.request.headers.get("X-Cloud-Trace-Context", "").split("/", 1)[0]
        if _TRACE_ID.fullmatch(trace):
            return trace.lower()
    return uuid.uuid4().hex


def _current_traceback() -> str | None:
    text = traceback.format_exc()
    return None if text.startswith("NoneType: None") else text


def _validation_details(exc: pydantic.ValidationError) -> dict[str, Any]:
    problems = []
    for item in exc.errors(include_url=False, include_input=False, include_context=False):
        # a field name is the client's own key: bounded, never the value
        field = ".".join(str(part) for part in item["loc"])[:100] or "body"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append({"field": field, "message": message, "type": item["type"]})
    return {"errors": problems}


def parse_model(model: type[Model], data: Any) -> Model:
    """Validate request data: the only place a pydantic error becomes a 400. (A row from the
    database that fails to load raises pydantic's error, which stays a 500.)"""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise errors.ValidationFailed(
            "the request is not valid", details=_validation_details(exc)
        ) from None


def _cors_headers(request: flask.Request, settings: Settings) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    allowed = settings.allowed_origins
    if "*" in allowed:
        value = "*"
    elif origin in allowed:
        value = origin
    else:
        return {}
    return {
        "Access-Control-Allow-Origin": value,
        "Access-Control-Expose-Headers": _EXPOSED_HEADERS,
        "Vary": "Origin",
    }


def endpoint(*methods: str, cors: bool = True) -> Callable[[Handler], Callable[..., Any]]:
    """Make ``handler(request, settings)`` a Cloud Functions HTTP entry point.

    ``cors=True`` marks a public function: CORS headers, preflight, and POSTs must be JSON."""

    def decorate(handler: Handler) -> Callable[..., Any]:
        _answer_framework_errors_as_json()

        @functools.wraps(handler)
        def entry(request: flask.Request) -> flask.Response:
            started = time.perf_counter()
            settings: Settings | None = None
            try:
                settings = get_settings()
                response = _dispatch(handler, request, settings, methods, cors=cors)
            except errors.AppError as exc:
                response = error_response(exc)
            except Exception as exc:  # never leak a stack trace: error_response logs it
                unhandled = {"function": handler.__name__, "error": repr(exc)[:500]}
                response = error_response(errors.AppError("unhandled error", details=unhandled))
            _forget_unread_body(request)
            if cors and settings is not None:
                for name, value in _cors_headers(request, settings).items():
                    response.headers.setdefault(name, value)
            logs.info(
                f"{request.method} {request.path} {response.status_code}",
                function=handler.__name__,
                status=response.status_code,
                latencyMs=round((time.perf_counter() - started) * 1000, 1),
            )
            _freeze_cold_start_objects()
            return response

        return entry

    return decorate


_frozen = False


def _freeze_cold_start_objects() -> None:
    """Once per process, after its first answer: move every object the cold start made (the
    modules, the clients the first request created, their schemas: about 120 000 objects in a
    create instance) out of the garbage collector's reach with ``gc.freeze()``. They live as
    long as the process, yet a full collection walked them all: one took 64 ms in a create
    instance (every request in flight waits, about one full collection per 3000 creates); after
    the freeze it walks only what requests made since (Python's docs suggest ``gc.freeze()``
    for long-lived objects of a pre-fork server, https://docs.python.org/3/library/gc.html)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


#: What Flask/Werkzeug itself refuses before a handler runs (a path its router cannot match,
#: such as one holding a newline, or /robots.txt), as the project's errors.
_FRAMEWORK_ERRORS: dict[int, type[errors.AppError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def _answer_framework_errors_as_json() -> None:
    """Route Flask's own HTTP errors through ``error_response`` instead of its HTML pages.

    functions-framework points ``functions_framework.errorhandler`` at the app it is creating
    before it imports the function's ``main.py`` (``create_app`` in its ``__init__.py``), and
    documents it for user code; outside ``create_app`` it is a no-op or refused."""
    import functions_framework
    from werkzeug.exceptions import HTTPException

    def answer(exc: HTTPException) -> flask.Response:
        status = exc.code or 500
        cls = _FRAMEWORK_ERRORS.get(status, errors.BadRequest if status < 500 else errors.AppError)
        error = cls(exc.name.lower() if status < 500 else "internal error")
        response = error_response(error)
        allowed = getattr(exc, "valid_methods", None)  # set on a 405
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    # Flask refuses setup on an app that has served: then this endpoint() call is not inside
    # create_app (a test wrapping a handler after other apps ran) and there is nothing to do.
    with contextlib.suppress(AssertionError):
        functions_framework.errorhandler(HTTPException)(answer)


def _forget_unread_body(request: flask.Request) -> None:
    """Leave what the handler did not read unread.

    functions-framework registers an ``after_request`` hook (``read_request`` in its
    ``__init__.py``, 3.10.2) that calls ``request.get_data()`` "to avoid connection errors when
    returning prematurely": it reads the whole remaining body into memory, unbounded, after a
    413 too, and a broken or abandoned body raises there, past every handler, as Flask's
    plain-text 500 with three tracebacks. The body is read by ``read_body`` (bounded) or not
    at all; an empty stream makes that hook a no-op and leaves the rest of the connection to
    the server, which drains or closes it."""
    request.stream = io.BytesIO()


def _dispatch(
    handler: Handler,
    request: flask.Request,
    settings: Settings,
    methods: tuple[str, ...],
    *,
    cors: bool,
) -> flask.Response:
    if request.method == "OPTIONS" and cors:
        headers = _cors_headers(request, settings)
        if headers:
            headers.update(
                {
                    "Access-Control-Allow-Methods": ", ".join((*methods, "OPTIONS")),
                    "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "3600",
                }
            )
        return flask.Response(status=204, headers=headers)
    if request.method not in methods:
        response = error_response(
            errors.MethodNotAllowed(
                f"method {request.method} is not allowed", details={"allowed": list(methods)}
            )
        )
        response.headers["Allow"] = ", ".join(methods)
        return response
    if cors and request.method == "POST":
        # A text/plain or form POST is a CORS "simple request": a browser sends it cross-site
        # without asking first. Requiring JSON makes it preflight, where ALLOWED_ORIGINS holds.
        _require_json_media_type(request)
    return handler(request, settings)


def _require_json_media_type(request: flask.Request) -> None:
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if request.mimetype != "application/json" or charset not in {"utf-8", "utf8"}:
        raise errors.UnsupportedMediaType(
            "the body must be application/json (UTF-8)",
            details={"contentType": (request.content_type or "")[:100]},
        )


def read_json(request: flask.Request, settings: Settings) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body), or 413 / 415 / 400."""
    raw = read_body(request, settings.max_body_bytes)
    if not raw.strip():
        return {}
    _require_json_media_type(request)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise errors.ValidationFailed("the body must be a JSON object")
    return body


def read_body(request: flask.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes, read only as far as needed to know that.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
    body is read up to one byte past the limit and no further. A body that ends before its
    ``Content-Length`` (the client gave up) or whose framing breaks is refused, so nothing is
    ever created from part of a request."""
    declared = request.content_length  # None for a chunked body
    if declared is not None and declared > limit:
        raise _too_large(limit)
    wanted = limit + 1 if declared is None else declared
    pieces: list[bytes] = []
    received = 0
    try:
        while received < wanted:
            piece = request.stream.read(min(_READ_CHUNK, wanted - received))
            if not piece:
                break
            pieces.append(piece)
            received += len(piece)
    except Exception as exc:
        # Each WSGI server reports a broken body its own way (Werkzeug's ClientDisconnected or
        # OSError("Invalid chunk header"), gunicorn's NoMoreData or InvalidChunkSize): all
        # mean the client's bytes are unusable. One warning line, not a traceback.
        logs.warning("request body unreadable", path=request.path, error=type(exc).__name__)
        raise errors.IncompleteBody(
            "the body could not be read (broken chunked encoding or the client went away)",
            details={"received": received},
        ) from None
    if received > limit:
        raise _too_large(limit)
    if declared is not None and received < declared:
        logs.warning("request body incomplete", path=request.path, received=received)
        raise errors.IncompleteBody(
            "the body ended before its Content-Length",
            details={"contentLength": declared, "received": received},
        )
    return b"".join(pieces)


def _too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"the body must be at most {limit} bytes", details={"limit": limit}
    )


def parse_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON: UTF-8, RFC 8259 (no NaN or Infinity), numbers a double can hold, strings
    Postgres and UTF-8 can hold (no lone surrogate, no NUL), at most ``max_depth`` levels."""
    try:
        text = raw.decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates
    except UnicodeDecodeError as exc:
        raise errors.InvalidJson(
            "the body is not UTF-8", details={"reason": "encoding", "position": exc.start}
        ) from None
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int
        )
    except RecursionError:
        raise _too_deep(max_depth) from None
    except json.JSONDecodeError as exc:
        raise errors.InvalidJson(
            "the body is not valid JSON",
            details={"reason": exc.msg, "line": exc.lineno, "column": exc.colno},
        ) from None
    _check_tree(value, max_depth)
    return value


def _refuse_constant(name: str) -> Any:
    raise errors.InvalidJson(
        f"{name} is not JSON", details={"reason": "non-finite numbers are not JSON"}
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise errors.UnsupportedJsonValue(
            "a number is too large", details={"reason": "number beyond a double"}
        )
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # beyond Python's int-parsing digit limit
        raise errors.UnsupportedJsonValue(
            "a number is too large", details={"reason": "number beyond a double"}
        ) from None


def _too_deep(max_depth: int) -> errors.JsonTooDeep:
    return errors.JsonTooDeep(
        f"JSON may nest at most {max_depth} arrays or objects", details={"maxDepth": max_depth}
    )


def _check_tree(value: Any, max_depth: int) -> None:
    """Walk the parsed value without recursion: depth, and every string (keys included)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise _too_deep(max_depth)
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    _check_string(key)
                pending.append((child, depth + 1))


def _check_string(text: str) -> None:
    if "\x00" in text:
        raise errors.UnsupportedJsonValue(
            "strings must not contain NUL (\\u0000)", details={"reason": "NUL character"}
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.UnsupportedJsonValue(
                "strings must not contain lone surrogates (such as \\ud800)",
                details={"reason": "lone surrogate"},
            ) from None


def parse_job_id(raw: object) -> uuid.UUID:
    if raw is None or raw == "":
        raise errors.InvalidId("a job id is required", details={"field": "jobId"})
    if not isinstance(raw, str):
        raise errors.InvalidId("the job id must be a string", details={"field": "jobId"})
    if not CANONICAL_UUID.fullmatch(raw):  # the canonical form only, as the API writes ids
        raise errors.InvalidId("the job id is not a UUID", details={"field": "jobId"})
    return uuid.UUID(raw)


def path_job_id(request: flask.Request) -> str | None:
    """The id from ``/<function>/<id>`` (the host strips the function name) or ``?id=``."""
    tail = request.path.strip("/").split("/")[-1] if request.path.strip("/") else ""
    return tail or request.args.get("id") or request.args.get("jobId")
