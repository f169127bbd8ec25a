"""The function host's front: routing by function name as the Cloud Functions front end does,
and message framing over kept-alive connections (one real front and real HTTP servers)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class _Echo(BaseHTTPRequestHandler):
    """Answers with the path and body it got; a chunked answer for /chunked."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            body = self._chunks()  # read it whole, as a real server does before answering
        payload = self.path.encode() + b"|" + body
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
