"""infra/openapi.yaml against the running functions: the description lists exactly the public
functions and every error code a client can get, and what the functions really answer (each
documented status, errors included) conforms to it, checked by Schemathesis's validators."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.local.stack import LocalStack
from shared import errors
from shared.functions import BY_NAME, CONSOLE
from tests.support import REPO_ROOT, SEED_QUERY, create, wait_for

SPEC = REPO_ROOT / "infra" / "openapi.yaml"
PRIVATE = {name for name, f in BY_NAME.items() if f.access == "private"}
#: public, but a web page (text/html and its assets), not part of the JSON API described here
NOT_JSON_API = {CONSOLE.name}
#: Codes only the private functions or the worker raise, or abstract bases never raised.
NOT_FOR_CLIENTS = {
    "forbidden",
    "lease_lost",
    "job_cancelled",
    "conflict",
}
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def documented_codes(node: Any) -> set[str]:
    """Every value an error schema allows for ``code`` (enum or const), anywhere."""
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("properties", {}).get("code") if "properties" in node else None
        if isinstance(code, dict):
            found.update(code.get("enum", []))
            if "const" in code:
                found.add(code["const"])
        for child in node.values():
            found |= documented_codes(child)
    elif isinstance(node, list):
        for child in node:
            found |= documented_codes(child)
    return found


def all_error_classes(
    base: type[errors.AppError] = errors.AppError,
) -> Iterator[type[errors.AppError]]:
    yield base
    for sub in base.__subclasses__():
        yield from all_error_classes(sub)


def test_the_description_lists_exactly_the_public_functions() -> None:
    functions = {path.strip("/").split("/")[0] for path in spec()["paths"]}
    assert functions == set(BY_NAME) - PRIVATE - NOT_JSON_API


def test_every_error_code_a_client_can_get_is_documented() -> None:
    codes = {cls.code for cls in all_error_classes()}
    assert codes - NOT_FOR_CLIENTS - {"method_not_allowed"} <= documented_codes(spec())
    server = set(
        spec()["components"]["schemas"]["ServerError"]["properties"]["error"]["properties"]["code"][
            "enum"
        ]
    )
    assert server == {cls.code for cls in all_error_classes() if cls.status >= 500}


@pytest.fixture(scope="module")
def api() -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_path(SPEC)


def conforms(api: Any, method: str, path: str, response: httpx.Response) -> None:
    operation = api[path][method]
    params = {"jobId": response.url.path.rsplit("/", 1)[-1]} if "{jobId}" in path else {}
    operation.Case(path_parameters=params).validate_response(response, checks=CHECKS)


def test_what_the_functions_answer_conforms_to_the_description(
    stack: LocalStack, http: httpx.Client, api: Any
) -> None:
    who = {"X-User-Id": f"openapi-{uuid.uuid4().hex[:8]}"}
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    calls: list[tuple[str, str, httpx.Response, int]] = []

    def check(method: str, path: str, response: httpx.Response, status: int) -> httpx.Response:
        calls.append((method, path, response, status))
        return response

    accepted = check(
        "POST",
        "/ai-jobs-create",
        http.post(
            "/ai-jobs-create",
            json={"query": SEED_QUERY, "metadata": {"a": [1]}},
            headers={**who, **key},
        ),
        202,
    )
    job_id = accepted.json()["jobId"]
    check(
        "POST",
        "/ai-jobs-create",
        http.post("/ai-jobs-create", json={"query": SEED_QUERY}, headers={**who, **key}),
        409,
    )
    check(
        "POST",
        "/ai-jobs-create",
        http.post("/ai-jobs-create", json={"query": "현재 서버 상태 알려줘"}, headers=who),
        200,
    )
    check(
        "POST",
        "/ai-jobs-create",
        http.post("/ai-jobs-create", json={"query": ""}, headers=who),
        400,
    )
    check("POST", "/ai-jobs-create", http.post("/ai-jobs-create", json={"query": "x" * 9000}), 413)
    check(
        "POST",
        "/ai-jobs-create",
        http.post("/ai-jobs-create", content=b"q=x", headers={"Content-Type": "text/plain"}),
        415,
    )
    check(
        "OPTIONS",
        "/ai-jobs-create",
        http.options(
            "/ai-jobs-create",
            headers={
                "Origin": "https://dashboard.example",
                "Access-Control-Request-Method": "POST",
            },
        ),
        204,
    )
    done = wait_for(http, job_id, headers=who)
    got = check(
        "GET",
        "/ai-jobs-get/{jobId}",
        http.get(f"/ai-jobs-get/{job_id}", params={"logs": "true"}, headers=who),
        200,
    )
    assert got.json()["status"] == done["status"]
    check(
        "GET",
        "/ai-jobs-get/{jobId}",
        http.get(
            f"/ai-jobs-get/{job_id}",
            headers={
                **who,
                "If-None-Match": http.get(f"/ai-jobs-get/{job_id}", headers=who).headers["ETag"],
            },
        ),
        304,
    )
    check("GET", "/ai-jobs-get/{jobId}", http.get("/ai-jobs-get/not-a-uuid"), 400)
    check("GET", "/ai-jobs-get/{jobId}", http.get(f"/ai-jobs-get/{uuid.uuid4()}"), 404)
    check("GET", "/ai-jobs-get", http.get("/ai-jobs-get", params={"id": job_id}, headers=who), 200)
    check("GET", "/ai-jobs-list", http.get("/ai-jobs-list", params={"limit": 1}, headers=who), 200)
    check("GET", "/ai-jobs-list", http.get("/ai-jobs-list", params={"cursor": "%%%"}), 400)
    check(
        "POST",
        "/ai-jobs-cancel",
        http.post("/ai-jobs-cancel", json={"jobId": job_id}, headers=who),
        409,
    )
    check(
        "POST",
        "/ai-jobs-cancel",
        http.post("/ai-jobs-cancel", json={"jobId": str(uuid.uuid4())}),
        404,
    )
    queued = create(http, SEED_QUERY)["jobId"]
    cancelled = http.delete(f"/ai-jobs-cancel/{queued}")
    check(
        "DELETE", "/ai-jobs-cancel/{jobId}", cancelled, cancelled.status_code
    )  # 200, or 409 if it finished first
    stack.kill("gateway")
    try:
        check("GET", "/ai-jobs-list", http.get("/ai-jobs-list"), 503)
    finally:
        stack.start_gateway()

    for method, path, response, status in calls:
        assert response.status_code == status, (method, path, response.text)
        conforms(api, method, path, response)
