"""The functions' cache of the project's signing keys (``shared.identity``): one fetch serves
every token until the TTL passes; a made-up ``kid`` cannot make the functions hammer Supabase
(at most one refetch per 30 s); a key that is not an ES256/RS256 signing key is never used.

The keys are served over real HTTP by a small JWKS endpoint that counts its requests.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from shared import errors
from shared.identity import verified_user
from shared.settings import Settings


class KeyServer:
    """``/auth/v1/.well-known/jwks.json`` with the keys a test sets, counting requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.down = False  # answers 503, as Supabase Auth does while it is unavailable
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(503 if outer.down else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, key: ec.EllipticCurvePrivateKey, kid: str, **fields: Any) -> None:
        public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**public, "kid": kid, "alg": "ES256", "use": "sig", **fields})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.stop()


def settings_for(server: KeyServer, ttl_s: int = 600) -> Settings:
    return Settings(
        supabase_url=server.url,
        supabase_service_key="k",
        supabase_jwt_jwks=True,
        supabase_jwks_ttl_s=ttl_s,
    )


def token(key: ec.EllipticCurvePrivateKey, kid: str, user: str) -> str:
    claims = {"sub": user, "role": "authenticated", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def test_one_fetch_of_the_keys_serves_many_tokens(keys: KeyServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys.publish(key, "k1")
    users = [str(uuid.uuid4()) for _ in range(5)]

    verified = [verified_user(token(key, "k1", user), settings_for(keys)) for user in users]

    assert verified == users
    assert keys.requests == 1


def test_made_up_key_ids_cost_at_most_one_refetch(keys: KeyServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys.publish(key, "k1")
    config = settings_for(keys)
    verified_user(token(key, "k1", str(uuid.uuid4())), config)

    for n in range(5):
        with pytest.raises(errors.Unauthorized) as refused:
            verified_user(token(key, f"made-up-{n}", str(uuid.uuid4())), config)
        assert refused.value.details == {"reason": "invalid"}

    assert keys.requests <= 2


def test_the_keys_are_fetched_again_once_their_ttl_has_passed(keys: KeyServer) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys.publish(old, "old")
    config = settings_for(keys, ttl_s=1)
    user = str(uuid.uuid4())
    assert verified_user(token(old, "old", user), config) == user

    keys.publish(new, "new")  # a rotation: the project starts signing with a new key
    time.sleep(1.1)

    assert verified_user(token(new, "new", user), config) == user
    assert keys.requests == 2


def test_a_published_key_meant_for_encryption_is_never_used_to_verify(keys: KeyServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys.publish(key, "enc", use="enc")

    with pytest.raises(errors.Unauthorized) as refused:
        verified_user(token(key, "enc", str(uuid.uuid4())), settings_for(keys))

    assert refused.value.details == {"reason": "invalid"}


def test_while_the_keys_cannot_be_fetched_the_last_ones_verify_and_refetches_wait(
    keys: KeyServer,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys.publish(key, "k1")
    config = settings_for(keys, ttl_s=1)
    user = str(uuid.uuid4())
    assert verified_user(token(key, "k1", user), config) == user

    keys.down = True
    time.sleep(1.1)  # the key set's lifespan ends during the outage
    still = verified_user(token(key, "k1", user), config)
    for n in range(5):  # made-up kids while it is down: refused, one fetch at most between them
        with pytest.raises(errors.Unauthorized):
            verified_user(token(key, f"made-up-{n}", str(uuid.uuid4())), config)

    assert still == user
    assert keys.requests == 2  # the first fetch, then one failed refetch
