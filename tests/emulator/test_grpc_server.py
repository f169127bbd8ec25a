"""The emulator's own gRPC server (infra/local/tasks_emulator/grpc_server.py) as grpcio's
client sees it: statuses of malformed calls, messages larger than a flow-control window both
ways, calls from many clients at once, and a peer that does not speak HTTP/2."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import grpc
import hpack
import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from infra.local.tasks_emulator import EmulatorHandle, start_emulator
from infra.local.tasks_emulator.grpc_server import (
    CLOSE_GRACE_S,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_BLOCK_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    OUTGOING_HIGH_WATER,
    UnaryGrpcServer,
    UnaryMethod,
    _BlockDecoder,
)
from infra.local.tasks_emulator.model import QueuePb
from tests.emulator.target import LOCATION, http_task, make_client, new_queue

_GET_QUEUE = "/google.cloud.tasks.v2.CloudTasks/GetQueue"


def _raw_call(address: str, path: str, request: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    return caught.value


def test_a_method_the_emulator_does_not_offer_is_unimplemented(emulator: EmulatorHandle) -> None:
    error = _raw_call(emulator.address, "/google.cloud.tasks.v2.CloudTasks/GetIamPolicy", b"")

    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_request_that_does_not_parse_is_internal(emulator: EmulatorHandle) -> None:
    error = _raw_call(emulator.address, _GET_QUEUE, b"\xff\xff\xff")

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "Exception deserializing request!"


def test_an_error_message_beyond_ascii_arrives_as_it_was_raised(
    client: tasks_v2.CloudTasksClient,
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as caught:
        client.get_queue(name=f"{LOCATION}/queues/café 100%")

    assert "café 100%" in caught.value.message


def test_a_message_over_four_mib_is_resource_exhausted_and_the_connection_serves_on(
    client: tasks_v2.CloudTasksClient,
) -> None:
    name = new_queue(client, "big")
    huge = http_task("http://127.0.0.1:9/", body=b"x" * (MAX_MESSAGE_BYTES + 1))

    with pytest.raises(exceptions.ResourceExhausted):
        client.create_task(parent=name, task=huge)

    assert client.get_queue(name=name).name == name


def test_a_message_over_four_mib_is_refused_at_its_declared_length(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(client, "declared")
    request = tasks_v2.CreateTaskRequest.pb(
        tasks_v2.CreateTaskRequest(
            parent=name, task=http_task("http://127.0.0.1:9/", body=b"x" * (5 * 1024 * 1024))
        )
    ).SerializeToString()

    error = _raw_call(emulator.address, "/google.cloud.tasks.v2.CloudTasks/CreateTask", request)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        f"Received message larger than max ({len(request)} vs. {MAX_MESSAGE_BYTES})"
    )


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_a_compressed_request_is_inflated(
    emulator: EmulatorHandle, compression: grpc.Compression
) -> None:
    body = b"compressible " * 20_000
    with make_client(emulator.address) as setup:
        name = new_queue(setup, compression.name.lower())
        setup.pause_queue(name=name)
    channel = grpc.insecure_channel(emulator.address, compression=compression)
    with tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel)) as client:
        client.create_task(parent=name, task=http_task("http://127.0.0.1:9/", body=body))
        listed = client.list_tasks(
            request={"parent": name, "response_view": tasks_v2.Task.View.FULL}
        ).tasks

    assert [task.http_request.body for task in listed] == [body]


def test_a_compressed_request_inflating_past_four_mib_is_resource_exhausted(
    emulator: EmulatorHandle,
) -> None:
    bomb = zlib.compress(b"\x00" * (MAX_MESSAGE_BYTES + 1))  # about 4 KB
    block = _request_block(hpack.Encoder(), _GET_QUEUE, ("grpc-encoding", "deflate"))

    with _raw_peer(emulator) as sock:
        sock.sendall(
            _frame(_HEADERS, 0x4, 1, block)
            + _frame(_DATA, 0x1, 1, b"\x01" + len(bomb).to_bytes(4, "big") + bomb)
            + _frame(_GOAWAY, 0, 0, bytes(8))
        )
        frames = _read_all(sock)

    answers = _header_blocks(frames)
    assert [answer.get(b"grpc-status") for answer in answers] == [b"8"]  # RESOURCE_EXHAUSTED


def test_requests_and_answers_larger_than_a_flow_control_window_arrive_whole(
    client: tasks_v2.CloudTasksClient,
) -> None:
    name = new_queue(client, "held")
    client.pause_queue(name=name)
    bodies = [bytes([65 + i]) * 900_000 for i in range(3)]  # 2.7 MB answer, 64 KiB windows
    for body in bodies:
        client.create_task(parent=name, task=http_task("http://127.0.0.1:9/", body=body))

    listed = client.list_tasks(
        request={"parent": name, "response_view": tasks_v2.Task.View.FULL}
    ).tasks

    assert sorted(task.http_request.body for task in listed) == bodies


def test_calls_from_many_clients_at_once_are_all_answered(emulator: EmulatorHandle) -> None:
    with make_client(emulator.address) as setup:
        name = new_queue(setup, "shared")
    answers: list[str] = []
    lock = threading.Lock()

    def calls() -> None:
        with make_client(emulator.address) as own:
            for _ in range(20):
                got = own.get_queue(name=name).name
                with lock:
                    answers.append(got)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [name] * 160


def test_a_peer_that_does_not_speak_http2_gets_a_goaway_and_the_server_serves_on(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    with socket.create_connection((emulator.host, emulator.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk

    frames = _frames(received)
    assert frames[0][0] == _SETTINGS  # the server's preface
    assert _goaway_code(frames) == 0x1  # PROTOCOL_ERROR
    assert new_queue(client, "after").endswith("/after")


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((frame_type, flags))
        + (stream_id.to_bytes(4, "big") + payload)
    )


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    frames, offset = [], 0
    while offset + 9 <= len(data):
        size = int.from_bytes(data[offset : offset + 3], "big")
        frames.append((data[offset + 3], data[offset + 4], data[offset + 9 : offset + 9 + size]))
        offset += 9 + size
    return frames


def test_headers_after_a_request_ended_end_the_connection_and_the_method_runs_once(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(client, "once")
    request = tasks_v2.CreateTaskRequest.pb(
        tasks_v2.CreateTaskRequest(parent=name, task=http_task("http://127.0.0.1:9/"))
    ).SerializeToString()
    headers = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/google.cloud.tasks.v2.CloudTasks/CreateTask"),
            (":authority", emulator.address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    with socket.create_connection((emulator.host, emulator.port), timeout=10) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            # SETTINGS_INITIAL_WINDOW_SIZE 0: the answer's message waits on flow control, so
            # the call is still open when the second block comes
            + _frame(0x4, 0, 0, b"\x00\x04\x00\x00\x00\x00")
            + _frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
            + _frame(0x0, 0x1, 1, b"\x00" + len(request).to_bytes(4, "big") + request)
            + _frame(0x1, 0x5, 1, b"")  # HEADERS again, END_STREAM: the stream had ended
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    frames = _frames(received)

    goaway = [f for f in frames if f[0] == 0x7]
    assert [f[0] for f in frames if f[0] in (0x0, 0x1)] == [0x1]  # Response-Headers, held DATA
    assert goaway and goaway[0][2][4:] == b"\x00\x00\x00\x01"  # PROTOCOL_ERROR
    assert len(client.list_tasks(parent=name).tasks) == 1


# --- raw HTTP/2 peers (RFC 9113), for what grpcio's client never sends --------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY = 0, 1, 3, 4, 5, 6, 7
_WINDOW_UPDATE, _CONTINUATION = 8, 9
_LIST_TASKS = "/google.cloud.tasks.v2.CloudTasks/ListTasks"


def _request_block(
    encoder: hpack.Encoder, path: str, *extra: tuple[str, str] | hpack.HeaderTuple
) -> bytes:
    """A gRPC request's header block (added to the encoder's table, as a client would)."""
    return encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "emulator"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )


def _message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@contextmanager
def _raw_peer(emulator: EmulatorHandle, *, receive_buffer: int = 0) -> Iterator[socket.socket]:
    """A connection that has sent its preface and empty SETTINGS."""
    sock = socket.socket()
    if receive_buffer:  # set before connecting: the window the kernel offers follows it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    with sock:
        sock.connect((emulator.host, emulator.port))
        sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0, b""))
        yield sock


def _read_all(sock: socket.socket) -> list[tuple[int, int, bytes]]:
    """Every frame until the server closes the connection (bounded by the socket timeout)."""
    received = b""
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return _frames(received)


def _goaway_code(frames: list[tuple[int, int, bytes]]) -> int | None:
    goaways = [payload for frame_type, _, payload in frames if frame_type == _GOAWAY]
    return struct.unpack(">I", goaways[0][4:8])[0] if goaways else None


def _header_blocks(frames: list[tuple[int, int, bytes]]) -> list[dict[bytes, bytes]]:
    """The server's header blocks (each one HEADERS frame: its answers are small), decoded."""
    decoder = hpack.Decoder()
    return [
        {bytes(name): bytes(value) for name, value in decoder.decode(payload, raw=True)}
        for frame_type, _, payload in frames
        if frame_type == _HEADERS
    ]


def test_a_closing_connection_whose_peer_never_reads_has_its_input_drained_and_is_closed(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(client, "unread")
    client.pause_queue(name=name)
    for letter in b"ABCDEFGHIJ":  # a 9 MB answer: more than the kernel's buffers take
        body = bytes([letter]) * 900_000
        client.create_task(parent=name, task=http_task("http://127.0.0.1:9/", body=body))
    listing = tasks_v2.ListTasksRequest.pb(
        tasks_v2.ListTasksRequest(parent=name, response_view=tasks_v2.Task.View.FULL)
    ).SerializeToString()
    big_windows = struct.pack(">HI", 0x4, 2**31 - 1)
    junk = _frame(0xFA, 0, 0, b"\x00" * 16_000)  # an unknown frame type: ignored if read
    sent_after_goaway = 0

    with _raw_peer(emulator, receive_buffer=4096) as sock:
        sock.sendall(
            _frame(_SETTINGS, 0, 0, big_windows)
            + _frame(_WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65_535).to_bytes(4, "big"))
            + _frame(_HEADERS, 0x4, 1, _request_block(hpack.Encoder(), _LIST_TASKS))
            + _frame(_DATA, 0x1, 1, _message(listing))
            # a client never pushes: GOAWAY PROTOCOL_ERROR, queued behind the answer
            + _frame(_PUSH_PROMISE, 0x4, 1, b"\x00\x00\x00\x02")
        )
        # The peer never reads. The server reads what it sends (else the sends would stop
        # with the kernel's buffers full: TimeoutError) until it closes the connection
        # (CLOSE_GRACE_S after the GOAWAY): the sends then fail with a reset.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            give_up = time.monotonic() + CLOSE_GRACE_S + 20
            while time.monotonic() < give_up:
                sock.sendall(junk)
                sent_after_goaway += len(junk)

    assert sent_after_goaway > 0
    assert new_queue(client, "after-unread").endswith("/after-unread")


def test_a_peer_that_stops_reading_stops_being_read_and_its_answers_stay_bounded(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    pings = _frame(_PING, 0, 0, b"12345678") * 4096  # 69 KB sent, 69 KB of PING ACKs owed
    sent = 0

    with _raw_peer(emulator, receive_buffer=4096) as sock:
        sock.settimeout(2)
        with pytest.raises(TimeoutError):  # its sends stall: the server has stopped reading
            while sent < 32 * 1024 * 1024:
                sock.sendall(pings)
                sent += len(pings)
        held = [len(connection.outgoing) for connection in emulator._server._connections]

    assert max(held) <= OUTGOING_HIGH_WATER + 256 * 1024  # one read's answers past the mark
    assert new_queue(client, "after-stall").endswith("/after-stall")


def test_a_header_block_continued_past_its_cap_ends_the_connection_with_enhance_your_calm(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    continuation = _frame(_CONTINUATION, 0, 1, b"\x00" * 16_384)  # never END_HEADERS
    frames_needed = MAX_HEADER_BLOCK_BYTES // 16_384 + 1

    with _raw_peer(emulator) as sock:
        sock.sendall(_frame(_HEADERS, 0, 1, _request_block(hpack.Encoder(), _GET_QUEUE)))
        sock.sendall(continuation * frames_needed)
        frames = _read_all(sock)

    assert _goaway_code(frames) == 0xB  # ENHANCE_YOUR_CALM
    assert new_queue(client, "after-flood").endswith("/after-flood")


def test_the_server_advertises_its_concurrent_streams_and_refuses_one_past_them(
    emulator: EmulatorHandle,
) -> None:
    encoder = hpack.Encoder()
    opened = b"".join(  # requests begun and never ended: each stream stays open
        _frame(_HEADERS, 0x4, stream_id, _request_block(encoder, _GET_QUEUE))
        for stream_id in range(1, 2 * MAX_CONCURRENT_STREAMS + 3, 2)
    )

    with _raw_peer(emulator) as sock:
        sock.sendall(opened)
        sock.shutdown(socket.SHUT_WR)  # then the peer is done (its GOAWAY would keep them open)
        frames = _read_all(sock)

    settings = frames[0][2]
    advertised = {settings[i : i + 2]: settings[i + 2 : i + 6] for i in range(0, len(settings), 6)}
    resets = [payload for frame_type, _, payload in frames if frame_type == _RST_STREAM]
    assert int.from_bytes(advertised[b"\x00\x03"], "big") == MAX_CONCURRENT_STREAMS
    assert resets == [b"\x00\x00\x00\x07"]  # REFUSED_STREAM, for the one stream past them


def _blocking_server(
    release: threading.Event, entered: threading.Event | None = None, **options: int
) -> tuple[UnaryGrpcServer, list[bytes]]:
    """A server of its own whose one method (``entered``) waits for ``release``: the serving
    thread is held while a peer's bytes queue up, so they arrive in one read."""
    seen: list[bytes] = []

    def hold(request: QueuePb) -> QueuePb:
        if entered is not None:
            entered.set()
        release.wait(10)
        seen.append(request.name.encode())
        return request

    methods = {_GET_QUEUE: UnaryMethod(hold, QueuePb)}
    server = UnaryGrpcServer("127.0.0.1", 0, methods, logger=logging.getLogger(__name__), **options)
    server.start()
    return server, seen


def _peer_of(server: UnaryGrpcServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0, b""))
    return sock


def test_data_past_the_window_the_server_gave_ends_the_connection_with_flow_control_error() -> None:
    release, entered = threading.Event(), threading.Event()
    server, _ = _blocking_server(release, entered)
    encoder = hpack.Encoder()
    held_call = _frame(_HEADERS, 0x4, 1, _request_block(encoder, _GET_QUEUE)) + _frame(
        _DATA, 0x1, 1, _message(QueuePb(name="held").SerializeToString())
    )
    # 80 KiB on stream 3 with no WINDOW_UPDATE seen: past the 65,535-byte initial window
    blind = _frame(_HEADERS, 0x4, 3, _request_block(encoder, _GET_QUEUE)) + b"".join(
        _frame(_DATA, 0, 3, b"\x00" * 16_384) for _ in range(5)
    )
    try:
        with _peer_of(server) as sock:
            sock.sendall(held_call)
            assert entered.wait(10)
            sock.sendall(blind)  # queued whole while the serving thread is held
            release.set()
            frames = _read_all(sock)
    finally:
        release.set()
        server.stop()

    assert _goaway_code(frames) == 0x3  # FLOW_CONTROL_ERROR


def test_a_call_whose_bytes_pass_the_connections_buffer_cap_is_resource_exhausted() -> None:
    release = threading.Event()
    release.set()
    server, seen = _blocking_server(release, max_buffered_bytes=40_000)
    encoder = hpack.Encoder()
    declared = (1_000_000).to_bytes(4, "big")  # each request far from whole
    partial = b"".join(
        _frame(_HEADERS, 0x4, stream_id, _request_block(encoder, _GET_QUEUE))
        + _frame(_DATA, 0, stream_id, b"\x00" + declared + b"\x00" * 15_000)
        for stream_id in (1, 3, 5)
    )
    try:
        with _peer_of(server) as sock:
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)  # the two calls left open would outlast a GOAWAY
            frames = _read_all(sock)
    finally:
        server.stop()

    answers = _header_blocks(frames)
    assert [answer.get(b"grpc-status") for answer in answers] == [b"8"]  # RESOURCE_EXHAUSTED
    assert b"buffered" in answers[0][b"grpc-message"]
    assert seen == []


@pytest.mark.parametrize("host", ["::", "localhost"])
def test_a_host_that_names_both_families_is_served_on_ipv4_and_ipv6(host: str) -> None:
    with start_emulator(host, 0) as emulator:
        for address, queue in (
            (f"127.0.0.1:{emulator.port}", "v4"),
            (f"[::1]:{emulator.port}", "v6"),
        ):
            with make_client(address) as tasks_client:
                assert new_queue(tasks_client, queue).endswith(f"/{queue}")


@pytest.mark.parametrize("size", [MAX_METADATA_BYTES + 1, 70_000])  # 70 KB: CONTINUATIONs
def test_metadata_past_the_advertised_limit_is_resource_exhausted_and_the_channel_serves_on(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient, size: int
) -> None:
    name = new_queue(client, "metadata")
    request = tasks_v2.GetQueueRequest.pb(tasks_v2.GetQueueRequest(name=name)).SerializeToString()
    with grpc.insecure_channel(emulator.address) as channel:
        call = channel.unary_unary(_GET_QUEUE)
        call(request, metadata=[("x-big", "v" * 9_000)], timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=[("x-big", "v" * size)], timeout=10)
        after = call(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after


def test_a_call_refused_for_its_metadata_keeps_the_header_table_in_step(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(client, "in-step")
    request = tasks_v2.GetQueueRequest.pb(tasks_v2.GetQueueRequest(name=name)).SerializeToString()
    encoder = hpack.Encoder()
    # the first block adds entries to the peer's table (an indexed x-small among them) that
    # the second block refers to
    oversized = _request_block(
        encoder,
        _GET_QUEUE,
        ("x-small", "kept"),
        hpack.NeverIndexedHeaderTuple("x-big", "v" * (MAX_METADATA_BYTES + 1)),
    )
    following = _request_block(encoder, _GET_QUEUE, ("x-small", "kept"))
    assert len(following) < 20  # all of it indexed
    first, rest = oversized[:16_384], oversized[16_384:]

    with _raw_peer(emulator) as sock:
        sock.sendall(
            _frame(_HEADERS, 0, 1, first)
            + _frame(_CONTINUATION, 0x4, 1, rest)
            + _frame(_DATA, 0x1, 1, _message(request))
            + _frame(_HEADERS, 0x4, 3, following)
            + _frame(_DATA, 0x1, 3, _message(request))
            + _frame(_GOAWAY, 0, 0, bytes(8))
        )
        frames = _read_all(sock)

    statuses = [block.get(b"grpc-status") for block in _header_blocks(frames)]
    assert statuses == [b"8", None, b"0"]  # RESOURCE_EXHAUSTED; then headers, OK trailers
    assert _goaway_code(frames) is None


_OPEN_STREAM_1 = _frame(_HEADERS, 0x4, 1, _request_block(hpack.Encoder(), _GET_QUEUE))


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (_frame(_PING, 0, 0, b"abc"), 0x6),  # a PING is 8 bytes: FRAME_SIZE_ERROR
        (_frame(_PING, 0, 1, b"12345678"), 0x1),  # PING on a stream: PROTOCOL_ERROR
        (_frame(_RST_STREAM, 0, 0, bytes(4)), 0x1),  # RST_STREAM on stream 0
        (_frame(_RST_STREAM, 0, 5, bytes(4)), 0x1),  # RST_STREAM on an idle stream
        (_frame(_SETTINGS, 0, 1, b""), 0x1),  # SETTINGS on a stream
        (_frame(_SETTINGS, 0x1, 0, bytes(6)), 0x6),  # SETTINGS ACK with a payload
        (_frame(_SETTINGS, 0, 0, struct.pack(">HI", 0x2, 2)), 0x1),  # ENABLE_PUSH 2
        (_frame(_DATA, 0x1, 7, _message(b"")), 0x1),  # DATA on an idle stream
        (_frame(_GOAWAY, 0, 1, bytes(8)), 0x1),  # GOAWAY on a stream
        (_frame(_WINDOW_UPDATE, 0, 0, bytes(4)), 0x1),  # a zero increment
        (_frame(_WINDOW_UPDATE, 0, 9, struct.pack(">I", 1)), 0x1),  # on an idle stream
        (_frame(_HEADERS, 0x24, 1, b"\x00\x00"), 0x6),  # PRIORITY flag, no room for it
        (_frame(_GOAWAY, 0, 0, bytes(4)), 0x6),  # a GOAWAY is at least 8 bytes
    ],
)
def test_frames_that_break_rfc_9113_end_the_connection_with_its_error_code(
    emulator: EmulatorHandle, frames: bytes, code: int
) -> None:
    with _raw_peer(emulator) as sock:
        sock.sendall(frames)
        received = _read_all(sock)

    assert _goaway_code(received) == code


def test_a_stream_window_grown_past_its_maximum_resets_that_stream_only(
    emulator: EmulatorHandle,
) -> None:
    increment = _frame(_WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1))

    with _raw_peer(emulator) as sock:
        sock.sendall(_OPEN_STREAM_1 + increment + _frame(_GOAWAY, 0, 0, bytes(8)))
        received = _read_all(sock)

    resets = [(flags, payload) for frame_type, flags, payload in received if frame_type == 3]
    assert resets == [(0, b"\x00\x00\x00\x03")]  # RST_STREAM FLOW_CONTROL_ERROR
    assert _goaway_code(received) is None


def _held_answer_peer(emulator: EmulatorHandle, queue: str) -> socket.socket:
    """A peer that gave the server no window (SETTINGS_INITIAL_WINDOW_SIZE 0) and made one
    GetQueue call on stream 1 for ``queue``: its answer's message is held by flow control."""
    sock = socket.create_connection((emulator.host, emulator.port), timeout=10)
    sock.sendall(
        _PREFACE
        + _frame(_SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0))
        + _frame(_HEADERS, 0x4, 1, _request_block(hpack.Encoder(), _GET_QUEUE))
        + _frame(_DATA, 0x1, 1, _message(QueuePb(name=queue).SerializeToString()))
    )
    return sock


def test_after_the_peers_goaway_its_open_call_is_answered_whole_then_the_connection_closes(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    with _held_answer_peer(emulator, new_queue(client, "goaway")) as sock:
        time.sleep(0.2)  # the answer's headers are out, its message held
        # RFC 9113 6.8: a graceful GOAWAY; stream 1 (<= its last id) must still complete
        sock.sendall(_frame(_GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
        time.sleep(0.1)
        sock.sendall(_frame(_WINDOW_UPDATE, 0, 1, struct.pack(">I", 65_535)))
        frames = _read_all(sock)  # until the server closes

    kinds = [frame_type for frame_type, _, _ in frames if frame_type in (_DATA, _HEADERS)]
    assert kinds == [_HEADERS, _DATA, _HEADERS]  # headers, the held message, trailers
    assert _header_blocks(frames)[-1].get(b"grpc-status") == b"0"
    assert _goaway_code(frames) is None


def test_data_after_a_requests_end_resets_that_stream(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    with _held_answer_peer(emulator, new_queue(client, "late-data")) as sock:
        time.sleep(0.2)
        sock.sendall(_frame(_DATA, 0x1, 1, b"late"))  # stream 1 is half-closed (remote)
        sock.shutdown(socket.SHUT_WR)
        frames = _read_all(sock)

    resets = [payload for frame_type, _, payload in frames if frame_type == _RST_STREAM]
    assert resets == [struct.pack(">I", 0x5)]  # STREAM_CLOSED, a stream error
    assert _goaway_code(frames) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "GET"), (":scheme", "http"), (":path", _GET_QUEUE)],
        [(":method", "POST"), (":scheme", "http")],  # no :path
    ],
)
def test_a_request_that_is_not_a_grpc_post_is_reset_and_the_connection_serves_on(
    emulator: EmulatorHandle, headers: list[tuple[str, str]]
) -> None:
    encoder = hpack.Encoder()
    malformed = encoder.encode([*headers, ("content-type", "application/grpc")])
    good = _request_block(encoder, _GET_QUEUE)

    with _raw_peer(emulator) as sock:
        sock.sendall(
            _frame(_HEADERS, 0x5, 1, malformed)
            + _frame(_HEADERS, 0x4, 3, good)
            + _frame(_DATA, 0x1, 3, _message(QueuePb(name="x").SerializeToString()))
        )
        sock.shutdown(socket.SHUT_WR)
        frames = _read_all(sock)

    resets = [payload for frame_type, _, payload in frames if frame_type == _RST_STREAM]
    assert resets == [struct.pack(">I", 0x1)]  # PROTOCOL_ERROR for stream 1 only
    assert [block.get(b"grpc-status") for block in _header_blocks(frames)][-1] is not None
    assert _goaway_code(frames) is None


# --- header blocks decoded from memory (grpc_server._BlockDecoder) --------------------------


def _path_indexed(path: str) -> bytes:
    """``:path`` as a literal with incremental indexing (RFC 7541 6.2.1, the static table's
    name 4): it becomes the dynamic table's first entry, index 62."""
    return b"\x44" + bytes((len(path),)) + path.encode()


#: the rest of a gRPC request's headers, none of them added to the table: ``:method POST``
#: and ``:scheme http`` (static 3 and 6), content-type and te as literals without indexing
_REST_OF_REQUEST = (
    b"\x83\x86"
    + b"\x0f\x10"
    + bytes((len(b"application/grpc"),))
    + b"application/grpc"
    + b"\x00\x02te\x08trailers"
)
#: ``:path`` by reference to the dynamic table's first entry (index 62): the same bytes name
#: whatever path the table holds there
_PATH_BY_REFERENCE = b"\xbe" + _REST_OF_REQUEST


def test_the_same_header_block_after_the_table_changed_names_what_the_table_now_holds(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(client, "table-changed")
    request = _message(
        tasks_v2.GetQueueRequest.pb(tasks_v2.GetQueueRequest(name=name)).SerializeToString()
    )
    unknown = "/google.cloud.tasks.v2.CloudTasks/NoSuchMethod"

    with _raw_peer(emulator) as sock:
        sock.sendall(
            _frame(_HEADERS, 0x4, 1, _path_indexed(_GET_QUEUE) + _REST_OF_REQUEST)
            + _frame(_DATA, 0x1, 1, request)
            + _frame(_HEADERS, 0x4, 3, _PATH_BY_REFERENCE)  # GetQueue: remembered
            + _frame(_DATA, 0x1, 3, request)
            + _frame(_HEADERS, 0x4, 5, _PATH_BY_REFERENCE)  # GetQueue again
            + _frame(_DATA, 0x1, 5, request)
            # index 62 is now the unknown method, GetQueue 63
            + _frame(_HEADERS, 0x4, 7, _path_indexed(unknown) + _REST_OF_REQUEST)
            + _frame(_DATA, 0x1, 7, request)
            + _frame(_HEADERS, 0x4, 9, _PATH_BY_REFERENCE)  # the same bytes: the unknown one
            + _frame(_DATA, 0x1, 9, request)
            + _frame(_GOAWAY, 0, 0, bytes(8))
        )
        frames = _read_all(sock)

    statuses = [
        block[b"grpc-status"] for block in _header_blocks(frames) if b"grpc-status" in block
    ]
    assert statuses == [b"0", b"0", b"0", b"12", b"12"]  # OK x3, then UNIMPLEMENTED x2
    assert _goaway_code(frames) is None


def test_a_header_block_seen_before_on_an_unchanged_table_is_decoded_from_memory() -> None:
    decoder = _BlockDecoder()
    first = decoder.decode(_path_indexed(_GET_QUEUE) + _REST_OF_REQUEST)  # adds to the table

    again = decoder.decode(_PATH_BY_REFERENCE)

    assert dict(again) == dict(first)
    assert decoder.decode(_PATH_BY_REFERENCE) is again
    assert decoder.decode(_path_indexed(_LIST_TASKS) + _REST_OF_REQUEST) is not again
    assert dict(decoder.decode(_PATH_BY_REFERENCE))[b":path"] == _LIST_TASKS.encode()


def test_remembered_blocks_decode_as_a_plain_decoder_does_through_every_change_of_the_table() -> (
    None
):
    # One encoder's blocks, decoded by _BlockDecoder and by a plain hpack.Decoder side by side:
    # repeated blocks (from memory), blocks that add and refer to what they add, evictions
    # (entries larger than a small table), size updates (up, down, to zero, to the same size),
    # never-indexed fields, and the same repeated block after each of those changes.
    encoder = hpack.Encoder()
    plain = hpack.Decoder()
    remembering = _BlockDecoder()
    usual = [(b":path", b"/CreateTask"), (b"x-goog-request-params", b"parent=projects/p")]
    steps: list[tuple[int | None, list[tuple[bytes, bytes]] | list[hpack.HeaderTuple]]] = [
        (None, usual),
        (None, usual),
        (None, [*usual, (b"x-new", b"1"), (b"x-new", b"1")]),  # adds, then refers to it
        (None, usual),
        (None, [(b"x-evicting", b"v" * 3000)]),  # evicts every entry of the 4096-byte table
        (None, usual),
        (256, usual),
        (256, usual),
        (0, usual),
        (None, usual),
        (4096, usual),
        (None, [hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer t"), *usual]),
        (None, [hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer t"), *usual]),
        (None, usual),
    ]
    for size, headers in steps * 3:
        if size is not None:
            encoder.header_table_size = size
        block = encoder.encode(headers)
        expected = plain.decode(block, raw=True)
        assert remembering.decode(block) == expected
        assert remembering._table.dynamic_entries == plain.header_table.dynamic_entries
