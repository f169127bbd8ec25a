"""Who may call, in one place: the caller of the public functions and of the private ones.

Public functions (``caller_id``): a verified Supabase JWT names the user (its ``sub``, a
Supabase Auth user id) — HS256 with the legacy ``SUPABASE_JWT_SECRET``, ES256/RS256 with the
project's published signing keys (JWKS); a Bearer that cannot be verified is refused, never
taken for someone else, and the anon key as the Bearer means no user. Then the user header,
trusted only from the BFF (``X-BFF-Secret`` matching ``BFF_SHARED_SECRET``) or when no
authentication is configured at all; else the shared anonymous identity, when
``ALLOW_ANONYMOUS``.

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
import threading
import time
from typing import Any

import flask

from shared import errors, logs
from shared.certs import CachingRequest
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

    A Bearer token names its user only once verified (``verified_user``); one this deployment
    cannot verify is refused (401), never taken for the shared anonymous caller. The project's
    anon key as the Bearer (``is_anon_key``) means "no user", as it does to Supabase itself.

    The user header names any user, so it is trusted only from the BFF (with
    ``BFF_SHARED_SECRET`` in ``X-BFF-Secret``), or when no authentication is configured at
    all (the seed's anonymous portfolio mode). With JWT verification configured and no BFF
    secret, the header is refused: a browser must prove who it is with its JWT.
    """
    token = _bearer(request)
    if token is not None:
        # A token verified lately names a user, so it is not the anon key (which names
        # nobody): asked first, the memory spares a polling browser's every request the two
        # unverified decodes (is_anon_key's and the header's), 80 us of the 85 us per call
        remembered = _remembered_user(token, settings)
        if remembered is not None:
            return remembered
        if not is_anon_key(token):
            return _verify(token, settings)
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


def _bearer(request: flask.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def is_anon_key(token: str) -> bool:
    """Whether a Bearer is the project's anon key: a publishable key (``sb_publishable_…``) or
    a JWT of role ``anon`` naming no user (the legacy anon key).

    Read without verifying, on purpose: such a token names nobody, so it asks for nothing a
    request without it would not get (the user header, else the shared anonymous caller);
    refusing it would only break clients that send the anon key when signed out, as
    supabase-js does. A token that names a user is never judged by this.
    """
    if token.startswith("sb_publishable_"):
        return True
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return claims.get("role") == "anon" and "sub" not in claims


def verified_user(token: str, settings: Settings) -> str:
    """The user id (``sub``, a lower-case uuid) of a token verified with this deployment's
    keys.

    HS256 is verified with ``SUPABASE_JWT_SECRET``; ES256 and RS256 with the project's
    published signing keys (``SUPABASE_JWT_JWKS``), the key picked by the token's ``kid`` and
    used only for the algorithm it is published for. Nothing else is accepted: not ``none``,
    not an HMAC over a public key (algorithm confusion), not an algorithm with no key here.
    """
    remembered = _remembered_user(token, settings)
    if remembered is not None:
        return remembered
    return _verify(token, settings)


def _verify(token: str, settings: Settings) -> str:
    """``verified_user`` for a token the memory does not hold: verified, then remembered."""
    import jwt

    key, algorithm, kid = _verification_key(token, settings)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options={"verify_aud": False, "require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise errors.Unauthorized(
            "the bearer token has expired", details={"reason": "expired"}
        ) from None
    except jwt.PyJWTError:
        raise _invalid() from None
    subject = claims.get("sub")
    # Only a Supabase Auth user id: never the shared "anonymous" identity, nothing RLS
    # (auth.uid(), a uuid) could not match, nothing unbounded or unencodable.
    if not isinstance(subject, str) or not CANONICAL_UUID.fullmatch(subject):
        raise errors.Unauthorized(
            "the bearer token's subject is not a user id", details={"reason": "subject"}
        )
    _remember(token, (key, algorithm, kid), subject.lower(), int(claims["exp"]))
    return subject.lower()


#: Tokens verified lately. A browser polls with the same access token every few seconds for
#: up to an hour, and checking its signature again cost 50 us (HS256) per request and more
#: for ES256/RS256. A token is taken from here only while it could not verify otherwise:
#: before its ``exp`` (PyJWT's rule: expired once ``exp <= now``) and under the same key
#: object, looked up again on every request (``_key_for``: the algorithm and ``kid`` are the
#: token's own, remembered with it, as its header cannot change without the token changing),
#: so a key the JWKS refresh dropped or replaced misses here and is checked, or refused,
#: anew. Only accepted tokens are kept; ``nbf``/``iat`` only ever pass later, never fail again.
_VERIFIED: dict[str, tuple[tuple[Any, str, str | None], str, int]] = {}
_VERIFIED_MAX = 1024
_verified_lock = threading.Lock()


def _remembered_user(token: str, settings: Settings) -> str | None:
    found = _VERIFIED.get(token)
    if found is None:
        return None
    (known_key, algorithm, kid), user_id, expires_at = found
    if expires_at <= time.time():
        return None  # verified_user's decode decides (and says "expired")
    # what _verification_key would pick for this token now; it raises as it would there
    if _key_for(algorithm, kid, settings) is not known_key:
        return None
    return user_id


def _remember(
    token: str, verified_with: tuple[Any, str, str | None], user_id: str, expires_at: int
) -> None:
    with _verified_lock:
        if token not in _VERIFIED and len(_VERIFIED) >= _VERIFIED_MAX:
            del _VERIFIED[next(iter(_VERIFIED))]  # the oldest entry
        _VERIFIED[token] = (verified_with, user_id, expires_at)


#: the asymmetric algorithms Supabase Auth signs with (docs: "JWT Signing Keys")
ASYMMETRIC = frozenset({"ES256", "RS256"})
#: an unknown ``kid`` refetches the keys at most this often (a rotated-in key is found, a
#: flood of made-up ids costs Supabase one request per period)
JWKS_REFETCH_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0


def _verification_key(token: str, settings: Settings) -> tuple[Any, str, str | None]:
    """The key and the one algorithm a token may be verified with, chosen by its header
    (and the header's ``kid``, which picks a published key)."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _invalid() from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if not isinstance(algorithm, str):
        raise _invalid()
    remembered_kid = kid if isinstance(kid, str) else None
    return _key_for(algorithm, remembered_kid, settings), algorithm, remembered_kid


def _key_for(algorithm: str, kid: str | None, settings: Settings) -> Any:
    """The key this deployment verifies ``algorithm`` (and ``kid``) with now."""
    if algorithm == "HS256":
        if not settings.supabase_jwt_secret:
            raise _unverifiable("an HS256 token needs SUPABASE_JWT_SECRET", "SUPABASE_JWT_SECRET")
        return settings.supabase_jwt_secret
    if algorithm in ASYMMETRIC:
        if not settings.supabase_jwt_jwks:
            raise _unverifiable(
                f"an {algorithm} token needs SUPABASE_JWT_JWKS", "SUPABASE_JWT_JWKS"
            )
        return _signing_key(settings, kid, algorithm)
    raise _invalid()


def _signing_key(settings: Settings, kid: object, algorithm: str) -> Any:
    """The public key published under ``kid`` for ``algorithm`` (cached, see ``_jwks``)."""
    import jwt

    if not isinstance(kid, str) or not kid:
        raise _invalid()
    client = _jwks(jwks_url(settings.supabase_url), settings.supabase_jwks_ttl_s)
    try:
        found = client.get_signing_key(kid)
    except jwt.PyJWKClientConnectionError:
        raise errors.DependencyDown("the signing keys could not be fetched") from None
    except (jwt.PyJWKClientError, jwt.PyJWKSetError):
        raise _invalid() from None
    # the key is used only for the algorithm it is published for: an RS256 key never checks
    # an "ES256" token, and no public key ever checks an HMAC (algorithm confusion)
    if found.algorithm_name != algorithm:
        raise _invalid()
    return found.key


def jwks_url(supabase_url: str) -> str:
    """Where Supabase Auth publishes the project's public signing keys (GoTrue
    ``internal/api/jwks.go``: ``/.well-known/jwks.json`` under ``/auth/v1``)."""
    return f"{supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"


@functools.cache
def _jwks(url: str, ttl_s: int) -> Any:
    """One key cache per process and URL: the key set is kept ``ttl_s`` seconds.

    PyJWKClient's own cooldown counts only successful fetches, and a failed fetch leaves it
    with no keys once their lifespan ends. So, on top of it: after a failed fetch no other is
    tried for ``JWKS_REFETCH_S`` (tokens with made-up ``kid``s cannot queue every signed-in
    request behind 5 s timeouts while Supabase Auth is down), and the last key set fetched
    keeps verifying through the outage (a published key stays valid until it is revoked and
    the set changes)."""
    import time

    import jwt

    class KeySet(jwt.PyJWKClient):
        last_good: Any = None
        failed_at: float | None = None

        def fetch_data(self) -> Any:
            now = time.monotonic()
            if self.failed_at is not None and now - self.failed_at < JWKS_REFETCH_S:
                return self._last_good_or_raise()
            try:
                data = super().fetch_data()
            except jwt.PyJWKClientConnectionError as exc:
                self.failed_at = now
                logs.error(
                    "the Supabase Auth signing keys could not be fetched", error=str(exc)[:200]
                )
                return self._last_good_or_raise()
            self.failed_at, self.last_good = None, data
            return data

        def _last_good_or_raise(self) -> Any:
            if self.last_good is None:
                raise jwt.PyJWKClientConnectionError("no signing keys fetched yet")
            return self.last_good

    return KeySet(
        url,
        lifespan=ttl_s,
        timeout=JWKS_FETCH_TIMEOUT_S,
        cooldown_duration=JWKS_REFETCH_S,
        headers={"User-Agent": "ai-job-queue"},
    )


def _invalid() -> errors.Unauthorized:
    return errors.Unauthorized("the bearer token is not valid", details={"reason": "invalid"})


def _unverifiable(why: str, setting_name: str) -> errors.Unauthorized:
    # A token this deployment cannot check must not act as someone else (the shared anonymous
    # caller): refuse it, and say which setting would let it through.
    return errors.Unauthorized(
        f"the bearer token cannot be verified here: {why}",
        details={"reason": "unverifiable", "setting": setting_name},
    )


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a secret header with its setting."""
    return hmac.compare_digest((given or "").encode(), expected.encode())


def _check_header_is_trusted(request: flask.Request, settings: Settings) -> None:
    if settings.bff_secret:
        if not secret_matches(request.headers.get(BFF_SECRET_HEADER), settings.bff_secret):
            raise errors.Unauthorized(
                f"{settings.user_id_header} is accepted only from the BFF ({BFF_SECRET_HEADER})"
            )
    elif settings.supabase_jwt_secret or settings.supabase_jwt_jwks:
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
def _google_transport() -> CachingRequest:
    """The HTTP transport google-auth fetches Google's certificates with: one per process,
    keeping them for their Cache-Control lifetime (``shared.certs``)."""
    import google.auth.transport.requests

    return CachingRequest(google.auth.transport.requests.Request())


def _verify_oidc(request: flask.Request, settings: Settings, audience: str) -> None:
    import google.auth.exceptions
    from google.oauth2 import id_token

    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        raise errors.Unauthorized("an OIDC bearer token is required")
    kwargs: dict[str, Any] = {"audience": audience}
    if settings.oidc_certs_url:
        kwargs["certs_url"] = settings.oidc_certs_url
    transport = _google_transport()
    token = auth[7:].strip()
    try:
        try:
            claims = id_token.verify_token(token, transport, **kwargs)
        except ValueError as exc:
            # a key newer than the kept certificates: look once more at a fresh document
            if "Certificate for key id" not in str(exc) or not transport.forget():
                raise
            claims = id_token.verify_token(token, transport, **kwargs)
    except ValueError as exc:
        raise errors.Unauthorized(
            "the OIDC token is not valid", details={"reason": str(exc)[:200]}
        ) from None
    except google.auth.exceptions.TransportError:
        # Cloud Tasks retries a 503 later; the token may well be good
        raise errors.DependencyDown("Google's signing certificates could not be fetched") from None
    if claims.get("iss") not in {"https://accounts.google.com", "accounts.google.com"}:
        raise errors.Unauthorized("the OIDC token has the wrong issuer")
    expected = settings.tasks_invoker_sa
    if expected and (claims.get("email") != expected or not claims.get("email_verified")):
        raise errors.Forbidden("the OIDC token is not from the invoker service account")
