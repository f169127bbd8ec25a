"""``error_response``, the one place an error becomes an answer: what a 4xx and a 5xx carry,
and the request id that joins a 5xx to its log line. No server is started."""

from __future__ import annotations

import json

import flask
import pytest

from shared import errors
from shared.http import error_response

TRACE = "0123456789abcdef0123456789ABCDEF"


def test_a_4xx_says_what_was_wrong() -> None:
    error = errors.ValidationFailed("query is required", details={"field": "query"})

    response = error_response(error)

    assert response.status_code == 400
    assert response.get_json() == {
        "error": {
            "code": "validation_failed",
            "message": "query is required",
            "details": {"field": "query"},
        }
    }


def test_a_5xx_answers_the_trace_id_and_logs_it_with_the_backend_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = errors.BackendMisconfigured("permission denied for function claim_job")

    app = flask.Flask(__name__)
    with app.test_request_context(headers={"X-Cloud-Trace-Context": f"{TRACE}/1;o=1"}):
        response = error_response(error)

    body = response.get_json()["error"]
    (line,) = [json.loads(entry) for entry in capsys.readouterr().out.splitlines()]
    assert response.status_code == 500
    assert body == {
        "code": "backend_misconfigured",
        "message": errors.BackendMisconfigured.public_message,
        "requestId": TRACE.lower(),
    }
    assert "claim_job" not in json.dumps(body)
    assert line["requestId"] == TRACE.lower()
    assert line["message"] == "permission denied for function claim_job"


def test_a_malformed_trace_header_gets_a_fresh_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = flask.Flask(__name__)
    with app.test_request_context(headers={"X-Cloud-Trace-Context": "<script>/1"}):
        first = error_response(errors.AppError("boom")).get_json()["error"]["requestId"]
    second = error_response(errors.AppError("boom")).get_json()["error"]["requestId"]

    assert first != second
    assert all(len(rid) == 32 and rid.isalnum() for rid in (first, second))
    capsys.readouterr()


def test_a_rate_limit_tells_when_to_come_back() -> None:
    response = error_response(errors.RateLimited("slow down", retry_after=7))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
