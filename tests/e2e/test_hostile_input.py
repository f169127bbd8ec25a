"""Issue 7's adversarial probe, replayed over real HTTP (and raw sockets where HTTP clients are
too polite) against the running local stack: every finding of the HTTP layer, one test each.

What must hold for every case: a precise 4xx with a code, never a 5xx, no backend text, no
traceback in the host's log, and nothing created from a request that was not whole."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from infra.local.stack import LocalStack
from tests.support import JWT_SECRET, SEED_QUERY, STACK_ENV, create, mint, preflight

LIMIT = int(STACK_ENV["MAX_BODY_BYTES"])
BACKEND_WORDS = ("PGRST", "psycopg", "postgres", "out of range", "Traceback", "SQLSTATE")


def user() -> dict[str, str]:
    return {"X-User-Id": f"probe-{uuid.uuid4().hex[:12]}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert not any(word.lower() in response.text.lower() for word in BACKEND_WORDS)
    return error


def post_raw(http: httpx.Client, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=raw, headers={"Content-Type": "application/json", **headers})


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error_code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


def raw_request(
    stack: LocalStack, head: str, body: bytes = b"", *, half_close: bool = False
) -> RawResponse:
    """Send bytes no HTTP client would send, read one response (by its Content-Length)."""
    url = urlsplit(stack.base_url)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=20) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)  # "then silence": no more bytes will come
        received = b""
        while b"\r\n\r\n" not in received:
            piece = sock.recv(65536)
            assert piece, f"connection closed before a response: {received!r}"
            received += piece
        head_bytes, rest = received.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
    return RawResponse(int(lines[0].split()[1]), headers, rest[:length])


def post_head(stack: LocalStack, path: str, *extra: str, who: dict[str, str] | None = None) -> str:
    host = urlsplit(stack.base_url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (who or {}).items()]
    return "\n".join([*lines, *extra]) + "\n"


def jobs_of(http: httpx.Client, who: dict[str, str]) -> list[dict[str, Any]]:
    response = http.get("/ai-jobs-list", headers=who)
    assert response.status_code == 200, response.text
    return list(response.json()["jobs"])


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# --- finding 2: metadata deeper than the response can carry --------------------------------


def test_f2_metadata_nested_hundreds_deep_is_refused_and_the_owner_keeps_working(
    http: httpx.Client,
) -> None:
    who = user()
    for depth, code in ((300, "json_too_deep"), (9, "validation_failed")):
        body = {"query": SEED_QUERY, "metadata": nested(depth)}
        assert_error(http.post("/ai-jobs-create", json=body, headers=who), 400, code)
    oversized = {"query": SEED_QUERY, "metadata": {"blob": "x" * 5000}}
    assert_error(
        http.post("/ai-jobs-create", json=oversized, headers=who), 400, "validation_failed"
    )
    accepted = http.post(
        "/ai-jobs-create", json={"query": SEED_QUERY, "metadata": nested(8)}, headers=who
    )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["jobId"]
    assert http.get(f"/ai-jobs-get/{job_id}", headers=who).json()["metadata"] == nested(8)
    assert [job["jobId"] for job in jobs_of(http, who)] == [job_id]
    assert http.delete(f"/ai-jobs-cancel/{job_id}", headers=who).status_code in {200, 409}


# --- finding 3: valid-looking JSON the API cannot represent --------------------------------

UNREPRESENTABLE = [
    ("/ai-jobs-create", b'{"query": "q", "metadata": {"x": NaN}}', "invalid_json"),
    ("/ai-jobs-create", b'{"query": "q", "metadata": {"x": Infinity}}', "invalid_json"),
    ("/ai-jobs-create", b'{"query": "q", "metadata": {"x": -Infinity}}', "invalid_json"),
    ("/ai-jobs-create", b'{"query": "q", "metadata": {"x": 1e999}}', "unsupported_json_value"),
    ("/ai-jobs-create", b'{"query": "q", "metadata": {"x": "\\ud800"}}', "unsupported_json_value"),
    ("/ai-jobs-create", b'{"query": "q\\udc00 more"}', "unsupported_json_value"),
    ("/ai-jobs-create", b'{"query": "q\\u0000"}', "unsupported_json_value"),
    ("/ai-jobs-create", b"[" * 4000 + b"]" * 4000, "json_too_deep"),
    ("/ai-jobs-cancel", b'{"jobId": "\\ud800"}', "unsupported_json_value"),
    ("/ai-jobs-cancel", b'{"jobId": "x", "reason": "\\udfff"}', "unsupported_json_value"),
    ("/ai-jobs-cancel", b'{"\\ud800": 1}', "unsupported_json_value"),
]


@pytest.mark.parametrize(("path", "raw", "code"), UNREPRESENTABLE)
def test_f3_json_the_api_cannot_represent_is_a_400_with_a_precise_code(
    http: httpx.Client, path: str, raw: bytes, code: str
) -> None:
    who = user()
    assert_error(post_raw(http, path, raw, **who), 400, code)
    assert jobs_of(http, who) == []


def test_f3_a_cursor_that_decodes_to_a_deep_structure_is_an_invalid_cursor(
    http: httpx.Client,
) -> None:
    for depth in (100, 5000):
        cursor = base64.urlsafe_b64encode(b"[" * depth + b"]" * depth).decode().rstrip("=")
        assert_error(http.get("/ai-jobs-list", params={"cursor": cursor}), 400, "invalid_cursor")


def test_f3_non_ascii_bytes_in_the_idempotency_key_and_user_header_are_a_400(
    http: httpx.Client,
) -> None:
    surrogate_utf8 = b"\xed\xa0\x80"  # what "\ud800" would be, were it encodable
    for header in ("Idempotency-Key", "X-User-Id"):
        response = http.post(
            "/ai-jobs-create", json={"query": SEED_QUERY}, headers={header.encode(): surrogate_utf8}
        )
        assert_error(response, 400, "validation_failed")


# --- finding 5: the limit bounds reading, not only parsing ---------------------------------


def test_f5_a_huge_content_length_is_refused_before_a_byte_of_body_is_sent(
    stack: LocalStack,
) -> None:
    # If the host read the body first, this would wait for 64 MiB that never come.
    head = post_head(stack, "/ai-jobs-create", f"Content-Length: {64 * 1024 * 1024}")
    response = raw_request(stack, head)
    assert response.status == 413
    assert response.error_code() == "payload_too_large"


def test_f5_a_chunked_body_is_refused_once_it_passes_the_limit_without_waiting_for_its_end(
    stack: LocalStack,
) -> None:
    # One chunk a byte past the limit and no final chunk: the answer must come anyway.
    chunk = b"[" + b" " * LIMIT + b"]"
    head = post_head(stack, "/ai-jobs-create", "Transfer-Encoding: chunked")
    response = raw_request(stack, head, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    assert response.status == 413
    assert response.error_code() == "payload_too_large"


# --- finding 6: a job only from a whole body -----------------------------------------------


def test_f6_a_body_shorter_than_its_content_length_creates_no_job(
    stack: LocalStack, http: httpx.Client
) -> None:
    who = user()
    body = json.dumps({"query": SEED_QUERY}).encode()
    head = post_head(stack, "/ai-jobs-create", f"Content-Length: {len(body) + 100}", who=who)
    response = raw_request(stack, head, body, half_close=True)
    assert response.status == 400
    assert response.error_code() == "incomplete_body"
    assert jobs_of(http, who) == []


# --- finding 7: malformed chunked encoding -------------------------------------------------


def test_f7_malformed_chunking_is_a_json_400_and_one_warning_line_without_a_traceback(
    stack: LocalStack, http: httpx.Client
) -> None:
    before = len(stack.log_text("functions"))
    head = post_head(stack, "/ai-jobs-create", "Transfer-Encoding: chunked")
    response = raw_request(stack, head, b"zz-not-hex\r\nabc\r\n0\r\n\r\n")
    assert response.status == 400
    assert response.error_code() == "incomplete_body"
    for _ in range(10):  # abandoned mid-chunk: the client is gone, there is no one to answer
        url = urlsplit(stack.base_url)
        with socket.create_connection((url.hostname or "", url.port or 80), timeout=10) as sock:
            sock.sendall(head.replace("\n", "\r\n").encode() + b'\r\n400\r\n{"query": ')
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    assert http.get("/ai-jobs-list").status_code == 200, "the host keeps serving"
    log = stack.log_text("functions")[before:]
    assert "Traceback" not in log
    assert log.count("request body unreadable") == 11


# --- finding 8: cross-site forms cannot write ----------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_f8_a_post_that_is_not_json_is_415_and_cancels_nothing(
    stack: LocalStack, http: httpx.Client, content_type: str
) -> None:
    stack.tasks_client().pause_queue(name=stack.queue_path)  # the job must stay cancellable
    try:
        job_id = create(http, SEED_QUERY)["jobId"]
        forged = http.post(
            "/ai-jobs-cancel",
            content=json.dumps({"jobId": job_id}).encode(),
            headers={"Content-Type": content_type, "Origin": "https://evil.example"},
        )
        assert_error(forged, 415, "unsupported_media_type")
        assert "Access-Control-Allow-Origin" not in forged.headers
        assert http.get(f"/ai-jobs-get/{job_id}").json()["status"] == "queued"
        bare = http.post(f"/ai-jobs-cancel/{job_id}")  # no body, no Content-Type
        assert_error(bare, 415, "unsupported_media_type")
        asked = preflight(http, "/ai-jobs-cancel", "content-type")
        assert asked.status_code == 204
        assert "Content-Type" in asked.headers["Access-Control-Allow-Headers"]
        allowed = http.post(
            "/ai-jobs-cancel",
            json={"jobId": job_id},
            headers={"Origin": "https://dashboard.example"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
    finally:
        stack.tasks_client().resume_queue(name=stack.queue_path)


# --- finding 11: no backend text, no details on a 5xx -------------------------------------


def cursor_for(created_at: str, job_id: str) -> str:
    raw = json.dumps([created_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_f11_a_cursor_with_an_offset_postgres_refuses_never_shows_postgres_words(
    http: httpx.Client,
) -> None:
    odd = cursor_for("2026-01-01T00:00:00+23:59", str(uuid.uuid4()))
    page = http.get("/ai-jobs-list", params={"cursor": odd})
    assert page.status_code == 200, page.text  # the same instant, sent to Postgres in UTC
    beyond = cursor_for("0001-01-01T00:00:00+23:59", str(uuid.uuid4()))
    assert_error(http.get("/ai-jobs-list", params={"cursor": beyond}), 400, "invalid_cursor")
    naive = cursor_for("2026-01-01T00:00:00", str(uuid.uuid4()))
    assert_error(http.get("/ai-jobs-list", params={"cursor": naive}), 400, "invalid_cursor")


def test_f11_a_5xx_says_only_its_code_and_a_fixed_sentence(
    stack: LocalStack, http: httpx.Client
) -> None:
    stack.kill("gateway")
    try:
        response = http.get("/ai-jobs-list")
    finally:
        stack.start_gateway()
    assert response.status_code == 503
    body = response.json()
    request_id = body["error"].pop("requestId")  # what leads to the log line, nothing more
    assert len(request_id) == 32
    assert body == {
        "error": {
            "code": "database_unavailable",
            "message": "the database is unavailable; retry later",
        }
    }


# --- finding 9: a token joins only its own uuid identity (last: it restarts the host) -----


def test_f9_a_token_whose_sub_is_not_a_uuid_is_401_and_never_the_anonymous_identity(
    stack: LocalStack, http: httpx.Client
) -> None:
    anonymous_job = create(http, SEED_QUERY)["jobId"]  # the shared identity has a job now
    stack.restart_host({"SUPABASE_JWT_SECRET": JWT_SECRET})
    try:
        for sub in ("anonymous", "\ud800", "x" * 5000, "ANONYMOUS"):
            token = mint("authenticated", sub=sub)
            response = http.get("/ai-jobs-list", headers={"Authorization": f"Bearer {token}"})
            assert_error(response, 401, "unauthorized")
            peek = http.get(
                f"/ai-jobs-get/{anonymous_job}", headers={"Authorization": f"Bearer {token}"}
            )
            assert_error(peek, 401, "unauthorized")
        token = mint("authenticated", sub=str(uuid.uuid4()))
        mine = http.get("/ai-jobs-list", headers={"Authorization": f"Bearer {token}"})
        assert mine.status_code == 200
        assert mine.json()["jobs"] == []
    finally:
        stack.restart_host()


# --- found by Schemathesis (tests/e2e/test_schemathesis.py), kept as regular cases ---------

FOUND = [
    # Python's str.strip() calls U+001C blank; the description now says the same
    ("POST", "/ai-jobs-create", {"json": {"query": "\u001c"}}, 400, "validation_failed"),
    # a path the router cannot match answered Flask's HTML 404
    ("DELETE", "/ai-jobs-cancel/y%C2%9D%0A", {}, 404, "not_found"),
    ("GET", "/ai-jobs-get/robots.txt", {}, 404, "not_found"),
    # lenient parsing the description did not allow
    ("GET", "/ai-jobs-list?limit=", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?limit=5_0", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?status=None", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-list?status=queued,,failed", {}, 400, "validation_failed"),
    ("GET", "/ai-jobs-get/12345678123412341234123456789abc", {}, 400, "invalid_id"),
    ("GET", "/ai-jobs-get/%7B12345678-1234-1234-1234-123456789abc%7D", {}, 400, "invalid_id"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), FOUND)
def test_found_cases_get_the_documented_answer(  # noqa: PLR0917 (one parameter per column)
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    assert_error(http.request(method, path, **kwargs), status, code)
