"""The functions' memory of tokens they verified (``shared.identity``): a token is taken from
it only while verifying it again would accept it: before its ``exp``, under the very key that
verified it. Each test is a case where trusting the memory blindly would let a token in."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import flask
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from shared import errors, identity
from shared.identity import caller_id, verified_user
from shared.settings import Settings
from tests.support import wait_until

SECRET = "unit-test-jwt-secret-with-at-least-32-characters"


def hs256(user: str, expires_at: int, secret: str = SECRET) -> str:
    claims = {"sub": user, "role": "authenticated", "exp": expires_at}
    return jwt.encode(claims, secret, algorithm="HS256")


def settings(secret: str = SECRET) -> Settings:
    return Settings(
        supabase_url="http://127.0.0.1:9", supabase_service_key="k", supabase_jwt_secret=secret
    )


class KeyServer(ThreadingHTTPServer):
    """Supabase Auth's ``/auth/v1/.well-known/jwks.json``, publishing ``keys``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _KeysHandler)
        self.keys: list[dict[str, Any]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def publish(self, key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**public, "kid": kid, "alg": "ES256", "use": "sig"})


class _KeysHandler(BaseHTTPRequestHandler):
    server: KeyServer

    def do_GET(self) -> None:
        body = json.dumps({"keys": self.server.keys}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_remembered_token_is_refused_as_expired_once_its_exp_has_passed() -> None:
    user = str(uuid.uuid4())
    expires_at = int(time.time()) + 2
    token = hs256(user, expires_at)
    assert verified_user(token, settings()) == user
    assert verified_user(token, settings()) == user  # now from memory

    wait_until(lambda: time.time() > expires_at, "the token's exp to pass")

    with pytest.raises(errors.Unauthorized) as refused:
        verified_user(token, settings())
    assert refused.value.details == {"reason": "expired"}


def test_a_token_remembered_under_one_secret_is_refused_under_another() -> None:
    token = hs256(str(uuid.uuid4()), int(time.time()) + 600)
    verified_user(token, settings())

    with pytest.raises(errors.Unauthorized) as refused:
        verified_user(token, settings("another-secret-also-at-least-32-characters-long"))
    assert refused.value.details == {"reason": "invalid"}


def test_a_remembered_token_whose_key_the_project_withdrew_is_refused(keys: KeyServer) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys.publish(old, "old")
    config = Settings(
        supabase_url=keys.url,
        supabase_service_key="k",
        supabase_jwt_jwks=True,
        supabase_jwks_ttl_s=1,
    )
    user = str(uuid.uuid4())
    claims = {"sub": user, "role": "authenticated", "exp": int(time.time()) + 600}
    token = jwt.encode(claims, old, algorithm="ES256", headers={"kid": "old"})
    assert verified_user(token, config) == user

    keys.keys = []
    keys.publish(new, "new")  # the old key withdrawn (revoked) and a new one published
    time.sleep(1.1)  # the key set's TTL

    with pytest.raises(errors.Unauthorized) as refused:
        verified_user(token, config)
    assert refused.value.details == {"reason": "invalid"}


def test_the_memory_keeps_at_most_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "_VERIFIED", {})
    monkeypatch.setattr(identity, "_VERIFIED_MAX", 3)
    users = [str(uuid.uuid4()) for _ in range(5)]
    tokens = [hs256(user, int(time.time()) + 600) for user in users]

    assert [verified_user(token, settings()) for token in tokens] == users
    assert [verified_user(token, settings()) for token in tokens] == users
    assert len(identity._VERIFIED) == 3


def _caller(token: str, config: Settings) -> str:
    app = flask.Flask(__name__)
    with app.test_request_context(headers={"Authorization": f"Bearer {token}"}):
        return caller_id(flask.request, config)


def test_a_callers_remembered_token_is_answered_without_decoding_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = str(uuid.uuid4())
    token = hs256(user, int(time.time()) + 600)
    assert _caller(token, settings()) == user

    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a remembered token was decoded again")

    monkeypatch.setattr(jwt, "decode", no_decoding)
    monkeypatch.setattr(jwt, "get_unverified_header", no_decoding)

    assert _caller(token, settings()) == user


def test_a_callers_token_remembered_under_one_secret_is_refused_under_another() -> None:
    token = hs256(str(uuid.uuid4()), int(time.time()) + 600)
    _caller(token, settings())

    with pytest.raises(errors.Unauthorized) as refused:
        _caller(token, settings("another-secret-also-at-least-32-characters-long"))
    assert refused.value.details == {"reason": "invalid"}


def test_a_callers_remembered_token_needs_the_secret_still_configured() -> None:
    token = hs256(str(uuid.uuid4()), int(time.time()) + 600)
    _caller(token, settings())

    with pytest.raises(errors.Unauthorized) as refused:
        _caller(token, settings(""))
    assert refused.value.details == {"reason": "unverifiable", "setting": "SUPABASE_JWT_SECRET"}
