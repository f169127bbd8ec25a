"""The HTTP layer in-process, with nothing running: body reading, strict JSON, identity,
and the one error builder. Each test replays an attack from issue 7 against the function
that owns the behaviour (the e2e twins in tests/e2e/test_hostile_input.py go over real HTTP)."""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import flask
import jwt
import pydantic
import pytest
from werkzeug.test import EnvironBuilder

from shared import errors
from shared.http import MAX_JSON_DEPTH, endpoint, parse_json, read_json
from shared.identity import caller_id
from shared.jobs import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, CreateJobRequest, Job
from shared.settings import Settings, get_settings
from tests.support import job_row

SECRET = "unit-test-jwt-secret-with-at-least-32-characters"
SETTINGS = Settings(
    supabase_url="http://127.0.0.1:9", supabase_service_key="k", max_body_bytes=1024
)
app = flask.Flask(__name__)


def request_for(
    body: bytes = b"",
    *,
    content_length: int | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> flask.Request:
    builder = EnvironBuilder(
        method=method,
        input_stream=io.BytesIO(body),
        content_type=content_type,
        headers=list((headers or {}).items()),
    )
    environ = builder.get_environ()
    environ["CONTENT_LENGTH"] = str(len(body) if content_length is None else content_length)
    return flask.Request(environ)


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# --- item 3: valid-looking JSON the API cannot represent is a precise 400 ------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"metadata": {"x": NaN}}', "invalid_json"),
        (b'{"metadata": {"x": Infinity}}', "invalid_json"),
        (b'{"metadata": {"x": -Infinity}}', "invalid_json"),
        (b'{"metadata": {"x": 1e999}}', "unsupported_json_value"),
        (b'{"metadata": {"x": -1e999}}', "unsupported_json_value"),
        (b'{"query": "' + b"9" * 5000 + b'"}', None),  # a long digit *string* is fine
        (b'{"n": ' + b"9" * 5000 + b"}", "unsupported_json_value"),
        (b'{"metadata": {"x": "\\ud800"}}', "unsupported_json_value"),
        (b'{"metadata": {"\\udfff": 1}}', "unsupported_json_value"),
        (b'{"reason": "a\\u0000b"}', "unsupported_json_value"),
        (b'{"jobId": "\\ud800"}', "unsupported_json_value"),
        (b'{"q": "\xed\xa0\x80"}', "invalid_json"),  # a surrogate encoded as UTF-8
        (b"[" * 16_000 + b"]" * 16_000, "json_too_deep"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "json_too_deep"),
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, None),
        (b"\xef\xbb\xbf{}", "invalid_json"),  # a BOM is not JSON
    ],
)
def test_parse_json_refuses_what_cannot_be_stored_with_a_precise_code(
    raw: bytes, code: str | None
) -> None:
    if code is None:
        parse_json(raw)
        return
    with pytest.raises(errors.BadRequest) as caught:
        parse_json(raw)
    assert caught.value.code == code


# --- item 2: metadata the serializer could not send back is refused at parse time ----------


def test_metadata_nesting_past_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    ok = CreateJobRequest.model_validate({"query": "q", "metadata": nested(MAX_METADATA_DEPTH)})
    assert ok.metadata
    with pytest.raises(pydantic.ValidationError, match="nest at most"):
        CreateJobRequest.model_validate({"query": "q", "metadata": nested(MAX_METADATA_DEPTH + 1)})


def test_metadata_larger_than_its_limit_is_refused() -> None:
    big = {"blob": "x" * MAX_METADATA_BYTES}
    with pytest.raises(pydantic.ValidationError, match="at most 4096 bytes"):
        CreateJobRequest.model_validate({"query": "q", "metadata": big})


def test_whatever_metadata_is_accepted_round_trips_through_the_response_model() -> None:
    metadata = nested(MAX_METADATA_DEPTH)
    create = CreateJobRequest.model_validate({"query": "q", "metadata": metadata})
    row = job_row(metadata=create.metadata)
    assert Job.model_validate(row).wire()["metadata"] == metadata


# --- items 5 and 6: the body is bounded while reading, and only a whole body is used -------


def test_a_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    class Exploding(io.RawIOBase):
        def readinto(self, _buffer: Any) -> int:
            raise AssertionError("the body must not be read")

    builder = EnvironBuilder(method="POST", content_type="application/json")
    environ = builder.get_environ()
    environ["wsgi.input"] = Exploding()
    environ["CONTENT_LENGTH"] = str(64 * 1024 * 1024)
    with pytest.raises(errors.PayloadTooLarge):
        read_json(flask.Request(environ), SETTINGS)


def test_a_chunked_body_is_read_only_to_one_byte_past_the_limit() -> None:
    stream = io.BytesIO(b"[" + b" " * (10 * 1024 * 1024) + b"]")
    builder = EnvironBuilder(method="POST", content_type="application/json")
    environ = builder.get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = stream
    environ["wsgi.input_terminated"] = True  # what a server that de-chunks says
    with pytest.raises(errors.PayloadTooLarge):
        read_json(flask.Request(environ), SETTINGS)
    assert stream.tell() <= SETTINGS.max_body_bytes + 1


@pytest.mark.parametrize("server_terminates_input", [False, True])
def test_a_body_shorter_than_its_content_length_is_incomplete_and_not_parsed(
    server_terminates_input: bool,
) -> None:
    # Werkzeug's server leaves the limit to Werkzeug (which raises on a short read);
    # gunicorn terminates the input itself and a short read just ends: both must be refused.
    body = b'{"query": "a complete looking body"}'
    request = request_for(body, content_length=len(body) + 100)
    if server_terminates_input:
        request.environ["wsgi.input_terminated"] = True
    with pytest.raises(errors.IncompleteBody):
        read_json(request, SETTINGS)


def test_a_stream_that_breaks_mid_body_is_an_incomplete_body() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, _buffer: Any) -> int:
            raise OSError("Invalid chunk header")

    environ = EnvironBuilder(method="POST", content_type="application/json").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = Broken()
    environ["wsgi.input_terminated"] = True
    with pytest.raises(errors.IncompleteBody):
        read_json(flask.Request(environ), SETTINGS)


# --- item 9: a token's subject must be a Supabase user id --------------------------------


def bearer(sub: object) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


JWT_SETTINGS = Settings(
    supabase_url="http://127.0.0.1:9", supabase_service_key="k", supabase_jwt_secret=SECRET
)


@pytest.mark.parametrize(
    "sub", ["anonymous", "\ud800", "x" * 5000, "", 42, "{12345678-1234-1234-1234-123456789abc}"]
)
def test_a_token_whose_subject_is_not_a_uuid_is_unauthorized(sub: object) -> None:
    request = request_for(method="GET", headers=bearer(sub))
    with pytest.raises(errors.Unauthorized) as caught:
        caller_id(request, JWT_SETTINGS)
    assert caught.value.details["reason"] in {"subject", "invalid"}  # PyJWT refuses a non-str


def test_a_token_with_a_uuid_subject_acts_as_that_user_in_canonical_form() -> None:
    user = uuid.uuid4()
    request = request_for(method="GET", headers=bearer(str(user).upper()))
    assert caller_id(request, JWT_SETTINGS) == str(user)


# --- items 8 and 11: the endpoint wrapper -------------------------------------------------


@pytest.fixture
def settings_env() -> Iterator[None]:
    os.environ.update(
        {
            "SUPABASE_URL": "http://127.0.0.1:9",
            "SUPABASE_SERVICE_ROLE_KEY": "k",
            "ALLOWED_ORIGINS": "https://dashboard.example",
        }
    )
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def call(handler: Any, request: flask.Request) -> flask.Response:
    with app.test_request_context():
        response: flask.Response = handler(request)
    return response


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_a_public_post_that_is_not_json_is_415_before_the_handler_runs(
    settings_env: None, content_type: str
) -> None:
    ran: list[bool] = []

    @endpoint("POST")
    def handler(request: flask.Request, settings: Settings) -> flask.Response:
        ran.append(True)
        return flask.Response(status=204)

    body = json.dumps({"jobId": str(uuid.uuid4())}).encode()
    response = call(handler, request_for(body, content_type=content_type))
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert ran == []


def test_a_5xx_carries_no_details_and_no_backend_text(settings_env: None) -> None:
    @endpoint("GET")
    def handler(request: flask.Request, settings: Settings) -> flask.Response:
        raise errors.DatabaseUnavailable(
            "connection to 10.0.0.7:5432 refused", details={"upstream": "PGRST001"}
        )

    response = call(handler, request_for(method="GET"))
    assert response.status_code == 503
    body = response.get_json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["error"].pop("requestId"))
    assert body == {
        "error": {
            "code": "database_unavailable",
            "message": "the database is unavailable; retry later",
        }
    }


def test_a_row_that_fails_to_load_is_a_500_not_the_clients_400(
    settings_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    @endpoint("GET")
    def handler(request: flask.Request, settings: Settings) -> flask.Response:
        Job.model_validate({"id": "not-a-row"})
        return flask.Response(status=204)

    response = call(handler, request_for(method="GET"))
    assert response.status_code == 500
    body = response.get_json()
    request_id = body["error"].pop("requestId")
    assert body == {"error": {"code": "internal", "message": "internal error"}}
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failure = next(entry for entry in logged if entry["message"] == "unhandled error")
    assert "Traceback" in failure["stack_trace"]
    assert failure["requestId"] == request_id  # the answer leads to its log line


@pytest.mark.parametrize(
    "raw",
    [
        "12345678-1234-1234-1234-123456789abc\n",  # "$" would match before a final newline
        "12345678123412341234123456789abc",
        "urn:uuid:12345678-1234-1234-1234-123456789abc",
    ],
)
def test_only_the_canonical_uuid_form_is_a_job_id(raw: str) -> None:
    from shared.http import parse_job_id

    with pytest.raises(errors.InvalidId):
        parse_job_id(raw)
