"""The function host's front: routing by function name as the Cloud Functions front end does,
and message framing over kept-alive connections (one real front and real HTTP servers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from infra.local.host import Backend, free_port, route, serve


def test_the_function_gets_the_path_after_its_name() -> None:
    backends = {"ai-jobs-get": Backend("ai-jobs-get", 1)}
    assert route(b"/ai-jobs-get/abc?logs=true", backends) == (
        backends["ai-jobs-get"],
        b"/abc?logs=true",
    )
    assert route(b"/ai-jobs-get", backends) == (backends["ai-jobs-get"], b"/")
    assert route(b"/ai-jobs-get?id=1", backends) == (backends["ai-jobs-get"], b"/?id=1")
    assert route(b"/nope/x", backends)[0] is None
    assert route(b"/", backends)[0] is None


_RAW_ANSWERS = {
    # both framings: Transfer-Encoding overrides Content-Length (RFC 9112 6.3)
    "/both": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "/negative": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabcdef",
    # ran, then died after part of its answer
    "/half": b"HTTP/1.1 200 OK\r\nContent-",
    "/continued": b"HTTP/1.1 100 Continue\r\n\r\n",
}


class _Echo(BaseHTTPRequestHandler):
    """Answers with the path and body it got; a chunked answer for /chunked."""

    protocol_version = "HTTP/1.1"
    #: the paths of the requests that ran and died mid-answer
    ran: ClassVar[list[str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            body = self._chunks()  # read it whole, as a real server does before answering
        if self.path == "/vanish":  # closes without a word, as a crashed worker does
            _Echo.ran.append(self.path)
            self.close_connection = True
            return
        if self.path in _RAW_ANSWERS:  # answers written as they are, then closed
            self._raw()
            return
        if self.path == "/garbled":  # a head no HTTP reader can frame
            self.wfile.write(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
            self.close_connection = True
            return
        payload = self.path.encode() + b"|" + body
        if self.path == "/headers":
            payload = bytes(self.headers)  # the head's fields as this server got them
        self.send_response(200)
        if self.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (payload[:3], payload[3:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        if self.path == "/then-close":  # framed and not "Connection: close", yet it closes
            self.close_connection = True

    def _raw(self) -> None:
        _Echo.ran.append(self.path)
        self.wfile.write(_RAW_ANSWERS[self.path])
        self.close_connection = True

    def _chunks(self) -> bytes:
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        return body

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def front() -> Iterator[int]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    backends = {"echo": Backend("echo", upstream.server_address[1])}
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve("127.0.0.1", port, backends, stop),)
    )
    thread.start()
    for _ in range(250):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            threading.Event().wait(0.02)
    yield port
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    upstream.shutdown()
    upstream.server_close()


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the front closed the connection: {data!r}"
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
    elif b"content-length" in head.lower() and not request.startswith(b"HEAD"):
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_one_kept_alive_connection_carries_every_kind_of_message(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        post = _exchange(
            sock, b"POST /echo/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
        )
        assert post.startswith(b"HTTP/1.0 200") or post.startswith(b"HTTP/1.1 200")
        assert post.endswith(b"/a?x=1|hi")
        chunked = _exchange(
            sock,
            b"POST /echo/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
        )
        assert b"/ch\r\n" in chunked and chunked.endswith(b"0\r\n\r\n")
        head = _exchange(sock, b"HEAD /echo/h HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b"Content-Length: 3" in head and head.endswith(b"\r\n\r\n")
        index = _exchange(sock, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert index.endswith(b'{"functions": ["echo"]}')
        missing = _exchange(sock, b"GET /nope HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404") and b"Connection: close" in missing


def test_hop_by_hop_fields_are_cut_from_a_forwarded_head_and_the_rest_kept_as_sent(
    front: int,
) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        answer = _exchange(
            sock,
            b"GET /echo/headers HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-drop\r\n"
            b"X-Kept:  spaced value\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            b"Upgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-Last: 1\r\n\r\n",
        )
    fields = answer.partition(b"\r\n\r\n")[2].lower()
    assert fields == b"host: h\nx-kept: spaced value\nx-last: 1\n\n"


def test_pipelined_requests_are_answered_in_order_on_one_connection(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sock.sendall(
            b"POST /echo/one HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n1"
            b"GET /echo/two HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        second = _exchange(sock, b"GET /echo/three HTTP/1.1\r\nHost: h\r\n\r\n")
        while second.count(b"HTTP/1.") < 3:
            second += sock.recv(65536)
    assert second.index(b"/one|1") < second.index(b"/two|") < second.index(b"/three|")


def test_a_head_that_is_not_strictly_well_formed_still_gets_the_lenient_reading(
    front: int,
) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        # a space before the colon: read leniently as before, then the connection goes on
        lenient = _exchange(
            sock, b"POST /echo/l HTTP/1.1\r\nHost: h\r\nContent-Length : 2\r\n\r\nok"
        )
        assert lenient.endswith(b"/l|ok")
        after = _exchange(sock, b"GET /echo/after HTTP/1.1\r\nHost: h\r\n\r\n")
        assert after.endswith(b"/after|")
    with socket.create_connection(("127.0.0.1", front)) as sock:
        refused = _exchange(sock, b"GET /echo/x HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400") and b'"bad_request"' in refused


@pytest.mark.parametrize("path", [b"/echo/vanish", b"/echo/garbled"])
def test_a_function_that_closes_or_garbles_its_answer_gets_the_client_a_502(
    front: int, path: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        answer = _exchange(sock, b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
        assert answer.startswith(b"HTTP/1.1 502") and b'"bad_gateway"' in answer
        assert b"Connection: close" in answer
        sock.settimeout(5)
        assert sock.recv(65536) == b"", "the client's connection is closed after a 502"


def test_a_pooled_connection_the_function_closed_is_not_used_for_the_next_request(
    front: int,
) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        assert _exchange(sock, b"GET /echo/then-close HTTP/1.1\r\nHost: h\r\n\r\n").endswith(
            b"/then-close|"
        )
        for _ in range(3):  # each on a connection that works: a stale one is retried or skipped
            answer = _exchange(sock, b"GET /echo/next HTTP/1.1\r\nHost: h\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"/next|")


def test_a_client_that_sends_far_ahead_is_read_as_it_is_served_and_loses_nothing(
    front: int,
) -> None:
    # eight pipelined bodies of 60 KB: more than the front holds ahead, so it stops reading
    # the client until it has served what it holds, then reads on
    bodies = [bytes([65 + k]) * 60_000 for k in range(8)]
    requests = b"".join(
        b"POST /echo/%d HTTP/1.1\r\nHost: h\r\nContent-Length: 60000\r\n\r\n%s" % (k, body)
        for k, body in enumerate(bodies)
    )
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sender = threading.Thread(target=sock.sendall, args=(requests,))
        sender.start()
        sock.settimeout(10)
        received = b""
        while received.count(b"HTTP/1.") < 8 or not received.endswith(bodies[-1]):
            piece = sock.recv(1 << 20)
            assert piece, "the front closed the connection"
            received += piece
        sender.join(10)
    answers = received.split(b"HTTP/1.")[1:]
    assert [answer.endswith(b"/%d|%s" % (k, bodies[k])) for k, answer in enumerate(answers)] == [
        True
    ] * 8


def _until(sock: socket.socket, ending: bytes) -> bytes:
    """What the front sends until it has sent ``ending`` (or closes, or stalls for 5 s)."""
    sock.settimeout(5)
    data = b""
    with contextlib.suppress(TimeoutError):
        while not data.endswith(ending) and (piece := sock.recv(65536)):
            data += piece
    return data


@pytest.mark.parametrize("field", [b"Expect: 100-continue", b"Expect : 100-continue"])
def test_a_100_continue_from_the_function_is_passed_on_and_its_answer_follows(
    front: int, field: bytes
) -> None:
    # http.server, as gunicorn, answers "Expect: 100-continue" with a 100 before the answer;
    # the strict head takes the callbacks' path, the lenient one the stream code's
    lenient = b" :" in field
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sock.sendall(
            b"POST /echo/x HTTP/1.1\r\nHost: h\r\n%s\r\nContent-Length: 2\r\n\r\nhi" % field
        )
        answer = _until(sock, b"/x|hi")
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert b"HTTP/1.1 200" in answer and answer.endswith(b"/x|hi")
        host = b"Host : h" if lenient else b"Host: h"
        sock.sendall(b"GET /echo/next HTTP/1.1\r\n%s\r\n\r\n" % host)
        assert _until(sock, b"/next|").endswith(b"/next|")
    with socket.create_connection(("127.0.0.1", front)) as other:
        # another client's request on the pooled connection gets its own answer
        other.sendall(b"GET /echo/other HTTP/1.1\r\nHost : h\r\n\r\n")
        assert _until(other, b"/other|").endswith(b"/other|")


@pytest.mark.parametrize("host", [b"Host: h", b"Host : h"])
def test_fields_named_in_connection_are_cut_but_never_the_framing_ones(
    front: int, host: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        answer = _exchange(
            sock,
            b"POST /echo/headers HTTP/1.1\r\n%s\r\nConnection: X-Drop , content-length\r\n"
            b"X-Drop: secret\r\nContent-Length: 2\r\nX-Last: 1\r\n\r\nhi" % host,
        )
    fields = answer.partition(b"\r\n\r\n")[2].lower()
    assert fields == b"host: h\ncontent-length: 2\nx-last: 1\n\n"


@pytest.mark.parametrize("host", [b"Host: h", b"Host : h"])
@pytest.mark.parametrize("path", [b"/half", b"/continued"])
def test_a_request_that_ran_and_died_mid_answer_is_not_sent_again(
    front: int, host: bytes, path: bytes
) -> None:
    _Echo.ran.clear()
    with socket.create_connection(("127.0.0.1", front)) as sock:
        first = _exchange(sock, b"GET /echo/first HTTP/1.1\r\n%s\r\n\r\n" % host)
        assert first.endswith(b"/first|")  # its connection is pooled, then reused below
        sock.sendall(b"POST /echo%s HTTP/1.1\r\n%s\r\nContent-Length: 0\r\n\r\n" % (path, host))
        answer = _until(sock, b"<never>")
    assert b"HTTP/1.1 502" in answer and b'"bad_gateway"' in answer
    assert _Echo.ran == [path.decode()], "the function ran the request once"


def test_a_head_over_the_bound_is_refused_however_its_bytes_arrive(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: h\r\nX-Big: %s\r\n\r\n" % (b"a" * 70_000))
        answer = _until(sock, b"<never>")
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer


@pytest.mark.parametrize("host", [b"Host: h", b"Host : h"])
def test_an_answer_with_both_framings_is_framed_by_its_chunks(front: int, host: bytes) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        answer = _exchange(sock, b"GET /echo/both HTTP/1.1\r\n%s\r\n\r\n" % host)
        assert answer.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert _exchange(sock, b"GET /echo/after HTTP/1.1\r\nHost: h\r\n\r\n").endswith(b"/after|")


def test_an_answer_with_a_negative_length_gets_the_client_a_502(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        answer = _exchange(sock, b"GET /echo/negative HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502") and b'"bad_gateway"' in answer


@pytest.mark.parametrize("field", [b"X: a\nContent-Length: 5", b"X: a\rb", b"X: a\x00b"])
def test_a_bare_lf_cr_or_nul_in_a_head_is_refused_not_forwarded(front: int, field: bytes) -> None:
    # http.server, like many readers, splits lines at a bare LF: forwarded, it would read the
    # next request as this one's body
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sock.sendall(
            b"GET /echo/headers HTTP/1.1\r\nHost: h\r\n%s\r\n\r\n"
            b"GET /echo/next HTTP/1.1\r\nHost: h\r\n\r\n" % field
        )
        answer = _until(sock, b"<never>")
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer


def test_a_bare_lf_in_the_request_line_is_refused_not_forwarded(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front)) as sock:
        sock.sendall(b"GET /echo/a\nb HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = _until(sock, b"<never>")
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer


@pytest.mark.parametrize("host", [b"Host: h", b"Host : h"])
@pytest.mark.parametrize(("method", "runs"), [(b"POST", 1), (b"GET", 2)])
def test_a_request_whose_function_closed_without_answering_goes_again_only_if_idempotent(
    front: int, host: bytes, method: bytes, runs: int
) -> None:
    """A pooled connection closed with no answer may have run the request (RFC 9110 9.2.2):
    a POST gets a 502, a GET is sent once more on a new connection."""
    _Echo.ran.clear()
    with socket.create_connection(("127.0.0.1", front)) as sock:
        first = _exchange(sock, b"GET /echo/first HTTP/1.1\r\n%s\r\n\r\n" % host)
        assert first.endswith(b"/first|")  # its connection is pooled, then reused below
        request = b"%s /echo/vanish HTTP/1.1\r\n%s\r\nContent-Length: 0\r\n\r\n"
        sock.sendall(request % (method, host))
        answer = _until(sock, b"<never>")
    assert b"HTTP/1.1 502" in answer and b'"bad_gateway"' in answer
    assert _Echo.ran == ["/vanish"] * runs
