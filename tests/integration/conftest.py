"""The store and the functions in-process, against the real gateway and a real Postgres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.gateway import GatewayHandle, make_jwt, start_gateway

JWT_SECRET = "integration-test-secret-with-at-least-32-characters"


@pytest.fixture
def gateway(db_uri: str) -> Iterator[GatewayHandle]:
    with start_gateway(db_uri, JWT_SECRET) as handle:
        yield handle


@pytest.fixture
def service_key() -> str:
    return make_jwt(JWT_SECRET, "service_role")
