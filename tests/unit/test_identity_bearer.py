"""Which Bearer tokens name a user, and which are refused, with nothing running: a token this
deployment cannot verify is a 401, never the shared anonymous caller; the anon key means no
user; only HS256 (the secret) and ES256/RS256 (the published keys) are ever accepted.

The published-keys path itself (JWKS fetched over HTTP) is in tests/auth/test_signing_keys.py.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import flask
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.test import EnvironBuilder

from shared import errors
from shared.identity import ANONYMOUS, caller_id
from shared.settings import DeploySettings, Settings

SECRET = "unit-test-secret-with-at-least-32-characters-long"
ANON_KEY = "sb_publishable_unit_test_key"
BASE: dict[str, Any] = {"supabase_url": "http://127.0.0.1:9", "supabase_service_key": "k"}


def settings(**values: Any) -> Settings:
    return Settings(**BASE, **values)


def request_with(headers: dict[str, str]) -> flask.Request:
    return flask.Request(EnvironBuilder(method="GET", headers=list(headers.items())).get_environ())


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, secret, algorithm="HS256")


def es256(claims: dict[str, Any]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = {"exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": "k1"})


def _unsigned(header: dict[str, Any]) -> str:
    """A token with this header, a user's claims and a made-up signature."""
    parts = (header, {"sub": str(uuid.uuid4()), "exp": 2**40})
    encoded = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=") for part in parts]
    return b".".join([*encoded, b"c2ln"]).decode()


def refusal(headers: dict[str, str], config: Settings) -> errors.Unauthorized:
    with pytest.raises(errors.Unauthorized) as caught:
        caller_id(request_with(headers), config)
    return caught.value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_bearer_token_with_no_verification_configured_is_refused_not_anonymous() -> None:
    token = hs256({"sub": str(uuid.uuid4()), "role": "authenticated"})

    refused = refusal(bearer(token), settings())

    assert refused.details == {"reason": "unverifiable", "setting": "SUPABASE_JWT_SECRET"}


def test_an_asymmetric_token_without_the_published_keys_configured_is_refused() -> None:
    token = es256({"sub": str(uuid.uuid4())})

    refused = refusal(bearer(token), settings(supabase_jwt_secret=SECRET))

    assert refused.details == {"reason": "unverifiable", "setting": "SUPABASE_JWT_JWKS"}


def test_an_hs256_token_is_not_verifiable_by_the_published_keys_alone() -> None:
    # a JWKS-only deployment has no HMAC secret: the header's "HS256" cannot pick a public key
    token = hs256({"sub": str(uuid.uuid4())})

    refused = refusal(bearer(token), settings(supabase_jwt_jwks=True))

    assert refused.details["reason"] == "unverifiable"


@pytest.mark.parametrize(
    "config",
    [settings(), settings(supabase_jwt_secret=SECRET), settings(supabase_jwt_jwks=True)],
    ids=["nothing configured", "secret", "jwks"],
)
@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": str(uuid.uuid4()), "exp": 2**40}, "", algorithm="none"),
        jwt.encode({"sub": str(uuid.uuid4()), "exp": 2**40}, SECRET, algorithm="HS384"),
        "not-a-jwt",
        "",
        # a header whose alg is not a string (a 500, unhashable, before it was checked)
        _unsigned({"alg": ["ES256"], "typ": "JWT", "kid": "k1"}),
    ],
    ids=["alg none", "HS384", "garbage", "empty", "alg a list"],
)
def test_a_token_of_no_accepted_form_is_invalid_whatever_is_configured(
    config: Settings, token: str
) -> None:
    assert refusal(bearer(token), config).details == {"reason": "invalid"}


@pytest.mark.parametrize(
    "config",
    [settings(), settings(supabase_jwt_secret=SECRET), settings(supabase_jwt_jwks=True)],
    ids=["nothing configured", "secret", "jwks"],
)
@pytest.mark.parametrize(
    "anon_key",
    [ANON_KEY, hs256({"role": "anon", "iss": "supabase"}, secret="another-" + SECRET)],
    ids=["publishable key", "legacy anon JWT"],
)
def test_the_anon_key_as_the_bearer_means_no_user_whatever_verifies_tokens(
    config: Settings, anon_key: str
) -> None:
    # it names nobody: it gets what a request without it gets, nothing more
    assert caller_id(request_with(bearer(anon_key)), config) == ANONYMOUS


def test_a_token_that_names_a_user_is_never_taken_for_the_anon_key() -> None:
    claims_anon_but_names_a_user = hs256({"role": "anon", "sub": str(uuid.uuid4())})

    refused = refusal(bearer(claims_anon_but_names_a_user), settings())

    assert refused.details["reason"] == "unverifiable"


def test_the_anon_key_does_not_let_anonymous_callers_in_where_they_are_refused() -> None:
    config = settings(supabase_jwt_secret=SECRET, allow_anonymous=False)

    assert "sign in first" in str(refusal(bearer(ANON_KEY), config))


def test_a_forged_service_role_token_is_not_the_anonymous_caller() -> None:
    # verified, but neither a user (no uuid sub) nor the anon role: refused
    token = hs256({"role": "service_role"})

    refused = refusal(bearer(token), settings(supabase_jwt_secret=SECRET))

    assert refused.details == {"reason": "subject"}


def test_with_only_the_published_keys_configured_a_bare_user_header_is_refused() -> None:
    refused = refusal({"X-User-Id": "alice"}, settings(supabase_jwt_jwks=True))

    assert "X-User-Id" in str(refused)


def test_a_console_with_an_anon_key_deploys_with_either_way_of_verifying_tokens() -> None:
    env = {
        "SUPABASE_URL": "https://project.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "k",
        "SUPABASE_ANON_KEY": ANON_KEY,
        "LEASE_SECONDS": "120",
    }

    assert DeploySettings.from_env({**env, "SUPABASE_JWT_JWKS": "true"}).app.supabase_jwt_jwks
    assert DeploySettings.from_env({**env, "SUPABASE_JWT_SECRET": SECRET}).app.supabase_jwt_secret
    with pytest.raises(errors.ConfigError, match="SUPABASE_JWT_SECRET"):
        DeploySettings.from_env(env)
