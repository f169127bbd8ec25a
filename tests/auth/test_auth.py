"""The Auth stand-in through the official Python client (supabase-py 2.34.1), as a browser's
supabase-js would use it: anonymous sign-in, refresh rotation, the user, logout, email/password.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest
from supabase import Client
from supabase_auth.errors import AuthApiError

from tests.support import JWT_SECRET, LocalSupabase

ClientFor = Callable[[LocalSupabase], Client]


def test_anonymous_sign_in_gives_a_session_for_a_new_uuid_user(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    response = client_for(supabase_server).auth.sign_in_anonymously()

    assert response.session is not None and response.user is not None
    claims = jwt.decode(
        response.session.access_token,
        JWT_SECRET,
        algorithms=["HS256"],
        audience="authenticated",
    )
    assert uuid.UUID(claims["sub"]) and claims["sub"] == response.user.id
    assert claims["role"] == "authenticated" and claims["is_anonymous"] is True
    assert uuid.UUID(claims["session_id"])
    assert response.session.token_type == "bearer"
    assert response.session.expires_at == claims["exp"]
    assert response.user.is_anonymous is True


def test_two_anonymous_sign_ins_are_two_users(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    first = client_for(supabase_server).auth.sign_in_anonymously().user
    second = client_for(supabase_server).auth.sign_in_anonymously().user

    assert first is not None and second is not None and first.id != second.id


def test_the_user_endpoint_answers_for_the_access_token(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    client = client_for(supabase_server)
    session = client.auth.sign_in_anonymously().session
    assert session is not None

    found = client.auth.get_user(session.access_token)

    assert found is not None and found.user.id == session.user.id


def test_a_refresh_token_rotates_to_a_new_one_for_the_same_user(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    client = client_for(supabase_server)
    first = client.auth.sign_in_anonymously().session
    assert first is not None

    refreshed = client.auth.refresh_session(first.refresh_token).session

    assert refreshed is not None
    assert refreshed.refresh_token != first.refresh_token
    assert refreshed.user.id == first.user.id
    # reuse within the interval and outside it: tests/auth/test_refresh_reuse.py


def test_logout_ends_the_session(supabase_server: LocalSupabase, client_for: ClientFor) -> None:
    client = client_for(supabase_server)
    session = client.auth.sign_in_anonymously().session
    assert session is not None

    client.auth.sign_out()

    with pytest.raises(AuthApiError) as ended:
        client_for(supabase_server).auth.get_user(session.access_token)
    assert ended.value.code == "session_not_found"


def test_email_sign_up_then_password_sign_in_is_the_same_user(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    email = f"visitor-{uuid.uuid4().hex[:8]}@example.com"
    signed_up = client_for(supabase_server).auth.sign_up({"email": email, "password": "hunter22"})

    signed_in = client_for(supabase_server).auth.sign_in_with_password(
        {"email": email, "password": "hunter22"}
    )

    assert signed_up.user is not None and signed_in.user is not None
    assert signed_in.user.id == signed_up.user.id and signed_in.user.email == email
    with pytest.raises(AuthApiError) as wrong:
        client_for(supabase_server).auth.sign_in_with_password(
            {"email": email, "password": "wrong-password"}
        )
    assert wrong.value.code == "invalid_credentials"


def test_a_request_without_a_valid_api_key_is_refused(supabase_server: LocalSupabase) -> None:
    response = httpx.post(
        f"{supabase_server.url}/auth/v1/signup", json={}, headers={"apikey": "not-a-key"}
    )

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid API key"}


def test_a_request_without_an_api_key_is_refused_as_the_api_gateway_does(
    supabase_server: LocalSupabase,
) -> None:
    response = httpx.get(f"{supabase_server.url}/auth/v1/settings")

    assert response.status_code == 401
    assert response.json() == {"message": "No API key found in request"}


def test_health_needs_the_key_and_the_signing_keys_do_not(supabase_server: LocalSupabase) -> None:
    # Kong (supabase/supabase docker/volumes/api/kong.yml): /auth/v1/ is the key-auth'd auth-v1
    # service but for a few open routes (verify, callback, authorize, .well-known/jwks.json)
    url = supabase_server.url

    unkeyed = httpx.get(f"{url}/auth/v1/health")
    keyed = httpx.get(f"{url}/auth/v1/health", headers={"apikey": supabase_server.anon_key})
    jwks = httpx.get(f"{url}/auth/v1/.well-known/jwks.json")

    assert (unkeyed.status_code, unkeyed.json()) == (
        401,
        {"message": "No API key found in request"},
    )
    assert keyed.status_code == 200
    assert jwks.status_code == 200


def test_a_token_signed_with_the_project_secret_is_no_api_key(
    supabase_server: LocalSupabase,
) -> None:
    # Supabase's API gateway compares the apikey with the project's keys (Kong key-auth)
    not_a_key = jwt.encode({"role": "anon", "exp": 2**31}, JWT_SECRET, algorithm="HS256")

    response = httpx.get(f"{supabase_server.url}/auth/v1/settings", headers={"apikey": not_a_key})

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid API key"}


def test_a_malformed_body_is_a_400_with_gotrue_error_shape(supabase_server: LocalSupabase) -> None:
    response = httpx.post(
        f"{supabase_server.url}/auth/v1/signup",
        content=b"[1, 2",
        headers={"apikey": supabase_server.anon_key, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error_code"] == "bad_json"


def test_a_browser_preflight_from_another_origin_is_allowed(supabase_server: LocalSupabase) -> None:
    response = httpx.options(
        f"{supabase_server.url}/auth/v1/signup",
        headers={
            "Origin": "http://127.0.0.1:8080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "apikey, authorization, content-type, x-client-info",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "http://127.0.0.1:8080")
    assert "apikey" in response.headers["access-control-allow-headers"].lower()


def test_the_auth_and_realtime_stand_ins_check_keys_without_the_rest_gateway() -> None:
    # the project's keys live in infra.local.keys: importing either stand-in loads no gateway
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, infra.local.auth, infra.local.realtime.server; "
            "print(sorted(m for m in sys.modules if m.startswith('infra.local.gateway')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )

    assert loaded.stdout.strip() == "[]"
