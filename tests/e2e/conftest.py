"""End-to-end fixtures: the whole local stack, started once per module on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from infra.local.postgres import Postgres
from infra.local.stack import LocalStack
from tests.support import STACK_ENV, local_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg: Postgres) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory, pg, "stack", STACK_ENV) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_unhandled_errors(stack: LocalStack) -> Iterator[None]:
    # A handler that crashed answers 500 and Cloud Tasks would hide it by retrying: make
    # any unhandled exception in the function host fail the test that caused it.
    before = len(stack.log_text("functions"))
    yield
    assert "unhandled error" not in stack.log_text("functions")[before:]


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client
