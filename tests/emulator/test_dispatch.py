"""One attempt's HTTP exchange (`infra.local.tasks_emulator.dispatch`) against a real target:
a small request written at once on an idle kept-alive connection by the launching thread, its
answer read afterwards, and every request written with one send."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import socket
from typing import Any

import pytest

from infra.local.tasks_emulator import dispatch
from infra.local.tasks_emulator.model import RPC_OK, RPC_UNAVAILABLE
from tests.emulator.target import Target
from tests.support import wait_until


def _request(target: Target, body: bytes = b'{"jobId": "x"}') -> dispatch.HttpDispatch:
    return dispatch.HttpDispatch(
        method="POST",
        url=f"{target.url}/run",
        headers={"Content-Type": "application/json"},
        body=body,
        deadline_s=10.0,
    )


def _ignore(sock: socket.socket | None) -> None:
    return None


def _origin(target: Target) -> tuple[str, str, int]:
    return ("http", "127.0.0.1", int(target.url.rsplit(":", 1)[1]))


class _CountingSocket:
    """A socket that counts the writes made on it (http.client writes with sendall)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[int] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_small_request_goes_out_at_once_on_an_idle_connection_and_its_answer_is_read_after(
    target: Target,
) -> None:
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()
    first = dispatch.send(_request(target), _ignore, connections)

    sent = dispatch.send_at_once(_request(target, b'{"jobId": "y"}'), connections)
    arrived = target.wait_for(2)  # there before anyone reads the answer
    outcome = dispatch.receive(sent, _request(target), _ignore, connections) if sent else None
    connections.close()

    assert first.rpc_code == RPC_OK
    assert sent is not None
    assert arrived[1].body == b'{"jobId": "y"}'
    assert arrived[1].client_port == arrived[0].client_port, "the kept-alive connection"
    assert outcome is not None
    assert (outcome.http_status, outcome.rpc_code) == (200, RPC_OK)


def test_nothing_goes_out_at_once_without_an_idle_connection(target: Target) -> None:
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()

    sent = dispatch.send_at_once(_request(target), connections)
    outcome = dispatch.send(_request(target), _ignore, connections)  # answered: all arrived
    connections.close()

    assert sent is None
    assert outcome.rpc_code == RPC_OK
    assert len(target.received) == 1, "only the request that send() made"


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_large_request_is_left_to_a_dispatch_thread(target: Target, where: str) -> None:
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()
    dispatch.send(_request(target), _ignore, connections)
    filler = "x" * dispatch.SEND_AT_ONCE_MAX_BYTES
    large = dataclasses.replace(
        _request(target),
        **(
            {"body": filler.encode()}
            if where == "body"
            else {"headers": {"Content-Type": "application/json", "X-Filler": filler}}
        ),
    )

    sent = dispatch.send_at_once(large, connections)
    outcome = dispatch.send(large, _ignore, connections)
    connections.close()

    assert sent is None
    assert outcome.rpc_code == RPC_OK
    assert len(target.received) == 2, "the large request once, by send()"


def test_a_connection_the_worker_closed_while_idle_is_not_written_at_once(target: Target) -> None:
    target.keep_alive_s = 0.2
    connections = dispatch.Connections()
    dispatch.send(_request(target), _ignore, connections)
    target.wait_for(1)
    wait_until(lambda: target.closed_connections == 1, "the target to close the connection")

    sent = dispatch.send_at_once(_request(target), connections)
    connections.close()

    assert sent is None


def test_a_request_head_and_body_are_written_with_one_send(target: Target) -> None:
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()
    dispatch.send(_request(target), _ignore, connections)
    connection = connections.take_idle(_origin(target), 10.0)
    assert connection is not None and connection.sock is not None
    counting = _CountingSocket(connection.sock)
    connection.sock = counting
    connections.give_back(_origin(target), connection)

    outcome = dispatch.send(_request(target, b'{"jobId": "z"}'), _ignore, connections)
    arrived = target.wait_for(2)
    connections.close()

    assert outcome.rpc_code == RPC_OK
    assert len(counting.writes) == 1
    assert arrived[1].body == b'{"jobId": "z"}'


def test_a_request_written_at_once_is_one_write_that_never_waits(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()
    dispatch.send(_request(target), _ignore, connections)
    writes: list[tuple[int, int]] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        writes.append((fd, len(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    sent = dispatch.send_at_once(_request(target, b'{"jobId": "z"}'), connections)
    monkeypatch.undo()
    arrived = target.wait_for(2)
    if sent is not None:
        dispatch.receive(sent, _request(target), _ignore, connections)
    connections.close()

    assert sent is not None
    assert len(writes) == 1, "head and body in one write(2)"
    # a socket with a timeout is non-blocking at the kernel's level: the write cannot wait
    assert sent.connection.sock is None or sent.connection.sock.gettimeout() == 10.0
    assert arrived[1].body == b'{"jobId": "z"}'


def test_a_request_the_connection_cannot_take_at_once_is_not_sent_and_its_connection_closed() -> (
    None
):
    # A worker that stops reading: the buffers between fill up, so a request written at once
    # cannot go whole. The write does not wait; cut short, the request never ran, and the
    # attempt goes the usual way (`send`) on a new connection.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        origin = ("http", "127.0.0.1", listener.getsockname()[1])
        connection = dispatch._new_connection(origin, 10.0)
        worker, _ = listener.accept()  # and never reads
        assert connection.sock is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(connection.sock.fileno(), b"x" * 65536)
        connections = dispatch.Connections()
        connections.give_back(origin, connection)
        request = dispatch.HttpDispatch(
            "POST", f"http://127.0.0.1:{origin[2]}/run", {}, b'{"jobId": "q"}', 10.0
        )

        sent = dispatch.send_at_once(request, connections)
        worker.close()

    assert sent is None
    assert connection.sock is None, "the connection the request was cut short on is closed"


def test_an_https_request_is_never_written_at_once_on_the_raw_socket(target: Target) -> None:
    # The at-once write goes to the socket's descriptor: over TLS that would be plaintext.
    target.keep_alive_s = 30.0
    connections = dispatch.Connections()
    dispatch.send(_request(target), _ignore, connections)
    http_origin = _origin(target)
    connection = connections.take_idle(http_origin, 10.0)
    assert connection is not None
    tls_origin = ("https", http_origin[1], http_origin[2])
    connections.give_back(tls_origin, connection)  # an idle connection for the https origin
    request = dataclasses.replace(_request(target), url=f"https://127.0.0.1:{http_origin[2]}/run")

    sent = dispatch.send_at_once(request, connections)
    still_idle = connections.take_idle(tls_origin, 10.0)
    connections.close()
    if still_idle is not None:
        still_idle.close()

    assert sent is None
    assert still_idle is connection, "not taken, nothing written"
    assert len(target.received) == 1


def test_a_host_http_client_refuses_is_a_failed_attempt_not_an_exception() -> None:
    # http.client raises InvalidURL (an HTTPException, not an OSError) for such a host.
    request = dispatch.HttpDispatch(
        method="POST", url="http://a b/x", headers={}, body=b"", deadline_s=1.0
    )

    outcome = dispatch.send(request, _ignore, dispatch.Connections())

    assert outcome.http_status is None
    assert outcome.rpc_code == RPC_UNAVAILABLE
    assert "InvalidURL" in outcome.message


def test_a_url_too_long_for_any_task_is_encoded_without_the_cache() -> None:
    # CreateTask encodes a URL before it can refuse it as too long: caching such URLs would
    # let refused requests (up to gRPC's 4 MB each) fill the cache.
    url = "http://h/" + "a b" * 5_000
    before = dispatch._encode_url_cached.cache_info()

    encoded = dispatch.encoded_url(url)

    assert encoded == "http://h/" + "a%20b" * 5_000
    after = dispatch._encode_url_cached.cache_info()
    assert (after.misses, after.currsize) == (before.misses, before.currsize)
    assert dispatch.encoded_url("http://h/a b") == "http://h/a%20b"  # short ones are cached
    assert dispatch._encode_url_cached.cache_info().currsize >= 1


class _Recorder:
    """Stands for a connected socket: keeps what http.client writes on it."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


def _latin1_or_utf8(value: str) -> str | bytes:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()
    return value


def _as_http_client_writes(origin: tuple[str, str, int], request: dispatch.HttpDispatch) -> bytes:
    _scheme, host, port = origin
    connection = http.client.HTTPConnection(host, port)
    recorder = _Recorder()
    connection.sock = recorder
    # as the emulator handed headers to http.client before: text when Latin-1 carries it
    headers = {name: _latin1_or_utf8(value) for name, value in request.headers.items()}
    url, body = request.url, request.body or None
    connection.request(request.method, url, body=body, headers=headers)
    return recorder.data


@pytest.mark.parametrize(
    ("url", "method", "headers", "body"),
    [
        ("http://127.0.0.1:8080/run?x=1", "POST", {"Content-Type": "application/json"}, b"{}"),
        ("http://example.com/a", "POST", {}, b""),  # Content-Length: 0 for an empty POST
        ("http://example.com:80/a", "GET", {"Accept-Encoding": "gzip"}, b""),
        ("http://[::1]:9000/", "PUT", {"X-Name": "caf\u00e9", "X-Emoji": "\u2603"}, b"body"),
        ("http://h/", "DELETE", {"Transfer-Encoding": "chunked"}, b""),
    ],
)
def test_a_request_is_written_byte_for_byte_as_http_client_writes_it(
    url: str, method: str, headers: dict[str, str], body: bytes
) -> None:
    origin, target = dispatch._origin_and_target(url)
    request = dispatch.HttpDispatch(method, target, headers, body, 10.0)

    ours = dispatch._wire_head(origin, target, request) + body

    assert ours == _as_http_client_writes(origin, request)
