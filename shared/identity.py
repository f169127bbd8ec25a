"""Who may call, in one place: the caller of the public functions and of the private ones.

Public functions (``caller_id``): a verified Supabase JWT names the user (its ``sub``, a
Supabase Auth user id); else the user header, trusted only from the BFF (``X-BFF-Secret``
matching ``BFF_SHARED_SECRET``) or when no authentication is configured at all; else the
shared anonymous identity, when ``ALLOW_ANONYMOUS``.

Private functions (``verify_caller``): the processor and the reaper accept only our Cloud
Tasks queue and Cloud Scheduler job, by the shared-secret header the task carries and/or the
Google-signed OIDC token (issuer, audience, service account); with neither configured they
refuse to start (``require_caller_check``) and refuse every call (fail closed), unless
``PROCESSOR_TRUST_CALLERS`` says IAM alone guards them.

Secrets are compared in constant time (``secret_matches``).
"""

from __future__ import annotations

import functools
import hmac
import re
from typing import Any

import flask

from shared import errors, logs
from shared.jobs import CANONICAL_UUID
from shared.settings import Settings
from shared.tasks import SECRET_HEADER

ANONYMOUS = "anonymous"
BFF_SECRET_HEADER = "X-BFF-Secret"
_USER_ID = re.compile(r"^[A-Za-z0-9._:@|-]{1,128}$")


# --- the public functions' caller ---------------------------------------------------------


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
        if not _USER_ID.fullmatch(header):
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
    except jwt.ExpiredSignatureError:
        raise errors.Unauthorized(
            "the bearer token has expired", details={"reason": "expired"}
        ) from None
    except jwt.PyJWTError:
        raise errors.Unauthorized(
            "the bearer token is not valid", details={"reason": "invalid"}
        ) from None
    subject = claims["sub"]
    # Only a Supabase Auth user id: never the shared "anonymous" identity, nothing RLS
    # (auth.uid(), a uuid) could not match, nothing unbounded or unencodable.
    if not isinstance(subject, str) or not CANONICAL_UUID.fullmatch(subject):
        raise errors.Unauthorized(
            "the bearer token's subject is not a user id", details={"reason": "subject"}
        )
    return subject.lower()


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


# --- the private functions' caller ----------------------------------------------------------


def verify_caller(request: flask.Request, settings: Settings, *, audience: str) -> None:
    """Only our Cloud Tasks queue / Cloud Scheduler job may call the private functions.

    In production IAM keeps the function private; on top of that, with
    PROCESSOR_VERIFY_OIDC the Google-signed OIDC token is checked (issuer, audience, service
    account), and with PROCESSOR_SHARED_SECRET the secret header the task carries. With
    neither, every call is refused (fail closed) unless PROCESSOR_TRUST_CALLERS says the
    platform alone guards the function.
    """
    if not has_caller_check(settings):
        logs.error("private function called with no caller check configured")
        raise errors.Forbidden(
            "this function is not configured to accept calls",
            details={"settings": ["PROCESSOR_SHARED_SECRET", "PROCESSOR_VERIFY_OIDC"]},
        )
    secret = settings.processor_secret
    if secret and not secret_matches(request.headers.get(SECRET_HEADER), secret):
        raise errors.Forbidden("this function only accepts calls from the task queue")
    if settings.verify_oidc:
        _verify_oidc(request, settings, audience)


def has_caller_check(settings: Settings) -> bool:
    return bool(settings.processor_secret or settings.verify_oidc or settings.trust_private_callers)


def require_caller_check(settings: Settings) -> None:
    """At cold start of a private function: refuse to start when nothing checks the caller."""
    if not has_caller_check(settings):
        raise errors.ConfigError(
            "a private function needs PROCESSOR_SHARED_SECRET or PROCESSOR_VERIFY_OIDC "
            "(or PROCESSOR_TRUST_CALLERS=true when the platform alone guards it)",
            details={"setting": "PROCESSOR_SHARED_SECRET"},
        )


@functools.cache
def _google_transport() -> Any:
    """The HTTP transport google-auth fetches Google's certificates with: one per process."""
    import google.auth.transport.requests

    return google.auth.transport.requests.Request()


def _verify_oidc(request: flask.Request, settings: Settings, audience: str) -> None:
    from google.oauth2 import id_token

    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        raise errors.Unauthorized("an OIDC bearer token is required")
    kwargs: dict[str, Any] = {"audience": audience}
    if settings.oidc_certs_url:
        kwargs["certs_url"] = settings.oidc_certs_url
    try:
        claims = id_token.verify_token(auth[7:].strip(), _google_transport(), **kwargs)
    except ValueError as exc:
        raise errors.Unauthorized(
            "the OIDC token is not valid", details={"reason": str(exc)[:200]}
        ) from None
    if claims.get("iss") not in {"https://accounts.google.com", "accounts.google.com"}:
        raise errors.Unauthorized("the OIDC token has the wrong issuer")
    expected = settings.tasks_invoker_sa
    if expected and (claims.get("email") != expected or not claims.get("email_verified")):
        raise errors.Forbidden("the OIDC token is not from the invoker service account")
