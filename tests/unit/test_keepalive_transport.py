"""The store's httpx transport (shared/transport.py) against real HTTP servers on loopback.

Each server here is a real socket server in this process whose behaviour a test picks: it
answers and keeps the connection, closes it after answering (as a server whose idle timeout
ran out does), reads a request and drops the connection without a word, never answers, or
never reads. Nothing is mocked: httpx, the transport and the sockets are real.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import errors
from shared.store import JobStore
from shared.transport import KeepAliveTransport


class Server(ThreadingHTTPServer):
    """Counts connections and requests; ``mode`` picks how it answers a POST."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 overflows when 16 threads connect at once

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = mode
        self.connections = 0
        self.requests: list[bytes] = []
        self.cookies: list[str | None] = []  #: the Cookie header of each request, if any
        self.closed = threading.Event()  # set when the server closed a connection
        self.release = threading.Event()  # lets a "silent" handler finish
        self.together = threading.Barrier(6)  # "gather": six requests answered at once
        self.lock = threading.Lock()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)  # the socket is closed here, after the handler
        self.closed.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


#: the answer's framing headers in the "te-..." and "connection-..." modes (chunked body after)
RAW_HEADS = {
    "te-identity-last": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    "te-gzip-chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "te-xchunked": b"Transfer-Encoding: xchunked\r\n",
    "te-chunked-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-chunked-spaced": b"Transfer-Encoding:  CHUNKED \r\n",
    "connection-close-first": b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
    b"Connection: x-trace\r\n",
}
TOO_LARGE = b'{"code":"BODY_TOO_LARGE"}'
#: a trailer section too long: more lines than a head may have, or more bytes
TRAILER_FLOODS = {
    "trailer-lines": b"".join(b"X-T%d: t\r\n" % n for n in range(101)),
    "trailer-bytes": b"".join(b"X-T%d: %s\r\n" % (n, b"t" * 60_000) for n in range(5)),
}


def chunked(payload: bytes, trailer: bytes = b"") -> bytes:
    """``payload`` in two chunks, then the last chunk and ``trailer`` (lines with CRLF)."""
    half = len(payload) // 2
    return b"%X\r\n%s\r\n%X\r\n%s\r\n0\r\n%s\r\n" % (
        half,
        payload[:half],
        len(payload) - half,
        payload[half:],
        trailer,
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        mode = self.server.mode
        if mode == "unread":  # never reads the body: the client's write must time out
            self.server.release.wait(30)
            self.close_connection = True
            return
        if mode in {"too-large", "closes-unread"}:
            self._close_unread()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append(body)
            self.server.cookies.append(self.headers.get("Cookie"))
        if mode == "drop":  # the request arrived; the connection dies before any answer
            self.close_connection = True
            return
        if self._interim():
            return
        if mode == "gather":
            self.server.together.wait(10)
        if mode == "silent":
            self.server.release.wait(30)
            self.close_connection = True
            return
        self._answer(body)
        if mode == "close-after":  # answered as keep-alive, then closed (idle timeout)
            self.close_connection = True

    def _close_unread(self) -> None:
        """Reads only the head and closes with the body still coming (a reset: the client's
        write fails), after a 413 in the "too-large" mode."""
        if self.server.mode == "too-large":
            self.wfile.write(
                b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(TOO_LARGE), TOO_LARGE)
            )
        self.close_connection = True

    def _interim(self) -> bool:
        """Writes the interim (1xx) answers of the mode; True when no final one follows."""
        mode = self.server.mode
        if mode == "early-hints":  # 103 first, then the real answer on the same connection
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            self.wfile.flush()
        if mode.startswith("interim-"):  # that many interim answers of several kinds first
            interim = [b"100 Continue", b"102 Processing", b"103 Early Hints", b"199 Misc"]
            for n in range(int(mode.removeprefix("interim-"))):
                self.wfile.write(b"HTTP/1.1 %s\r\nX-N: %d\r\n\r\n" % (interim[n % 4], n))
        if mode == "switching":  # an upgrade nobody asked for, then bytes of another protocol
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            self.wfile.write(b"\x81\x02hi")
            self.server.release.wait(30)
            self.close_connection = True
            return True
        return False

    def do_HEAD(self) -> None:  # the head a GET would have, with its length, and no body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def do_GET(self) -> None:  # /204 or /304: no body, whatever the head says
        status = int(self.path.strip("/"))
        self.send_response(status)
        if status == 304:  # the length the full answer would have (RFC 9110 section 8.6)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", "1234")
        self.end_headers()

    def _answer(self, body: bytes) -> None:
        payload = json.dumps({"echo": json.loads(body or b"null")}).encode()
        if self._answer_raw(payload):
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        if self.server.mode == "gzip":
            payload = gzip.compress(payload)
            self.send_header("Content-Encoding", "gzip")
        if self.server.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(payload) // 2
            for piece in (payload[:half], payload[half:], b""):
                self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
            return
        if self.server.mode == "connection-close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _answer_raw(self, payload: bytes) -> bool:
        """The answers http.server would not write: framed by hand, byte by byte."""
        mode = self.server.mode
        if mode == "http10-folded":  # HTTP/1.0, a folded header, the body ends at the close
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Folded: a\r\n  b\r\n\r\n" + payload)
        elif mode == "truncated":  # promises more than it sends, then closes
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(payload) + 9))
            self.wfile.write(payload)
        elif mode == "trailing":  # the answer, then bytes nobody asked for
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
            self.wfile.write(payload + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            self.wfile.flush()
            return True  # keeps the connection open: the client must not reuse it
        elif mode == "chunked-with-length":  # both framings: chunked wins, then the close
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
                b"%X\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(payload), payload)
            )
            self.wfile.flush()
            return True  # keeps the connection open: the client must not reuse it
        elif mode in RAW_HEADS or mode in TRAILER_FLOODS or mode == "chunked-trailers":
            trailer = TRAILER_FLOODS.get(mode, b"X-Trailer: t\r\nX-Other: u\r\n")
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\n%s\r\n%s"
                % (
                    RAW_HEADS.get(mode, b"Transfer-Encoding: chunked\r\n"),
                    chunked(payload, trailer),
                )
            )
            self.wfile.flush()
            return True  # keeps the connection open: whether it is reused is the client's call
        elif mode == "http10-keep-alive-first":  # HTTP/1.0 kept open by the first line's token
            self.wfile.write(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: x-trace\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            self.wfile.flush()
            return True
        elif mode == "conflicting-length":
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 1\r\n\r\n%s"
                % (len(payload), payload)
            )
        else:
            return False
        self.close_connection = True
        return True


@contextmanager
def serving(mode: str) -> Iterator[Server]:
    server = Server(mode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def keepalive() -> Iterator[Server]:
    with serving("keep-alive") as server:
        yield server


def client(**timeouts: float) -> httpx.Client:
    return httpx.Client(transport=KeepAliveTransport(), timeout=httpx.Timeout(10, **timeouts))


def test_sequential_requests_share_one_connection_and_read_exactly_what_was_sent(
    keepalive: Server,
) -> None:
    with client() as http:
        answers = [http.post(keepalive.url + "/rpc/x", json={"n": n}) for n in range(20)]

    assert [a.json() for a in answers] == [{"echo": {"n": n}} for n in range(20)]
    assert {a.status_code for a in answers} == {200}
    assert answers[0].headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert answers[0].extensions["http_version"] == b"HTTP/1.1"
    assert keepalive.connections == 1
    assert len(keepalive.requests) == 20


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once() -> None:
    with serving("close-after") as server:
        with client() as http:
            assert http.post(server.url, json=1).json() == {"echo": 1}
            assert server.closed.wait(10)  # the pooled connection is now dead

            assert http.post(server.url, json=2).json() == {"echo": 2}

        assert server.connections == 2
        assert server.requests == [b"1", b"2"]


def test_a_connection_close_answer_is_not_pooled() -> None:
    transport = KeepAliveTransport()
    with serving("connection-close") as server:
        with httpx.Client(transport=transport) as http:
            http.post(server.url, json=1)
            assert transport.idle_connections() == 0
            http.post(server.url, json=2)
        assert server.connections == 2


def test_a_request_the_server_read_and_then_dropped_fails_and_is_never_resent() -> None:
    with serving("drop") as server:
        with client() as http, pytest.raises(httpx.RemoteProtocolError):
            http.post(server.url, json={"create": "once"})
        assert server.requests == [b'{"create":"once"}']


def test_an_early_hints_answer_is_skipped_and_the_final_one_returned_on_a_kept_connection() -> None:
    # RFC 9110 section 15.2: a client must parse interim answers it did not expect. The server
    # ran the RPC: refusing its answer would report a job that exists as never created.
    with serving("early-hints") as server, client() as http:
        answers = [http.post(server.url, json=n) for n in range(2)]
        assert [(a.status_code, a.json()) for a in answers] == [
            (200, {"echo": n}) for n in range(2)
        ]
        assert server.connections == 1


def test_ten_interim_answers_in_a_row_are_skipped_and_an_eleventh_is_a_protocol_error() -> None:
    with serving("interim-10") as server, client() as http:
        answers = [http.post(server.url, json=n).json() for n in range(2)]
        assert answers == [{"echo": 0}, {"echo": 1}]
        assert server.connections == 1
    transport = KeepAliveTransport()
    with serving("interim-11") as server, httpx.Client(transport=transport) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="informational"):
            http.post(server.url, json=1)
        assert transport.idle_connections() == 0  # the final answer is still unread on it
        assert server.requests == [b"1"]


def test_switching_protocols_is_a_protocol_error_and_its_connection_is_never_reused() -> None:
    transport = KeepAliveTransport()
    with serving("switching") as server, httpx.Client(transport=transport) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="101"):
            http.post(server.url, json=1)
        assert transport.idle_connections() == 0


@pytest.mark.parametrize("value", ["key\nInjected: 1", "key\n", "key\r", "k\r\ney", "k\x00ey"])
def test_a_header_value_with_a_line_break_is_an_httpx_error_not_a_crash(
    keepalive: Server, value: str
) -> None:
    # e.g. a service key read from a secret file with its trailing newline
    with client() as http, pytest.raises(httpx.LocalProtocolError, match="apikey"):
        http.post(keepalive.url, json=1, headers={"X-Before": "a", "apikey": value, "X-After": "b"})
    assert keepalive.requests == []


def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    with serving("silent") as server, client(read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(server.url, json=1)
        assert len(server.requests) == 1


def test_a_server_that_never_reads_is_a_write_timeout() -> None:
    with serving("unread") as server, client(write=0.2) as http:
        with pytest.raises(httpx.WriteTimeout):
            # far more than loopback's socket buffers hold
            http.post(server.url, content=b"x" * (64 * 1024 * 1024))
        assert server.connections == 1


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with client() as http, pytest.raises(httpx.ConnectError):
            http.post(f"http://127.0.0.1:{port}/", json=1)


@pytest.mark.parametrize("mode", ["chunked", "gzip"])
def test_chunked_and_compressed_answers_arrive_decoded(mode: str) -> None:
    with serving(mode) as server:
        with client() as http:
            assert http.post(server.url, json=[1, "二"]).json() == {"echo": [1, "二"]}
            assert http.post(server.url, json=2).json() == {"echo": 2}
        assert server.connections == 1


def test_many_threads_share_the_transport_and_each_gets_its_own_answer(
    keepalive: Server,
) -> None:
    # room for every thread's connection, kept however slow this machine is
    transport = KeepAliveTransport(max_idle=20, keepalive_expiry=600)
    with httpx.Client(transport=transport, timeout=10) as http:

        def call(n: int) -> bool:
            marker = str(uuid.uuid4())
            answer = http.post(keepalive.url, json={"n": n, "marker": marker})
            return bool(answer.json() == {"echo": {"n": n, "marker": marker}})

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(400)))

        assert all(results)
        assert len(keepalive.requests) == 400
        # a connection is opened only when every pooled one is busy: one per thread at most
        assert keepalive.connections <= 16
        assert transport.idle_connections() == keepalive.connections


def test_at_most_max_idle_connections_are_kept() -> None:
    transport = KeepAliveTransport(max_idle=2)
    # the server answers only once six requests are in: six connections at once
    with (
        serving("gather") as server,
        httpx.Client(transport=transport, timeout=20) as http,
        ThreadPoolExecutor(6) as pool,
    ):
        list(pool.map(lambda n: http.post(server.url, json=n), range(6)))

        assert server.connections == 6
        assert transport.idle_connections() == 2


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_is_verified_and_kept_alive(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_file, key_file)
    with serving("keep-alive") as server:
        server.socket = server_side.wrap_socket(server.socket, server_side=True)
        url = f"https://127.0.0.1:{server.server_address[1]}"
        trusting = ssl.create_default_context(cafile=str(cert_file))
        with httpx.Client(transport=KeepAliveTransport(ssl_context=trusting)) as http:
            answers = [http.post(url, json=n).json() for n in range(3)]
        # the default context (httpx's: certifi's roots) does not trust a self-signed server
        with (
            httpx.Client(transport=KeepAliveTransport()) as http,
            pytest.raises(httpx.ConnectError),
        ):
            http.post(url, json=1)

    assert answers == [{"echo": n} for n in range(3)]
    # three requests on one connection (the refused handshake never reached a handler)
    assert server.connections == 1


def test_the_store_reports_an_unreachable_gateway_as_database_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        store = JobStore(f"http://127.0.0.1:{probe.getsockname()[1]}", "service-key")
        with pytest.raises(errors.DatabaseUnavailable) as raised:
            store.get_job(uuid.uuid4())
    assert raised.value.details == {"upstream": "ConnectError"}


def test_the_store_keeps_no_cookie_the_server_sets(keepalive: Server) -> None:
    store = JobStore(keepalive.url, "service-key")

    with store.client.postgrest.session:  # the store's httpx.Client: its pool closed after
        answers = [store.rpc("echo", {"n": n}) for n in range(2)]

    assert answers == [{"echo": {"n": 0}}, {"echo": {"n": 1}}]  # each answer set a=1 and b=2
    assert keepalive.cookies == [None, None]


def test_an_http10_answer_is_read_to_the_close_its_folded_header_joined_and_not_pooled() -> None:
    transport = KeepAliveTransport()
    with serving("http10-folded") as server:
        with httpx.Client(transport=transport) as http:
            answer = http.post(server.url, json=1)
            assert transport.idle_connections() == 0
            assert http.post(server.url, json=2).json() == {"echo": 2}
        assert server.connections == 2
    assert answer.json() == {"echo": 1}
    assert answer.headers["x-folded"] == "a b"
    assert answer.extensions["http_version"] == b"HTTP/1.0"


def test_an_answer_cut_short_is_a_protocol_error_and_the_request_is_not_resent() -> None:
    with serving("truncated") as server:
        with client() as http, pytest.raises(httpx.RemoteProtocolError, match="body"):
            http.post(server.url, json={"create": "once"})
        assert server.requests == [b'{"create":"once"}']


def test_bytes_after_the_answer_keep_its_connection_out_of_the_pool() -> None:
    # they would otherwise be read as the next request's answer: someone else's answer
    transport = KeepAliveTransport()
    with serving("trailing") as server:
        with httpx.Client(transport=transport) as http:
            answers = [http.post(server.url, json=n).json() for n in range(2)]
            assert transport.idle_connections() == 0
        assert server.connections == 2
    assert answers == [{"echo": 0}, {"echo": 1}]


def test_conflicting_content_lengths_are_a_protocol_error() -> None:
    with (
        serving("conflicting-length") as server,
        client() as http,
        pytest.raises(httpx.RemoteProtocolError, match="Content-Length"),
    ):
        http.post(server.url, json=1)


def test_a_chunked_answer_that_also_has_a_length_is_read_as_chunked_and_not_pooled() -> None:
    transport = KeepAliveTransport()
    with serving("chunked-with-length") as server:
        with httpx.Client(transport=transport) as http:
            answers = [http.post(server.url, json=n).json() for n in range(2)]
            assert transport.idle_connections() == 0
        assert server.connections == 2
    assert answers == [{"echo": 0}, {"echo": 1}]


@pytest.mark.parametrize(
    "mode", ["te-identity-last", "te-gzip-chunked", "te-xchunked", "te-chunked-twice"]
)
def test_a_transfer_coding_other_than_chunked_alone_is_a_protocol_error_and_never_pooled(
    mode: str,
) -> None:
    # the last line alone would say "identity" (the chunk framing handed on as the body),
    # "gzip, chunked" would hand on gzip, "xchunked" is not "chunked": h11 refuses them all
    transport = KeepAliveTransport()
    with serving(mode) as server, httpx.Client(transport=transport) as http:
        for n in range(2):
            with pytest.raises(httpx.RemoteProtocolError, match="Transfer-Encoding"):
                http.post(server.url, json=n)
            assert transport.idle_connections() == 0
        assert server.connections == 2


def test_chunked_in_any_case_and_spacing_is_read_and_its_connection_kept() -> None:
    with serving("te-chunked-spaced") as server, client() as http:
        assert [http.post(server.url, json=n).json() for n in range(2)] == [
            {"echo": 0},
            {"echo": 1},
        ]
        assert server.connections == 1


@pytest.mark.parametrize("mode", ["connection-close-first", "http10-keep-alive-first"])
def test_connection_tokens_count_on_every_line_not_only_the_last(mode: str) -> None:
    # "close" on the first of two lines closes an HTTP/1.1 connection; "keep-alive" on the
    # first keeps an HTTP/1.0 one: the server keeps both open, the client decides
    transport = KeepAliveTransport()
    with serving(mode) as server, httpx.Client(transport=transport) as http:
        assert http.post(server.url, json=0).json() == {"echo": 0}
        kept = mode == "http10-keep-alive-first"
        assert transport.idle_connections() == int(kept)
        assert http.post(server.url, json=1).json() == {"echo": 1}
        assert server.connections == (1 if kept else 2)


def test_a_chunked_answer_with_trailers_is_read_whole_and_its_connection_reused() -> None:
    with serving("chunked-trailers") as server, client() as http:
        answers = [http.post(server.url, json={"n": n}) for n in range(3)]
        assert [a.json() for a in answers] == [{"echo": {"n": n}} for n in range(3)]
        assert "x-trailer" not in answers[0].headers  # trailers are dropped, as httpcore does
        assert server.connections == 1


@pytest.mark.parametrize("mode", sorted(TRAILER_FLOODS))
def test_a_trailer_longer_than_a_head_may_be_is_a_protocol_error(mode: str) -> None:
    transport = KeepAliveTransport()
    with serving(mode) as server, httpx.Client(transport=transport) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="trailer"):
            http.post(server.url, json=1)
        assert transport.idle_connections() == 0


@pytest.mark.parametrize(
    ("method", "path", "status"), [("HEAD", "/", 200), ("GET", "/204", 204), ("GET", "/304", 304)]
)
def test_an_answer_without_a_body_is_read_to_its_head_and_its_connection_reused(
    keepalive: Server, method: str, path: str, status: int
) -> None:
    # HEAD's and 304's Content-Length is the length a GET would have: no body follows it
    with client(read=5) as http:
        answer = http.request(method, keepalive.url + path)
        assert (answer.status_code, answer.content) == (status, b"")
        assert http.post(keepalive.url, json=1).json() == {"echo": 1}
        assert http.request(method, keepalive.url + path).status_code == status
    assert keepalive.connections == 1


def test_an_error_answer_sent_while_the_body_was_still_being_written_is_returned() -> None:
    # the server read the head, answered 413 and closed: the client's write fails on a reset,
    # yet the answer came first (httpcore returns it too). Far more than loopback's buffers
    # hold, so the write is still under way when the server closes.
    transport = KeepAliveTransport()
    with serving("too-large") as server, httpx.Client(transport=transport) as http:
        answer = http.post(server.url, content=b"x" * (64 * 1024 * 1024))
        assert (answer.status_code, answer.content) == (413, TOO_LARGE)
        assert transport.idle_connections() == 0
        assert server.connections == 1  # sent once, never again


def test_a_server_that_closes_without_an_answer_while_the_body_is_written_is_a_write_error() -> (
    None
):
    with serving("closes-unread") as server, client() as http:
        with pytest.raises(httpx.WriteError):
            http.post(server.url, content=b"x" * (64 * 1024 * 1024))
        assert server.connections == 1
