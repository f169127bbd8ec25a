"""Asymmetric JWT signing keys, end to end: the Auth stand-in started with ``--auth-jwt-alg
ES256`` signs access tokens with an ES256 key and publishes it at
``/auth/v1/.well-known/jwks.json`` as GoTrue does (``internal/api/jwks.go``); the functions,
with ``SUPABASE_JWT_JWKS=true`` and no JWT secret, verify a visitor's token with that key —
fetched over HTTP, picked by ``kid``, as supabase-js ``auth.getClaims()`` does — and refuse
whatever they cannot verify.

The functions are loaded as Cloud Functions loads them (functions_framework.create_app) and
talk to the local Supabase server (REST and JWKS) over real HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask.testing
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.utils import base64url_encode
from supabase import ClientOptions, create_client
from supabase_auth.types import Session

import shared.store
import shared.tasks
from infra.local.auth import signing_key, verify_token
from infra.local.host import free_port
from infra.local.postgres import Postgres
from infra.local.stack import LOCAL_JWT_SECRET
from shared.settings import get_settings
from tests.support import LocalSupabase, function_app, start_local_supabase

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
QUERY = "모든 서버 분석하고 최적화 리포트 만들어줘"
TARGETS = {"ai-jobs-create": "create_job", "ai-jobs-get": "get_job", "ai-jobs-list": "list_jobs"}

Functions = Callable[..., flask.testing.FlaskClient]


@pytest.fixture(scope="module")
def es256_server(
    pg: Postgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSupabase]:
    server = start_local_supabase(
        pg, template_db, tmp_path_factory.mktemp("supabase-es256"), "--auth-jwt-alg", "ES256"
    )
    yield server
    server.stop()


@pytest.fixture
def function(es256_server: LocalSupabase) -> Iterator[Functions]:
    """``function(name, **env)``: functions/<name>/main.py as a test client, verifying tokens
    with the published keys only (no SUPABASE_JWT_SECRET). One environment per test, so the
    functions share one store (one pooled HTTP client), closed at the end."""
    env = {
        "SUPABASE_URL": es256_server.url,
        "SUPABASE_SERVICE_ROLE_KEY": es256_server.service_key,
        "SUPABASE_JWT_JWKS": "true",
        # nothing listens here: the job is written, its task is left to the reaper
        "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
        "ENABLE_COMPLEXITY_ROUTING": "false",
        "AI_WRITER": "local",
    }

    def load(name: str, **extra: str) -> flask.testing.FlaskClient:
        os.environ.pop("SUPABASE_JWT_SECRET", None)
        os.environ.update({**env, **extra})
        get_settings.cache_clear()
        app = function_app(TARGETS[name], FUNCTIONS / name / "main.py")
        return app.test_client()

    yield load
    store = shared.store.get_store(get_settings())
    if store._client is not None:
        store._client.options.httpx_client.close()  # type: ignore[union-attr]
    get_settings.cache_clear()
    shared.store.get_store.cache_clear()
    shared.tasks.get_queue.cache_clear()


def visitor(server: LocalSupabase) -> Session:
    """An anonymous sign-in through supabase-py, as the console's supabase-js does it."""
    with httpx.Client(timeout=10) as http:
        client = create_client(server.url, server.anon_key, ClientOptions(httpx_client=http))
        session = client.auth.sign_in_anonymously().session
    assert session is not None
    return session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_for(user_id: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user_id, "role": "authenticated", "aud": "authenticated", "iat": now,
            "exp": now + 600, **extra}  # fmt: skip


def test_the_jwks_endpoint_publishes_only_the_public_es256_key(
    es256_server: LocalSupabase, supabase_server: LocalSupabase
) -> None:
    response = httpx.get(f"{es256_server.url}/auth/v1/.well-known/jwks.json")  # no API key

    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=600"
    [key] = response.json()["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use", "key_ops")} == {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "key_ops": ["verify"],
    }
    assert key["kid"] and "d" not in key, "never the private part"
    legacy = httpx.get(f"{supabase_server.url}/auth/v1/.well-known/jwks.json").json()
    assert legacy == {"keys": []}, "an HS256 project publishes no key (GoTrue hides HMAC keys)"


def test_a_visitor_gets_an_es256_token_that_the_published_key_verifies(
    es256_server: LocalSupabase,
) -> None:
    session = visitor(es256_server)
    keys = jwt.PyJWKClient(f"{es256_server.url}/auth/v1/.well-known/jwks.json")

    header = jwt.get_unverified_header(session.access_token)
    published = keys.get_signing_key_from_jwt(session.access_token)
    claims = jwt.decode(
        session.access_token, published.key, algorithms=["ES256"], audience="authenticated"
    )

    assert header["alg"] == "ES256" and header["kid"] == published.key_id
    assert claims["sub"] == session.user.id and claims["is_anonymous"] is True
    # the Realtime stand-in and the Auth API's own checks accept it as well
    assert verify_token(LOCAL_JWT_SECRET, session.access_token)["sub"] == session.user.id
    with httpx.Client(timeout=10) as http:
        client = create_client(
            es256_server.url, es256_server.anon_key, ClientOptions(httpx_client=http)
        )
        found = client.auth.get_user(session.access_token)
    assert found is not None and found.user.id == session.user.id


def test_a_visitor_signed_in_with_es256_creates_and_reads_their_own_job(
    es256_server: LocalSupabase, function: Functions
) -> None:
    alice, bob = visitor(es256_server), visitor(es256_server)

    created = function("ai-jobs-create").post(
        "/", json={"query": QUERY}, headers=bearer(alice.access_token)
    )

    assert created.status_code == 202, created.get_json()
    job_id = created.get_json()["jobId"]
    getter = function("ai-jobs-get")
    mine = getter.get(f"/{job_id}", headers=bearer(alice.access_token))
    assert mine.status_code == 200 and mine.get_json()["jobId"] == job_id
    owner = es256_server.sql("select user_id from public.ai_jobs where id = %s", job_id)
    assert owner == [(alice.user.id,)]
    assert getter.get(f"/{job_id}", headers=bearer(bob.access_token)).status_code == 404
    lister = function("ai-jobs-list")
    assert lister.get("/", headers=bearer(bob.access_token)).get_json()["jobs"] == []
    # the anon key means no user: the shared anonymous caller, who does not own it either
    anonymous = lister.get("/", headers=bearer(es256_server.anon_key))
    assert anonymous.status_code == 200 and anonymous.get_json()["jobs"] == []


def hmac_signed(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """An HS256 token keyed with ``key`` by hand (PyJWT itself refuses a PEM as an HMAC key)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = b".".join(
        base64url_encode(json.dumps(part).encode()) for part in (header, claims)
    )
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


def forged_tokens() -> dict[str, tuple[str, str]]:
    """Tokens the functions must refuse, each with the reason they must give."""
    claims = claims_for(str(uuid.uuid4()))
    published = signing_key(LOCAL_JWT_SECRET, "ES256")
    assert published.private_key is not None and published.kid is not None
    other_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = published.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "legacy HS256 (no secret here)": (
            jwt.encode(claims, LOCAL_JWT_SECRET, algorithm="HS256"),
            "unverifiable",
        ),
        "another key, the published kid": (
            jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": published.kid}),
            "invalid",
        ),
        "an unknown kid": (
            jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": "no-such-key"}),
            "invalid",
        ),
        # algorithm confusion: an HMAC keyed with the public key, naming the published kid
        "HMAC over the public key": (
            hmac_signed(claims, public_pem, published.kid),
            "unverifiable",
        ),
        "RS256 naming the EC key": (
            jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": published.kid}),
            "invalid",
        ),
        "expired": (published.sign({**claims, "exp": int(time.time()) - 5}), "expired"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "legacy HS256 (no secret here)",
        "another key, the published kid",
        "an unknown kid",
        "HMAC over the public key",
        "RS256 naming the EC key",
        "expired",
    ],
)
def test_a_token_the_published_keys_do_not_verify_is_refused(
    es256_server: LocalSupabase, function: Functions, case: str
) -> None:
    token, reason = forged_tokens()[case]

    refused = function("ai-jobs-list").get("/", headers=bearer(token))

    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    assert refused.get_json()["error"]["details"]["reason"] == reason


def test_keys_that_cannot_be_fetched_are_a_503_not_a_refusal(
    es256_server: LocalSupabase, function: Functions
) -> None:
    token = visitor(es256_server).access_token
    lister = function("ai-jobs-list", SUPABASE_URL=f"http://127.0.0.1:{free_port()}")

    response = lister.get("/", headers=bearer(token))

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "dependency_unavailable"
