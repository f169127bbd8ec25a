"""Errors in PostgREST's shape: ``ApiError``, and Postgres errors mapped to HTTP statuses.

The body is ``{code, details, hint, message}`` with a ``Proxy-Status`` header, as PostgREST
v13 answers; a Postgres error keeps its SQLSTATE as the code and takes PostgREST's status for it
(``sqlstate_status``), and ``raise sqlstate 'PGRST'`` carries its own body and status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from werkzeug.wrappers import Response

from infra.local.gateway.config import ANON_ROLE, JSON_CONTENT_TYPE


@dataclass
class ApiError(Exception):
    """An error response in PostgREST's shape: ``{code, details, hint, message}``."""

    status: int
    code: str
    message: str
    details: Any = None
    hint: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        body = {
            "code": self.code,
            "details": self.details,
            "hint": self.hint,
            "message": self.message,
        }
        headers = {"Proxy-Status": f"PostgREST; error={self.code}", **self.headers}
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return Response(json.dumps(body), self.status, headers, content_type=JSON_CONTENT_TYPE)


@dataclass
class KeyRejected(ApiError):
    """Refused by Supabase's API gateway before PostgREST sees the request: its body is
    ``{message, hint}`` only, with no PostgREST code or ``Proxy-Status`` (``code`` is ours, for
    logs and tests)."""

    def response(self) -> Response:
        body = {"message": self.message, "hint": self.hint}
        return Response(json.dumps(body), self.status, content_type=JSON_CONTENT_TYPE)


# Supabase's API gateway, hosted project, as its answers read (supabase/supabase discussion
# 16241; nuxt-modules/supabase issue 195, supabase-community/supabase-csharp issue 108): no key
# and an unknown key are both 401, before the request reaches PostgREST.
def no_api_key() -> KeyRejected:
    return KeyRejected(
        401,
        "no_api_key",
        "No API key found in request",
        hint="No `apikey` request header or url param was found.",
    )


def invalid_api_key() -> KeyRejected:
    return KeyRejected(
        401,
        "invalid_api_key",
        "Invalid API key",
        hint="Double check your Supabase `anon` or `service_role` API key.",
    )


# SQLSTATE → HTTP status, as PostgREST v12's pgErrorStatus. Exact codes first, then classes.
_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "57P01": 503,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_CLASS_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def sqlstate_status(sqlstate: str, message: str, *, role: str) -> int:
    """The HTTP status PostgREST answers for a Postgres error."""
    if sqlstate == "42501":
        # No privilege: an anonymous caller should authenticate (401), others are refused.
        return 401 if role == ANON_ROLE else 403
    if sqlstate == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if sqlstate == "22023":
        # v13: the role named by the token does not exist (PostgREST issue 3601).
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if sqlstate.startswith("PT"):
        digits = sqlstate[2:]
        return int(digits) if digits.isdigit() and 100 <= int(digits) <= 599 else 500
    status = _EXACT_STATUS.get(sqlstate) or _CLASS_STATUS.get(sqlstate[:2])
    return status or 400


def postgres_error(exc: psycopg.Error, role: str) -> ApiError:
    diag = exc.diag
    sqlstate = exc.sqlstate or ""
    message = diag.message_primary or str(exc)
    if not sqlstate:
        # The connection broke during the call.
        return ApiError(
            503, "PGRST001", "Database client error. Retrying the connection.", details=str(exc)
        )
    if sqlstate == "PGRST":
        return custom_error(message, diag.message_detail)
    status = sqlstate_status(sqlstate, message, role=role)
    return ApiError(status, sqlstate, message, diag.message_detail, diag.message_hint)


def custom_error(message: str, detail: str | None) -> ApiError:
    """``raise sqlstate 'PGRST' using message = '{json body}', detail = '{status, headers}'``."""
    try:
        body = json.loads(message)
        extra = json.loads(detail or "{}")
        return ApiError(
            int(extra.get("status", 400)),
            str(body.get("code", "")),
            str(body.get("message", "")),
            body.get("details"),
            body.get("hint"),
            {str(k): str(v) for k, v in dict(extra.get("headers") or {}).items()},
        )
    except (ValueError, TypeError, AttributeError):
        return ApiError(
            500,
            "PGRST121",
            "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error",
            details=message,
            hint=None,
        )
