"""The one HTTP layer every function uses.

``endpoint(...)`` wraps a handler: it answers CORS preflight, refuses other methods (405),
turns every ``AppError`` into ``{"error": {"code", "message", "details"}}`` with its status
(and ``Retry-After`` for 429), turns pydantic validation errors into 400, and hides any
unexpected exception behind a 500 without a stack trace. Helpers read a JSON body (413, 415,
400), a job id, and the caller's identity.
"""

from __future__ import annotations

import functools
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import flask
import pydantic

from shared import errors, logs
from shared.settings import Settings, get_settings

Handler = Callable[[flask.Request, Settings], flask.Response]

_USER_ID = re.compile(r"^[A-Za-z0-9._:@|-]{1,128}$")
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-None-Match, X-User-Id"
_EXPOSED_HEADERS = "ETag, Location, Retry-After, X-Poll-Interval, Idempotent-Replayed"
ANONYMOUS = "anonymous"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    response = flask.Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(error: errors.AppError) -> flask.Response:
    headers: dict[str, str] = {}
    if isinstance(error, errors.RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, errors.DependencyDown):
        headers["Retry-After"] = "5"
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return json_response(body, error.status, headers)


def _validation_details(exc: pydantic.ValidationError) -> dict[str, Any]:
    problems = []
    for item in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append({"field": field, "message": message, "type": item["type"]})
    return {"errors": problems}


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
    """Make ``handler(request, settings)`` a Cloud Functions HTTP entry point."""

    def decorate(handler: Handler) -> Callable[..., Any]:
        @functools.wraps(handler)
        def entry(request: flask.Request) -> flask.Response:
            started = time.perf_counter()
            settings: Settings | None = None
            try:
                settings = get_settings()
                response = _dispatch(handler, request, settings, methods, cors=cors)
            except errors.AppError as exc:
                response = error_response(exc)
            except pydantic.ValidationError as exc:
                response = error_response(
                    errors.ValidationFailed(
                        "the request is not valid", details=_validation_details(exc)
                    )
                )
            except Exception as exc:  # never leak a stack trace to the caller
                logs.error("unhandled error", function=handler.__name__, error=repr(exc)[:500])
                response = error_response(errors.AppError("internal error"))
            if cors and settings is not None:
                for name, value in _cors_headers(request, settings).items():
                    response.headers.setdefault(name, value)
            logs.info(
                f"{request.method} {request.path} {response.status_code}",
                function=handler.__name__,
                status=response.status_code,
                latencyMs=round((time.perf_counter() - started) * 1000, 1),
            )
            return response

        return entry

    return decorate


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
    return handler(request, settings)


def read_json(request: flask.Request, settings: Settings) -> dict[str, Any]:
    """The request's JSON object, or 413 / 415 / 400."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(
            f"the body must be at most {limit} bytes", details={"limit": limit}
        )
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise errors.PayloadTooLarge(
            f"the body must be at most {limit} bytes", details={"limit": limit}
        )
    if not raw.strip():
        return {}
    if request.mimetype != "application/json":
        raise errors.UnsupportedMediaType(
            "the body must be application/json", details={"contentType": request.mimetype}
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidJson(
            "the body is not valid JSON", details={"reason": str(exc)}
        ) from None
    if not isinstance(body, dict):
        raise errors.ValidationFailed("the body must be a JSON object")
    return body


def parse_job_id(raw: object) -> uuid.UUID:
    if raw is None or raw == "":
        raise errors.InvalidId("a job id is required", details={"field": "jobId"})
    if not isinstance(raw, str):
        raise errors.InvalidId("the job id must be a string", details={"field": "jobId"})
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise errors.InvalidId("the job id is not a UUID", details={"jobId": raw[:64]}) from None


def path_job_id(request: flask.Request) -> str | None:
    """The id from ``/<function>/<id>`` (the host strips the function name) or ``?id=``."""
    tail = request.path.strip("/").split("/")[-1] if request.path.strip("/") else ""
    return tail or request.args.get("id") or request.args.get("jobId")


BFF_SECRET_HEADER = "X-BFF-Secret"


def caller_id(request: flask.Request, settings: Settings) -> str:
    """Who is calling: a verified Supabase JWT's ``sub``; else the user header, when it can be
    trusted; else anonymous (if allowed).

    The user header names any user, so it is trusted only from the BFF (with
    ``BFF_SHARED_SECRET`` in ``X-BFF-Secret``), or when no authentication is configured at
    all (the seed's anonymous portfolio mode). With ``SUPABASE_JWT_SECRET`` set and no BFF
    secret, the header is refused: a browser must prove who it is with its JWT.
    """
    auth = request.headers.get("Authorization", "")
    if settings.supabase_jwt_secret and auth.lower().startswith("bearer "):
        return _jwt_subject(auth[7:].strip(), settings.supabase_jwt_secret)
    header = request.headers.get(settings.user_id_header)
    if header:
        _check_header_is_trusted(request, settings)
        if not _USER_ID.match(header):
            raise errors.ValidationFailed(
                f"{settings.user_id_header} must be 1-128 characters of [A-Za-z0-9._:@|-]"
            )
        return header
    if settings.allow_anonymous:
        return ANONYMOUS
    raise errors.Unauthorized("sign in first: this deployment does not allow anonymous jobs")


def _jwt_subject(token: str, secret: str) -> str:
    import jwt

    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"verify_aud": False, "require": ["sub", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise errors.Unauthorized(
            "the bearer token is not valid", details={"reason": str(exc)}
        ) from None
    return str(claims["sub"])


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a secret header with its setting."""
    return hmac.compare_digest((given or "").encode(), expected.encode())


def _check_header_is_trusted(request: flask.Request, settings: Settings) -> None:
    if settings.bff_secret:
        if not secret_matches(request.headers.get(BFF_SECRET_HEADER), settings.bff_secret):
            raise errors.Unauthorized(
                f"{settings.user_id_header} is accepted only from the BFF ({BFF_SECRET_HEADER})"
            )
    elif settings.supabase_jwt_secret:
        raise errors.Unauthorized(
            f"sign in with a Supabase JWT; {settings.user_id_header} is not trusted here"
        )
