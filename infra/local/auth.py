"""The local stand-in for Supabase Auth (GoTrue) under ``/auth/v1``: the part the project uses.

What supabase-js ``auth.signInAnonymously()`` and supabase-py ``auth.sign_in_anonymously()``
call, and what a session needs afterwards (REALTIME.md, "Auth"; GoTrue's ``api/signup.go``,
``api/token.go``, ``api/user.go``, ``api/logout.go`` for the shapes):

- ``POST /signup`` with no email or password: a new anonymous user and its session; with
  ``email`` and ``password``: a confirmed email user (local Supabase auto-confirms);
- ``POST /token?grant_type=password`` and ``?grant_type=refresh_token`` (refresh tokens rotate:
  each is good once);
- ``GET /user`` for a bearer token of a live session; ``POST /logout`` ends it;
- ``GET /health`` and ``GET /settings``.

Access tokens are HS256 with the project's JWT secret, ``sub`` a fresh uuid, ``role`` and
``aud`` ``authenticated``, ``session_id``, ``is_anonymous`` — so the gateway, the functions and
the Realtime stand-in accept them as they accept the real Auth's. Users and sessions live in
memory: a restarted local stack forgets them, as ``supabase stop --no-backup`` would.
Errors use GoTrue's body ``{"code", "error_code", "msg"}``.
"""

from __future__ import annotations

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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

ACCESS_TOKEN_TTL_S = 3600  # GoTrue's default JWT_EXP
JWT_LEEWAY_S = 30
AUDIENCE = "authenticated"


class TokenError(Exception):
    """A token that does not authenticate; ``reason`` is the Realtime-style error text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def verify_token(secret: str, token: str | None, *, leeway_s: int = 0) -> dict[str, Any]:
    """Claims of an HS256 token signed with ``secret`` that has ``role`` and ``exp``.

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
    if header.get("alg") != "HS256":
        raise TokenError("JwtSignatureError", "Failed to validate JWT signature")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
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


class AuthService:
    """Users, sessions and refresh tokens in memory; every method is thread-safe."""

    def __init__(self, jwt_secret: str, *, access_token_ttl_s: int = ACCESS_TOKEN_TTL_S) -> None:
        self.jwt_secret = jwt_secret
        self.access_token_ttl_s = access_token_ttl_s
        self.issuer = "http://127.0.0.1:54321/auth/v1"
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._by_email: dict[str, str] = {}
        # session id -> user id; refresh token -> (session id, still usable)
        self._sessions: dict[str, str] = {}
        self._refresh: dict[str, tuple[str, bool]] = {}

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
        with self._lock:
            self._sessions[session_id] = user.id
        return self._issue(user, session_id, method)

    def _issue(self, user: User, session_id: str, method: str) -> dict[str, Any]:
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
        refresh_token = secrets.token_urlsafe(16)
        with self._lock:
            self._refresh[refresh_token] = (session_id, True)
        return {
            "access_token": jwt.encode(claims, self.jwt_secret, algorithm="HS256"),
            "token_type": "bearer",
            "expires_in": self.access_token_ttl_s,
            "expires_at": now + self.access_token_ttl_s,
            "refresh_token": refresh_token,
            "user": user.as_json(),
        }

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        with self._lock:
            entry = self._refresh.get(refresh_token)
            if entry is None or entry[0] not in self._sessions:
                raise AuthError(
                    400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"
                )
            session_id, usable = entry
            if not usable:
                raise AuthError(
                    400, "refresh_token_already_used", "Invalid Refresh Token: Already Used"
                )
            self._refresh[refresh_token] = (session_id, False)
            user = self._users[self._sessions[session_id]]
        return self._issue(user, session_id, "token_refresh")

    def user_for(self, authorization: str | None) -> tuple[User, str]:
        """The user and session id of a bearer token whose session is still open."""
        token = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not token:
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], audience=AUDIENCE, leeway=0
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
            if not _api_key_ok(self.service.jwt_secret, request):
                return JSONResponse({"message": "Invalid API key"}, 401)
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
            Route("/auth/v1/health", routes.health, methods=["GET"]),
            Route("/auth/v1/settings", routes.guarded(routes.settings), methods=["GET"]),
        ]
    )


def _api_key_ok(secret: str, request: Request) -> bool:
    """As Supabase's API gateway: an ``apikey`` (header or query) that is one of our JWTs."""
    key = request.headers.get("apikey") or request.query_params.get("apikey")
    try:
        verify_token(secret, key)
    except TokenError:
        return False
    return True
