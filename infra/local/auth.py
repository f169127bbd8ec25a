"""The local stand-in for Supabase Auth (GoTrue) under ``/auth/v1``: the part the project uses.

What supabase-js ``auth.signInAnonymously()`` and supabase-py ``auth.sign_in_anonymously()``
call, and what a session needs afterwards (REALTIME.md, "Auth"; GoTrue's ``api/signup.go``,
``api/token.go``, ``api/user.go``, ``api/logout.go`` for the shapes):

- ``POST /signup`` with no email or password: a new anonymous user and its session; with
  ``email`` and ``password``: a confirmed email user (local Supabase auto-confirms);
- ``POST /token?grant_type=password`` and ``?grant_type=refresh_token`` (refresh tokens rotate
  as GoTrue's do, reuse interval included: ``AuthService.refresh``);
- ``GET /user`` for a bearer token of a live session; ``POST /logout`` ends it;
- ``GET /.well-known/jwks.json`` (the public signing keys, no API key needed: Kong's
  ``auth-v1-open-jwks`` route), ``GET /health`` and ``GET /settings`` (with the key, as every
  other ``/auth/v1/`` route: Kong's ``auth-v1`` service is key-auth'd).

Access tokens carry ``sub`` a fresh uuid, ``role`` and ``aud`` ``authenticated``,
``session_id``, ``is_anonymous``. They are signed HS256 with the project's JWT secret (the
legacy default), or — ``--auth-jwt-alg ES256`` — ES256 with a key derived from that secret
and published at the JWKS endpoint, as a project on asymmetric JWT signing keys does. The
functions (``SUPABASE_JWT_JWKS`` for ES256) and the Realtime stand-in accept them as they
accept the real Auth's; the REST gateway checks HS256 only, so ES256 user tokens do not reach
``/rest/v1`` locally (nothing here sends them there: the functions use the service key).
Users and sessions live in memory: a restarted local stack forgets them, as
``supabase stop --no-backup`` would. Errors use GoTrue's body ``{"code", "error_code", "msg"}``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from infra.local.keys import api_key_refusal

ACCESS_TOKEN_TTL_S = 3600  # GoTrue's default JWT_EXP
JWT_LEEWAY_S = 30
AUDIENCE = "authenticated"
#: GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL as Supabase sets it (the CLI's config.toml
#: ``refresh_token_reuse_interval = 10``; GoTrue's own default is 0)
REFRESH_TOKEN_REUSE_INTERVAL_S = 10.0
SIGNING_ALGORITHMS = ("HS256", "ES256")


@dataclass(frozen=True)
class SigningKey:
    """What access tokens are signed with: the JWT secret (HS256), or an ES256 key pair whose
    public half the JWKS endpoint publishes under ``kid``."""

    algorithm: str
    secret: str
    private_key: ec.EllipticCurvePrivateKey | None = None
    kid: str | None = None

    def sign(self, claims: dict[str, Any]) -> str:
        if self.private_key is None:
            return jwt.encode(claims, self.secret, algorithm="HS256")
        return jwt.encode(
            claims, self.private_key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"}
        )

    def jwks(self) -> dict[str, Any]:
        """The public keys as GoTrue serves them (``internal/api/jwks.go``: never the HMAC
        secret; ``internal/conf/jwk.go``: ``use`` "sig", ``key_ops`` ["verify"])."""
        if self.private_key is None:
            return {"keys": []}
        public = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {
            "keys": [
                {**public, "kid": self.kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"]}
            ]
        }


@functools.cache
def signing_key(secret: str, algorithm: str = "HS256") -> SigningKey:
    """The stand-in's signing key for ``algorithm``. The ES256 key is derived from the JWT
    secret, so every process of one local stack (Auth, Realtime) and every restart has the same
    key, as a real project's key survives an Auth restart. Local only: the secret is public."""
    if algorithm == "HS256":
        return SigningKey("HS256", secret)
    if algorithm != "ES256":
        raise ValueError(f"the local Auth signs with {' or '.join(SIGNING_ALGORITHMS)}")
    seed = hmac.new(secret.encode(), b"ai-job-queue local Auth ES256 key", "sha256").digest()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
    private = ec.derive_private_key(int.from_bytes(seed) % (order - 1) + 1, ec.SECP256R1())
    kid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"local-auth-es256:{seed.hex()}"))
    return SigningKey("ES256", secret, private, kid)


class TokenError(Exception):
    """A token that does not authenticate; ``reason`` is the Realtime-style error text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def verify_token(secret: str, token: str | None, *, leeway_s: int = 0) -> dict[str, Any]:
    """Claims of a token that has ``role`` and ``exp``, signed HS256 with ``secret`` or ES256
    with the stand-in's key derived from it (``signing_key``).

    Raises ``TokenError`` whose ``kind`` is the Realtime server's error family
    (``InvalidJWTToken`` for expiry, ``JwtSignatureError``, ``MalformedJWT``) and whose
    ``message`` is its text ("Token has expired N seconds ago", …).
    """
    if not token:
        raise TokenError("MalformedJWT", "API key is missing")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError("MalformedJWT", "The token provided is not a valid JWT") from exc
    key = _verification_key(secret, header)
    if key is None:
        raise TokenError("JwtSignatureError", "Failed to validate JWT signature")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[header["alg"]],
            options={"verify_aud": False, "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenError("JwtSignatureError", "Failed to validate JWT signature") from exc
    if "role" not in unverified or "exp" not in unverified:
        raise TokenError("MalformedJWT", "Fields `role` and `exp` are required in JWT")
    expired_for = int(time.time()) - int(claims["exp"])
    if expired_for > leeway_s:
        raise TokenError("InvalidJWTToken", f"Token has expired {expired_for} seconds ago")
    return claims


def _verification_key(secret: str, header: dict[str, Any]) -> Any:
    """The key a token with this header is checked with; None when no key of ours fits (an
    unknown algorithm or ``kid``, ``none``)."""
    if header.get("alg") == "HS256":
        return secret
    es256 = signing_key(secret, "ES256")
    if header.get("alg") == "ES256" and header.get("kid") == es256.kid:
        return es256.private_key.public_key() if es256.private_key else None
    return None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class User:
    id: str
    created_at: str
    is_anonymous: bool
    email: str = ""
    password_hash: bytes = b""
    salt: bytes = b""
    user_metadata: dict[str, Any] = field(default_factory=dict)
    last_sign_in_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        provider: dict[str, Any] = (
            {} if self.is_anonymous else {"provider": "email", "providers": ["email"]}
        )
        confirmed = None if self.is_anonymous else self.created_at
        return {
            "id": self.id,
            "aud": AUDIENCE,
            "role": "authenticated",
            "email": self.email,
            "email_confirmed_at": confirmed,
            "confirmed_at": confirmed,
            "phone": "",
            "last_sign_in_at": self.last_sign_in_at,
            "app_metadata": provider,
            "user_metadata": self.user_metadata,
            "identities": [],
            "created_at": self.created_at,
            "updated_at": self.last_sign_in_at or self.created_at,
            "is_anonymous": self.is_anonymous,
        }


@dataclass
class AuthError(Exception):
    """GoTrue's error answer: HTTP status, ``error_code`` and message."""

    status: int
    error_code: str
    msg: str

    def response(self) -> JSONResponse:
        body = {"code": self.status, "error_code": self.error_code, "msg": self.msg}
        return JSONResponse(body, self.status)


@dataclass
class RefreshToken:
    """One refresh token of a session, as GoTrue's ``auth.refresh_tokens`` row keeps it."""

    session_id: str
    parent: str | None
    #: when it was revoked (a monotonic clock); GoTrue's ``updated_at`` of the revoked row
    revoked_at: float | None = None


class AuthService:
    """Users, sessions and refresh tokens in memory; every method is thread-safe."""

    def __init__(
        self,
        jwt_secret: str,
        *,
        access_token_ttl_s: int = ACCESS_TOKEN_TTL_S,
        signing_algorithm: str = "HS256",
        refresh_token_reuse_interval_s: float = REFRESH_TOKEN_REUSE_INTERVAL_S,
    ) -> None:
        self.jwt_secret = jwt_secret
        self.signing_key = signing_key(jwt_secret, signing_algorithm)
        self.access_token_ttl_s = access_token_ttl_s
        self.refresh_token_reuse_interval_s = refresh_token_reuse_interval_s
        self.issuer = "http://127.0.0.1:54321/auth/v1"
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._by_email: dict[str, str] = {}
        # session id -> user id; refresh token -> its row (insertion order = GoTrue's id order)
        self._sessions: dict[str, str] = {}
        self._refresh: dict[str, RefreshToken] = {}

    # --- users ----------------------------------------------------------------------------

    def sign_up(self, email: str | None, password: str | None, data: Any) -> dict[str, Any]:
        metadata = data if isinstance(data, dict) else {}
        if not email and not password:
            user = User(str(uuid.uuid4()), _now_iso(), is_anonymous=True, user_metadata=metadata)
        else:
            user = self._new_email_user(email or "", password or "", metadata)
        with self._lock:
            if user.email and user.email in self._by_email:
                raise AuthError(422, "user_already_exists", "User already registered")
            self._users[user.id] = user
            if user.email:
                self._by_email[user.email] = user.id
        return self._new_session(user, "anonymous" if user.is_anonymous else "password")

    def _new_email_user(self, email: str, password: str, metadata: dict[str, Any]) -> User:
        email = email.strip().lower()
        if "@" not in email:
            raise AuthError(400, "validation_failed", "Unable to validate email address")
        if len(password) < 6:  # GoTrue's default minimum password length
            raise AuthError(422, "weak_password", "Password should be at least 6 characters.")
        salt = secrets.token_bytes(16)
        return User(
            str(uuid.uuid4()),
            _now_iso(),
            is_anonymous=False,
            email=email,
            password_hash=_hash(password, salt),
            salt=salt,
            user_metadata=metadata,
        )

    def sign_in_with_password(self, email: str, password: str) -> dict[str, Any]:
        with self._lock:
            user = self._users.get(self._by_email.get(email.strip().lower(), ""))
        if user is None or not hmac.compare_digest(user.password_hash, _hash(password, user.salt)):
            raise AuthError(400, "invalid_credentials", "Invalid login credentials")
        return self._new_session(user, "password")

    # --- sessions -------------------------------------------------------------------------

    def _new_session(self, user: User, method: str) -> dict[str, Any]:
        session_id = str(uuid.uuid4())
        refresh_token = _new_refresh_token()
        with self._lock:
            self._sessions[session_id] = user.id
            self._refresh[refresh_token] = RefreshToken(session_id, parent=None)
        return self._issue(user, session_id, method, refresh_token)

    def _issue(
        self, user: User, session_id: str, method: str, refresh_token: str
    ) -> dict[str, Any]:
        now = int(time.time())
        user.last_sign_in_at = _now_iso()
        claims = {
            "iss": self.issuer,
            "sub": user.id,
            "aud": AUDIENCE,
            "exp": now + self.access_token_ttl_s,
            "iat": now,
            "email": user.email,
            "phone": "",
            "app_metadata": user.as_json()["app_metadata"],
            "user_metadata": user.user_metadata,
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": method, "timestamp": now}],
            "session_id": session_id,
            "is_anonymous": user.is_anonymous,
        }
        return {
            "access_token": self.signing_key.sign(claims),
            "token_type": "bearer",
            "expires_in": self.access_token_ttl_s,
            "expires_at": now + self.access_token_ttl_s,
            "refresh_token": refresh_token,
            "user": user.as_json(),
        }

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Rotate a refresh token as GoTrue does (``internal/tokens/service.go``,
        ``RefreshTokenGrant``, refresh tokens kept as rows):

        - a live token is revoked and a child of it issued;
        - a revoked token whose child is the session's active token gets that active token
          back (the client lost the last answer), with a new access token;
        - another revoked token, within the reuse interval of its revocation, gets a new
          child of its own (concurrent refreshes, e.g. two tabs);
        - outside it, the whole family — every live token of the session — is revoked and the
          answer is 400 ``refresh_token_already_used`` (possible theft).
        """
        with self._lock:
            entry = self._refresh.get(refresh_token)
            if entry is None or entry.session_id not in self._sessions:
                raise AuthError(
                    400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"
                )
            issued = self._rotate(refresh_token, entry, time.monotonic())
            user = self._users[self._sessions[entry.session_id]]
        return self._issue(user, entry.session_id, "token_refresh", issued)

    def _rotate(self, token: str, entry: RefreshToken, now: float) -> str:
        """The refresh token to hand out for ``token`` (under the lock)."""
        if entry.revoked_at is not None:
            active = self._active_refresh_token(entry.session_id)
            if active is not None and self._refresh[active].parent == token:
                return active
            if now > entry.revoked_at + self.refresh_token_reuse_interval_s:
                for other in self._refresh.values():
                    if other.session_id == entry.session_id and other.revoked_at is None:
                        other.revoked_at = now
                raise AuthError(
                    400, "refresh_token_already_used", "Invalid Refresh Token: Already Used"
                )
        # GrantRefreshTokenSwap: revoke (again: a reused token's reuse window restarts, as the
        # row's updated_at does) and issue a child in the same session
        entry.revoked_at = now
        child = _new_refresh_token()
        self._refresh[child] = RefreshToken(entry.session_id, parent=token)
        return child

    def _active_refresh_token(self, session_id: str) -> str | None:
        """The session's newest live token (GoTrue: ``revoked is false order by id desc``)."""
        live = [
            token
            for token, entry in self._refresh.items()
            if entry.session_id == session_id and entry.revoked_at is None
        ]
        return live[-1] if live else None

    def user_for(self, authorization: str | None) -> tuple[User, str]:
        """The user and session id of a bearer token whose session is still open."""
        token = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not token:
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            key = _verification_key(self.jwt_secret, jwt.get_unverified_header(token))
            if key is None:
                raise jwt.InvalidSignatureError("no key of this server signed it")
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.signing_key.algorithm],
                audience=AUDIENCE,
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise AuthError(
                403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {exc}"
            ) from exc
        with self._lock:
            user_id = self._sessions.get(str(claims.get("session_id")))
            user = self._users.get(str(claims.get("sub")))
        if user is None or user_id != user.id:
            raise AuthError(
                403, "session_not_found", "Session from session_id claim in JWT does not exist"
            )
        return user, str(claims["session_id"])

    def logout(self, authorization: str | None, scope: str) -> None:
        user, session_id = self.user_for(authorization)
        with self._lock:
            if scope == "local":
                ended = {session_id}
            else:
                mine = {s for s, u in self._sessions.items() if u == user.id}
                ended = mine - {session_id} if scope == "others" else mine
            for sid in ended:
                self._sessions.pop(sid, None)


def _new_refresh_token() -> str:
    return secrets.token_urlsafe(16)


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)


# --- HTTP -------------------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise AuthError(400, "bad_json", "Could not parse request body as JSON") from exc
    if not isinstance(body, dict):
        raise AuthError(400, "bad_json", "Could not parse request body as JSON")
    return body


class _Routes:
    """The handlers of ``/auth/v1``; each raises ``AuthError`` for GoTrue's error answers."""

    def __init__(self, service: AuthService) -> None:
        self.service = service

    def guarded(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            refused = _api_key_refusal(self.service.jwt_secret, request)
            if refused:
                return JSONResponse({"message": refused}, 401)
            try:
                result: Response = await handler(request)
            except AuthError as exc:
                return exc.response()
            return result

        return endpoint

    async def signup(self, request: Request) -> Response:
        body = await _body(request)
        return JSONResponse(
            self.service.sign_up(body.get("email"), body.get("password"), body.get("data"))
        )

    async def token(self, request: Request) -> Response:
        grant = request.query_params.get("grant_type")
        body = await _body(request)
        if grant == "refresh_token":
            return JSONResponse(self.service.refresh(str(body.get("refresh_token") or "")))
        if grant == "password":
            email, password = str(body.get("email") or ""), str(body.get("password") or "")
            return JSONResponse(self.service.sign_in_with_password(email, password))
        raise AuthError(400, "unsupported_grant_type", "unsupported_grant_type")

    async def user(self, request: Request) -> Response:
        found, _ = self.service.user_for(request.headers.get("authorization"))
        return JSONResponse(found.as_json())

    async def logout(self, request: Request) -> Response:
        scope = request.query_params.get("scope", "global")
        if scope not in ("global", "local", "others"):
            raise AuthError(400, "validation_failed", "Unsupported logout scope")
        self.service.logout(request.headers.get("authorization"), scope)
        return Response(status_code=204)

    async def jwks(self, request: Request) -> Response:
        # GoTrue answers it with "Cache-Control: public, max-age=600" (internal/api/jwks.go)
        headers = {"Cache-Control": "public, max-age=600"}
        return JSONResponse(self.service.signing_key.jwks(), headers=headers)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"version": "local", "name": "GoTrue", "description": "stand-in"})

    async def settings(self, request: Request) -> Response:
        return JSONResponse(
            {
                "external": {"anonymous_users": True, "email": True, "phone": False},
                "disable_signup": False,
                "mailer_autoconfirm": True,
                "phone_autoconfirm": False,
            }
        )


def create_auth_app(service: AuthService) -> Router:
    """The ``/auth/v1`` routes as an ASGI app (mounted by the local Supabase server)."""
    routes = _Routes(service)
    return Router(
        routes=[
            Route("/auth/v1/signup", routes.guarded(routes.signup), methods=["POST"]),
            Route("/auth/v1/token", routes.guarded(routes.token), methods=["POST"]),
            Route("/auth/v1/user", routes.guarded(routes.user), methods=["GET"]),
            Route("/auth/v1/logout", routes.guarded(routes.logout), methods=["POST"]),
            Route("/auth/v1/.well-known/jwks.json", routes.jwks, methods=["GET"]),
            Route("/auth/v1/health", routes.guarded(routes.health), methods=["GET"]),
            Route("/auth/v1/settings", routes.guarded(routes.settings), methods=["GET"]),
        ]
    )


def _api_key_refusal(secret: str, request: Request) -> str | None:
    """As Supabase's API gateway (Kong ``key-auth``): the ``apikey`` header (or URL parameter)
    must be one of the project's two keys (``project_api_keys``); another token signed with the
    secret is no key. None when it is, else the gateway's message."""
    return api_key_refusal(
        secret, request.headers.get("apikey") or request.query_params.get("apikey")
    )


# --- command line (the local Supabase server's Auth flags) ------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stand-in's own settings, as ``python -m infra.local.supabase_server`` flags."""
    parser.add_argument(
        "--auth-jwt-alg",
        choices=SIGNING_ALGORITHMS,
        default="HS256",
        help="sign access tokens with the JWT secret (HS256) or an ES256 key served as JWKS",
    )
    parser.add_argument(
        "--auth-refresh-token-reuse-interval",
        type=float,
        default=REFRESH_TOKEN_REUSE_INTERVAL_S,
        metavar="SECONDS",
        help="GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL",
    )


def service_from_arguments(args: argparse.Namespace, jwt_secret: str) -> AuthService:
    return AuthService(
        jwt_secret,
        signing_algorithm=args.auth_jwt_alg,
        refresh_token_reuse_interval_s=args.auth_refresh_token_reuse_interval,
    )
