"""The project's two API keys, shared by the local REST gateway, Auth and Realtime stand-ins.

Supabase's API gateway (Kong ``key-auth`` in supabase/supabase ``docker/volumes/api/kong.yml``:
consumers ``anon`` and ``service_role``, one key each) lets a request through to ``/rest/v1/``,
``/auth/v1/`` and ``/realtime/v1/`` only with one of these keys. They live here, outside the
gateway package, so the Auth and Realtime stand-ins check them without importing the gateway.
"""

from __future__ import annotations

import functools

import jwt

#: The issuer of the Supabase CLI's local keys (and of the tokens the local stack mints).
JWT_ISSUER = "supabase-demo"
#: The roles of a project's API keys (the anon and service_role JWTs).
API_KEY_ROLES = frozenset({"anon", "service_role"})
#: The ``exp`` of the Supabase CLI's local API keys (2032-11-12), which carry no ``iat``: a
#: project's key is one fixed token (its ``supabase status`` shows the same one every time),
#: and with the CLI's default secret ours are the CLI's own (tests/gateway checks the anon key).
API_KEY_EXPIRES_AT = 1983812996
#: Kong key-auth's refusals (its messages, as the gateway's and Auth's bodies carry them).
NO_API_KEY = "No API key found in request"
INVALID_API_KEY = "Invalid API key"


def api_key(secret: str, role: str) -> str:
    """The project's ``anon`` or ``service_role`` key, as the Supabase CLI mints it for ``secret``
    (claims ``iss``, ``role``, ``exp``: the same token every time)."""
    if role not in API_KEY_ROLES:
        raise ValueError(f"a project has no {role!r} API key, only {sorted(API_KEY_ROLES)}")
    payload = {"iss": JWT_ISSUER, "role": role, "exp": API_KEY_EXPIRES_AT}
    return jwt.encode(payload, secret, algorithm="HS256")


@functools.cache
def project_api_keys(secret: str) -> frozenset[str]:
    """The project's API keys for ``secret``: the only ``apikey`` values Supabase's API gateway
    lets through to REST, Auth and Realtime."""
    return frozenset(api_key(secret, role) for role in API_KEY_ROLES)


def api_key_refusal(secret: str, key: str | None) -> str | None:
    """Kong key-auth's answer to the ``apikey`` given (header or URL parameter): None when it is
    one of the project's keys, else the refusal's message (another token signed with the
    project's secret, even of role anon, is no key)."""
    if not key:
        return NO_API_KEY
    return None if key in project_api_keys(secret) else INVALID_API_KEY
