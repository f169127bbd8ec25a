"""How ``RestApp`` reads a request: its body (bounded; as it came when it came whole), the WSGI
environ it builds from the ASGI scope, and the headers document it works out with it: the same
document ``headers_document`` reads from that environ, for every set of headers (repeated,
duplicated, case, an empty Content-Type, a chunked body), whether seen before or not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from infra.local.gateway import asgi
from infra.local.gateway.app import HEADERS_DOCUMENT, headers_document


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/rest/v1/rpc/get_job",
        "query_string": b"",
        "headers": headers,
    }


KEY = b"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"
HEADER_SETS = [
    [],
    [(b"content-length", b"2")],
    [(b"content-type", b"application/json"), (b"content-length", b"2")],
    [(b"content-type", b"")],
    [(b"transfer-encoding", b"chunked"), (b"content-type", b"application/json")],
    [(b"apikey", KEY), (b"authorization", b"Bearer " + KEY), (b"content-length", b"2")],
    [(b"x-probe", b"a"), (b"X-Probe", b"b"), (b"x_probe", b"c"), (b"cookie", b"k=v")],
    [(b"Content-Length", b"2"), (b"content-type", b"text/plain"), (b"Content-Type", b"x/y")],
    [(b"accept", b"*/*"), (b"x-quote", b'say "\\hi\\"'), (b"x-latin", "é".encode("latin1"))],
    [(b"content-profile", b"public"), (b"content-length", b"999999999")],
]


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("body", [b"", b"{}", b'{"p_job_id": "x"}'])
def test_the_headers_document_made_with_the_environ_is_the_environs_own(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    for _ in range(2):  # the first time worked out, the second remembered
        env = asgi.environ(_scope(headers), body)
        made = env.pop(HEADERS_DOCUMENT)
        assert made == headers_document(env)
        assert json.loads(made)["content-length"] == env["CONTENT_LENGTH"]


def test_requests_that_differ_only_in_content_length_share_one_remembered_head() -> None:
    asgi._heads.clear()
    first = asgi.environ(_scope([(b"apikey", KEY), (b"content-length", b"2")]), b"{}")
    second = asgi.environ(_scope([(b"apikey", KEY), (b"content-length", b"4")]), b"[  ]")
    assert len(asgi._heads) == 1
    assert json.loads(first[HEADERS_DOCUMENT]) == {"content-length": "2", "apikey": KEY.decode()}
    assert json.loads(second[HEADERS_DOCUMENT]) == {"content-length": "4", "apikey": KEY.decode()}


def test_the_remembered_heads_are_bounded() -> None:
    asgi._heads.clear()
    for number in range(asgi.HEADS_KEPT + 5):
        asgi.environ(_scope([(b"x-n", str(number).encode())]), b"")
    assert 0 < len(asgi._heads) <= asgi.HEADS_KEPT
    last = asgi.environ(_scope([(b"x-n", b"last")]), b"")
    assert json.loads(last[HEADERS_DOCUMENT]) == {"content-length": "0", "x-n": "last"}


def _read(messages: list[dict[str, Any]], limit: int | None = 10, length: int | None = None) -> Any:
    """``read_body`` of ``messages`` as the server hands them in turn."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return asyncio.run(asgi.read_body(_scope(headers), receive, limit))


def _part(body: bytes | bytearray, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def test_a_body_in_one_message_is_taken_as_it_came() -> None:
    body = b'{"a": 1}'
    assert _read([_part(body)]) is body
    assert _read([_part(bytearray(b"{}"))]) == b"{}"
    assert _read([{"type": "http.request"}]) == b""


def test_a_body_in_parts_is_joined_and_read_only_to_one_byte_past_the_bound() -> None:
    assert _read([_part(b"ab", True), _part(b"cd", True), _part(b"")]) == b"abcd"
    assert _read([_part(b"0123456789abc")]) == b"0123456789a"
    assert _read([_part(b"012345", True), _part(b"6789abc", True)]) == b"0123456789a"
    assert _read([_part(b"0123456789abc")], limit=None) == b"0123456789abc"


def test_a_client_gone_before_the_bodys_end_gives_no_body_and_a_declared_excess_no_read() -> None:
    assert _read([{"type": "http.disconnect"}]) is None
    assert _read([_part(b"ab", True), {"type": "http.disconnect"}]) is None
    assert _read([], length=11) == b""  # refused from its declared length, nothing received


def test_a_set_of_headers_over_the_byte_bound_is_not_remembered() -> None:
    # httptools takes a header of any size: 1024 sets of 8 MB each would stay in memory
    big = [(b"apikey", KEY), (b"x-big", b"a" * (asgi.HEAD_KEPT_MAX_BYTES + 1))]
    asgi._heads.clear()
    env = asgi.environ(_scope(big), b"")
    assert env["HTTP_X_BIG"] == "a" * (asgi.HEAD_KEPT_MAX_BYTES + 1)
    assert json.loads(env[HEADERS_DOCUMENT]) == json.loads(headers_document(env))
    assert asgi._heads == {}
    asgi.environ(_scope(big[:1]), b"")
    assert list(asgi._heads) == [tuple(big[:1])]
