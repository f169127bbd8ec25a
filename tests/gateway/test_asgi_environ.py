"""The WSGI environ ``RestApp`` builds from an ASGI scope, and the headers document it works out
with it: the same document ``headers_document`` reads from that environ, for every set of
headers (repeated, duplicated, case, an empty Content-Type, a chunked body), whether the
request's headers were seen before or not."""

from __future__ import annotations

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
