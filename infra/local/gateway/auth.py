"""Keys and roles: the bearer token (``Authorization``, else ``apikey``) to a database role.

As PostgREST v13 (src/PostgREST/Auth.hs): an HS256/384/512 JWT checked with the project's
secret, its claims verified with PostgREST's rules and messages (PGRST301 for a token that
cannot be decoded or verified, PGRST303 for invalid claims), and its ``role`` claim naming the
role. Whether that role may be used is the database's answer (``SET ROLE`` in the call).

``make_jwt`` mints fresh tokens (users'); the project's two API keys are ``api_key``'s
(``infra.local.keys``), and the API key check (``check_api_key``, Supabase's API gateway)
accepts exactly those.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from infra.local.gateway.config import DEFAULT_KEY_LIFETIME
from infra.local.gateway.errors import ApiError, invalid_api_key, no_api_key
from infra.local.keys import (
    INVALID_API_KEY,
    JWT_ISSUER,
    api_key_refusal,
)


def make_jwt(
    secret: str,
    role: str,
    *,
    expires_in: timedelta | None = None,
    **claims: Any,
) -> str:
    """A freshly minted HS256 token like the Supabase CLI's (``iss``, ``role``, ``iat`` now, ``exp``
    ``expires_in`` later): ``make_jwt(secret, "authenticated", sub=user_id)`` a signed-in user's
    access token. ``claims`` override the defaults (pass ``exp=`` in the past for an expired
    token).

    It is never one of the project's API keys, even for ``anon`` or ``service_role`` with
    nothing else given: those come from ``api_key`` (``infra.local.keys``), by name, so a caller
    asking for a fresh token gets one (the API gateway refuses it as an ``apikey``).
    """
    now = int(time.time())
    lifetime = DEFAULT_KEY_LIFETIME if expires_in is None else expires_in
    payload: dict[str, Any] = {
        "iss": JWT_ISSUER,
        "role": role,
        "iat": now,
        "exp": now + int(lifetime.total_seconds()),
    }
    if role == "authenticated":
        payload["aud"] = "authenticated"
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


#: How many verified tokens are remembered (the keys, and users' access tokens).
SIGNED_TOKENS_KEPT = 1024

# PostgREST v13.0.8 src/PostgREST/Error.hs (JwtError): PGRST301 for a token that cannot be
# decoded or verified, PGRST303 for one whose claims are invalid (expired, not yet valid …).
JWT_DECODE_ERROR = "PGRST301"
JWT_CLAIMS_ERROR = "PGRST303"
# src/PostgREST/Auth.hs (parseToken): the skew allowed on exp, nbf and iat.
JWT_ALLOWED_SKEW_SECONDS = 30


def _jwt_error(message: str, code: str = JWT_DECODE_ERROR) -> ApiError:
    description = message.replace('"', "'")
    return ApiError(
        401,
        code,
        message,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


def _seconds(value: float) -> int:
    """Haskell's ``fromMaybe 0 . toBoundedInteger``: a non-integral or out-of-range time is 0."""
    if isinstance(value, float) and not value.is_integer():
        return 0
    seconds = int(value)
    return seconds if -(2**63) <= seconds < 2**63 else 0


def _claims_problem(claims: Mapping[str, Any], now: int) -> str | None:
    """PostgREST v13's verifyClaims (Auth.hs), in its order, with its messages; None if valid."""
    skew = JWT_ALLOWED_SKEW_SECONDS
    checks: tuple[tuple[str, Callable[[int], bool], str], ...] = (
        ("exp", lambda t: now <= t + skew, "JWT expired"),
        ("nbf", lambda t: now >= t - skew, "JWT not yet valid"),
        ("iat", lambda t: now >= t - skew, "JWT issued at future"),
    )
    for claim, valid, message in checks:
        value = claims.get(claim)
        if value is None and claim not in claims:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"The JWT '{claim}' claim must be a number"
        if not valid(_seconds(value)):
            return message
    audience = claims.get("aud")
    # Supabase sets no jwt-aud, so any string or list of strings is accepted.
    if not (
        audience is None
        or isinstance(audience, str)
        or (isinstance(audience, list) and all(isinstance(a, str) for a in audience))
    ):
        return "The JWT 'aud' claim must be a string or an array of strings"
    return None


def _valid_until(claims: Mapping[str, Any]) -> float:
    """The last second a token whose claims are valid now stays valid: ``exp`` plus the skew
    (``nbf`` and ``iat``, valid now, stay so); without ``exp``, for ever."""
    expires = claims.get("exp")
    if expires is None:
        return math.inf
    return _seconds(expires) + JWT_ALLOWED_SKEW_SECONDS


@dataclass(frozen=True)
class Identity:
    role: str
    claims: Mapping[str, Any]

    @functools.cached_property
    def claims_json(self) -> str:
        """``request.jwt.claims``: the claims' JSON text (once per identity, which
        ``Authenticator`` keeps per token)."""
        return json.dumps(self.claims)


def _bearer(header: str | None) -> str | None:
    """Wai's extractBearerAuth: the token after ``Bearer`` (maybe empty); None otherwise."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Authenticator:
    """Turns a request's headers into the ``Identity`` PostgREST would switch to."""

    def __init__(self, jwt_secret: str, anonymous_role: str | None) -> None:
        if not jwt_secret:
            raise ValueError("jwt_secret is required")
        self.jwt_secret = jwt_secret
        #: PostgREST's db-anon-role: the role of a request without a token (None: 401).
        self.anonymous_role = anonymous_role
        #: Bearer tokens found valid, with their identity and the last second they stay valid
        #: (``exp`` plus the skew), as PostgREST keeps them since v12: "the JWT is cached on
        #: the first request using the exp claim to set the cache entry's lifetime" (Supabase's
        #: "PostgREST 12" post). A token not yet valid or expired is not kept, so it is
        #: checked, and refused, every time.
        self._valid: dict[str, tuple[Identity, float]] = {}
        self._anonymous = (
            None if anonymous_role is None else Identity(anonymous_role, {"role": anonymous_role})
        )

    def check_api_key(self, key: str | None) -> None:
        """Supabase's API gateway: every request carries one of the project's API keys.

        The gateway (Kong's ``key-auth`` on ``/rest/v1/`` in supabase/supabase
        ``docker/volumes/api/kong.yml``: consumers ``anon`` and ``service_role``, each with its
        key as its one ``keyauth_credentials`` entry, and the hosted project's) takes the key
        (``key``) from the ``apikey`` header or URL parameter and compares it with the project's
        keys: a missing or unknown one is 401 before PostgREST. So another token signed with the
        project's secret, even of role anon, is no key; the ``Authorization`` bearer, when
        present, then decides the role (an anon key with a service_role bearer is service_role).
        The local stack issues no ``sb_publishable_``/``sb_secret_`` keys.
        """
        refusal = api_key_refusal(self.jwt_secret, key)
        if refusal is not None:
            raise invalid_api_key() if refusal == INVALID_API_KEY else no_api_key()

    def identify(self, authorization: str | None, apikey: str | None) -> Identity:
        """Verify the bearer token (the ``Authorization`` header's, else the ``apikey`` header)
        like PostgREST v13; its ``role`` claim names the role.

        Whether that role may be used is the database's answer, as in PostgREST: switching to
        a role authenticator is not a member of fails with 42501, to one that does not exist
        with 22023 (401).
        """
        bearer = _bearer(authorization)
        if bearer == "":
            raise _jwt_error("Empty JWT is sent in Authorization header")
        # Supabase's API gateway passes the apikey header on when there is no bearer token.
        token = bearer or (apikey or "").strip()
        if not token:
            if self._anonymous is None:
                raise ApiError(401, "PGRST302", "Anonymous access is disabled")
            return self._anonymous
        known = self._valid.get(token)
        if known is not None and int(time.time()) <= known[1]:
            return known[0]
        claims = self._decode(token)
        role = claims.get("role", self.anonymous_role)
        if role is None:
            raise ApiError(401, "PGRST302", "Anonymous access is disabled")
        # PostgREST takes a non-string claim as its JSON text (Auth.hs, parseClaims: unquoted).
        role_name = role if isinstance(role, str) else json.dumps(role)
        identity = Identity(role_name, {**claims, "role": role_name})
        if len(self._valid) >= SIGNED_TOKENS_KEPT:
            self._valid.clear()  # a bound, not an LRU: the keys come back on the next request
        self._valid[token] = (identity, _valid_until(claims))
        return identity

    def _decode(self, token: str) -> dict[str, Any]:
        """PostgREST v13's parseToken: three parts, a valid signature, then the claims."""
        claims = self._signed_claims(token)
        problem = _claims_problem(claims, int(time.time()))
        if problem:
            raise _jwt_error(problem, JWT_CLAIMS_ERROR)
        return claims

    def _signed_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token with three parts and a valid signature (not yet checked)."""
        parts = token.count(".") + 1
        if parts != 3:
            raise _jwt_error(f"Expected 3 parts in JWT; got {parts}")
        try:
            claims = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256", "HS384", "HS512"],
                # The claims are checked by _decode, by PostgREST's rules and messages.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "require": [],
                },
            )
        except jwt.InvalidAlgorithmError:
            raise _jwt_error("Wrong or unsupported encoding algorithm") from None
        except jwt.DecodeError as exc:
            if str(exc).startswith("Invalid payload string"):
                raise _jwt_error("Parsing claims failed", JWT_CLAIMS_ERROR) from None
            raise _jwt_error("JWT cryptographic operation failed") from None
        except jwt.InvalidTokenError:
            raise _jwt_error("JWT cryptographic operation failed") from None
        if not isinstance(claims, dict):
            raise _jwt_error("Parsing claims failed", JWT_CLAIMS_ERROR)
        return claims
