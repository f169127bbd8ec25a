"""Schemathesis against the running local stack, from infra/openapi.yaml (bounded: a few
examples per operation and mode, positive and negative, derandomized so a failure reproduces).

Properties: no 5xx, every answer documented (status, content type, headers, schema: so every
error is in the documented shape), no backend text, and the service keeps serving. A case it
finds becomes a regular test (tests/e2e/test_hostile_input.py, tests/unit/).

Schemathesis's own pytest plugin (``from_fixture``) does not run under pytest 9 here, so each
operation's Hypothesis strategy is driven directly."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from infra.local.stack import LocalStack
from tests.support import REPO_ROOT, SEED_QUERY, create, wait_for

SPEC = REPO_ROOT / "infra" / "openapi.yaml"
BACKEND_WORDS = ("PGRST", "psycopg", "postgres", "SQLSTATE", "Traceback", "grpc")
LABELS = [
    result.ok().label  # type: ignore[union-attr]  # an Err is the spec failing to load: fail
    for result in schemathesis.openapi.from_path(SPEC).get_all_operations()
]
# A preflight's only input is Origin, any string: nothing invalid exists to send it.
CASES = [
    (label, mode)
    for label in LABELS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (label.startswith("OPTIONS") and mode is GenerationMode.NEGATIVE)
]
EXAMPLES = 25


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Any:
    schema = schemathesis.openapi.from_path(SPEC)
    schema.config.update(base_url=stack.base_url, request_timeout=30)
    # Strings without NUL or lone surrogates: the documented limits (the API refuses both).
    schema.config.generation.update(allow_x00=False, codec="utf-8")
    return schema


def operation_named(api: Any, label: str) -> Any:
    method, path = label.split(" ", 1)
    return api[path][method]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_generated_requests_get_documented_answers_and_never_a_5xx(
    api: Any, label: str, mode: GenerationMode
) -> None:
    operation = operation_named(api, label)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        # Whether a cursor is one the service wrote is not a schema property: a generated
        # one is "valid" by the schema and rightly refused (400 invalid_cursor).
        excluded = [positive_data_acceptance] if (case.query or {}).get("cursor") else []
        response = case.call_and_validate(excluded_checks=excluded)
        # A word counts only if the request did not carry it: a client's own key echoed back
        # in "unknown field" is not backend text (a generated key once was "PGRST").
        sent = repr((case.body, case.query, case.path_parameters, case.headers)).lower()
        text = response.text.lower()
        leaked = [w for w in BACKEND_WORDS if w.lower() in text and w.lower() not in sent]
        assert not leaked, response.text[:500]

    exercise()


def test_the_service_still_serves_after_the_generated_requests(http: httpx.Client) -> None:
    job = wait_for(http, create(http, SEED_QUERY)["jobId"])
    assert job["status"] == "completed"
