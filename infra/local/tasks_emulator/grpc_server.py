"""The emulator's gRPC endpoint: unary methods over HTTP/2, served by one thread.

Cloud Tasks' API is all unary calls, and the engine answers each under its one lock in well
under a millisecond, so one thread can serve every connection: it reads a request's frames,
runs the method and writes the answer, with no hand-off to another thread. grpcio's sync
server made four for each call (its polling thread takes the call, a pool thread asks for the
message, the polling thread receives it, the pool thread runs the method), each a wake-up and,
on a busy machine, a wait for the GIL: about half a millisecond between the CreateTask bytes'
arrival and the task's dispatch (scripts/bench_pickup.py's hop table). Its asyncio server was
no faster (one poller thread more), and the `h2` library, tried first, cost 0.3 ms of CPU per
call in its general state machines.

The wire is gRPC over HTTP/2 as grpc/grpc's doc/PROTOCOL-HTTP2.md specifies it, on HTTP/2 as
RFC 9113 does (frames, SETTINGS and PING answered, flow control both ways, CONTINUATION) with
the `hpack` library for header blocks (one seen before on an unchanged table is decoded
from memory, `_BlockDecoder`): a request is one Length-Prefixed-Message (compressed
flag 0, 4-byte big-endian length, the message); the answer is Response-Headers (``:status
200``, ``content-type: application/grpc``), one message and Trailers (``grpc-status`` 0), or
for an error Trailers-Only (one header block with ``grpc-status`` and the percent-encoded
``grpc-message``). The server's header blocks are literals never added to the HPACK dynamic
table, so they need no encoder state. Where grpcio's server answers a malformed call in a way
of its own, this one answers the same status: UNIMPLEMENTED for an unknown method ("Method not
found!") or a call without a message, INTERNAL for a message that does not parse ("Exception
deserializing request!"), RESOURCE_EXHAUSTED for a message over 4 MiB (grpcio's default
receive limit), UNKNOWN for a method that raised. A compressed request (grpc-encoding gzip
or deflate, as grpcio's client sends on a channel with compression) is inflated with zlib;
answers go uncompressed, which a gRPC client always accepts. A connection that breaks the
HTTP/2 rules gets a GOAWAY naming the error and is closed (within CLOSE_GRACE_S, whether or
not its peer reads). What a peer can make a connection hold is bounded: header blocks
(MAX_HEADER_BLOCK_BYTES), open streams (MAX_CONCURRENT_STREAMS, advertised), metadata
(MAX_METADATA_BYTES, advertised; past it that call is RESOURCE_EXHAUSTED, as with grpcio),
request bytes (MAX_BUFFERED_BYTES), unsent output (past OUTGOING_HIGH_WATER the connection is
not read until its peer takes some), and DATA past the window given is FLOW_CONTROL_ERROR.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import grpc
import hpack
from hpack.table import HeaderTable

#: grpcio's default max_receive_message_length: a larger message is RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_PREFIX_BYTES = 5  #: a Length-Prefixed-Message's compressed flag and length
_READ_BYTES = 256 * 1024
_GRPC_CONTENT_TYPE = b"application/grpc"
#: grpc-message's Percent-Byte-Unencoded: space and VCHAR except "%" (PROTOCOL-HTTP2.md)
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)

# RFC 9113: the client's connection preface, frame types, flags, settings, error codes.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEAD = struct.Struct(">HBBBI")  #: length (24 bits: 16 + 8), type, flags, stream id
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY = 0, 1, 3, 4, 5, 6, 7
_WINDOW_UPDATE, _CONTINUATION = 8, 9
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_SETTINGS_ENABLE_PUSH, _SETTINGS_MAX_CONCURRENT_STREAMS = 0x2, 0x3
_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
_SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
_NO_ERROR, _PROTOCOL_ERROR, _INTERNAL_ERROR, _FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
_STREAM_CLOSED, _FRAME_SIZE_ERROR, _REFUSED_STREAM = 0x5, 0x6, 0x7
_COMPRESSION_ERROR, _ENHANCE_YOUR_CALM = 0x9, 0xB
_DEFAULT_WINDOW = 65_535
_DEFAULT_MAX_FRAME = 16_384  #: both sides' SETTINGS_MAX_FRAME_SIZE until told otherwise
_MAX_WINDOW = 2**31 - 1
#: the largest header block (HEADERS and its CONTINUATIONs, compressed) a peer may send: RFC
#: 9113 bounds neither a block nor its CONTINUATION frames, so without a cap a peer could
#: make the server buffer without end (section 10.5.1: ENHANCE_YOUR_CALM)
MAX_HEADER_BLOCK_BYTES = 256 * 1024  # as _MAX_DECODED_BYTES: a block of literals decodes whole
#: SETTINGS_MAX_CONCURRENT_STREAMS advertised: RFC 9113 6.5.2 recommends no fewer than 100;
#: a stream past it is refused (RST_STREAM REFUSED_STREAM, which the client may
#: retry as never processed, RFC 9113 8.7)
MAX_CONCURRENT_STREAMS = 100
#: request bytes a connection may hold at once across its calls not yet answered: this server
#: gives flow-control window back as soon as a request's bytes arrive, so without this cap
#: a peer could have MAX_CONCURRENT_STREAMS requests of MAX_MESSAGE_BYTES each buffered; the
#: call whose bytes pass it is answered RESOURCE_EXHAUSTED
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
#: SETTINGS_MAX_HEADER_LIST_SIZE advertised, and the decoded size (RFC 7541 4.1: name, value
#: and 32 per header) past which a call is RESOURCE_EXHAUSTED, as grpcio's server answers
#: (its hard metadata limit, 16 KiB by default)
MAX_METADATA_BYTES = 16 * 1024
#: a block decoding to more than this ends the connection (ENHANCE_YOUR_CALM): hpack stops
#: decoding there, so its table would no longer match the peer's; a 256 KiB block of indexed
#: fields could otherwise decode to 1 GiB
_MAX_DECODED_BYTES = 256 * 1024
#: a connection whose unsent output is larger than this is not read until the peer takes
#: some: a peer that sends (PINGs, calls) and never reads would otherwise grow it without end
OUTGOING_HIGH_WATER = 1024 * 1024
#: received bytes given back (WINDOW_UPDATE) once this many have gathered, per window
_WINDOW_UPDATE_AT = 32_768
#: how long a closing connection (our GOAWAY sent, or the peer's received and its calls all
#: answered) may wait for its peer to take the rest of its output before it is closed anyway
CLOSE_GRACE_S = 1.0

Headers = Iterable[hpack.HeaderTuple]  #: a decoded header block (raw: bytes)


class RpcError(Exception):
    """What a method raises to end its call with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class UnaryMethod:
    """A unary method: ``behaviour(request) -> response`` over raw protobuf messages;
    `RpcError` (or a subclass) ends the call with its status."""

    behaviour: Callable[[Any], Any]
    request_class: Any  #: a protobuf message class (its ``FromString`` parses the request)


class _ConnectionError(Exception):
    """The peer broke the HTTP/2 rules: GOAWAY with this code, then close."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# --- HPACK literals (RFC 7541) and frames ---------------------------------------------------


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: ``value`` in a ``prefix_bits`` prefix of a byte starting ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header "without indexing", new name (RFC 7541 6.2.2): no dynamic table entry."""
    return b"".join((b"\x00", _hpack_int(len(name), 7), name, _hpack_int(len(value), 7), value))


#: ``:status 200`` (static table index 8) and ``content-type: application/grpc`` (a literal
#: with the static table's name 31, without indexing)
_RESPONSE_HEADERS = (
    b"\x88" + _hpack_int(31, 4) + _hpack_int(len(_GRPC_CONTENT_TYPE), 7) + _GRPC_CONTENT_TYPE
)
#: ``:status 415`` (a literal with the static table's name 8, without indexing)
_NOT_GRPC_HEADERS = _hpack_int(8, 4) + _hpack_int(3, 7) + b"415"
_OK_TRAILERS = _literal(b"grpc-status", b"0")


def _status_block(code: grpc.StatusCode, message: str) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode())
    return block


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes | memoryview) -> bytes:
    size = len(payload)
    head = _FRAME_HEAD.pack(size >> 8, size & 0xFF, frame_type, flags, stream_id)
    return head + payload


#: the server's connection preface: SETTINGS, the defaults but for the streams it serves at once
_PREFACE_SETTINGS = _frame(
    _SETTINGS,
    0,
    0,
    struct.pack(
        ">HIHI",
        _SETTINGS_MAX_CONCURRENT_STREAMS,
        MAX_CONCURRENT_STREAMS,
        _SETTINGS_MAX_HEADER_LIST_SIZE,
        MAX_METADATA_BYTES,
    ),
)


def _header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS, and CONTINUATION frames if the block is larger than a frame."""
    first, rest = block[:max_frame], block[max_frame:]
    flags = (_END_STREAM if end_stream else 0) | (0 if rest else _END_HEADERS)
    frames = [_frame(_HEADERS, flags, stream_id, first)]
    while rest:
        chunk, rest = rest[:max_frame], rest[max_frame:]
        frames.append(_frame(_CONTINUATION, 0 if rest else _END_HEADERS, stream_id, chunk))
    return b"".join(frames)


def _unpadded(flags: int, payload: bytes) -> bytes:
    if not flags & _PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(_PROTOCOL_ERROR)
    return payload[1 : len(payload) - payload[0]]


def _over_size(body: bytearray, had: int) -> int:
    """The size of a request message over MAX_MESSAGE_BYTES, as grpcio reports it (the
    declared length, checked as soon as the prefix is whole, so the message is refused before
    it is buffered), or 0 while it is within the limit."""
    if had < _PREFIX_BYTES <= len(body):
        declared = int.from_bytes(body[1:_PREFIX_BYTES], "big")
        if declared > MAX_MESSAGE_BYTES:
            return declared
    if len(body) > _PREFIX_BYTES + MAX_MESSAGE_BYTES:  # more than a small prefix declared
        return len(body) - _PREFIX_BYTES
    return 0


#: zlib's wbits for a grpc-encoding: gzip's wrapper; "deflate" is zlib's wrapper in gRPC
#: core (its message_compress.c: deflateInit2 with window bits 15, 16 more for gzip)
_ZLIB_WBITS = {b"gzip": 31, b"deflate": 15}
_BAD_REQUEST = grpc.StatusCode.INTERNAL, "Exception deserializing request!"


def _request(method: UnaryMethod, call: _Call) -> Any:
    """The call's request message, or the (status, message) the call ends with."""
    body = call.body
    if len(body) < _PREFIX_BYTES:
        path = call.path.decode(errors="replace")
        return grpc.StatusCode.UNIMPLEMENTED, f'"{path}" requires exactly one request message.'
    if len(body) != _PREFIX_BYTES + int.from_bytes(body[1:_PREFIX_BYTES], "big"):
        return _BAD_REQUEST
    message = bytes(body[_PREFIX_BYTES:])
    if body[0]:
        inflated = _inflate(call.encoding, message)
        if isinstance(inflated, tuple):
            return inflated
        message = inflated
    try:
        return method.request_class.FromString(message)
    except Exception:  # protobuf's DecodeError, or a message it cannot take
        return _BAD_REQUEST


def _inflate(encoding: bytes, compressed: bytes) -> bytes | tuple[grpc.StatusCode, str]:
    """A compressed message (flag 1) as its grpc-encoding names it, at most 4 MiB of it."""
    wbits = _ZLIB_WBITS.get(encoding)
    if wbits is None:
        named = encoding.decode(errors="replace")
        return grpc.StatusCode.UNIMPLEMENTED, f"compressed messages ({named}) are refused"
    inflater = zlib.decompressobj(wbits)
    try:
        message = inflater.decompress(compressed, MAX_MESSAGE_BYTES + 1)
    except zlib.error:
        return _BAD_REQUEST
    if len(message) > MAX_MESSAGE_BYTES:  # inflated no further: a bomb costs no more
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max (over {MAX_MESSAGE_BYTES} inflated"
            f" vs. {MAX_MESSAGE_BYTES})",
        )
    if not inflater.eof or inflater.unused_data:
        return _BAD_REQUEST
    return message


# --- state ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Call:
    """A stream's request as it arrives, then its answer as it leaves."""

    send_window: int
    path: bytes = b""
    content_type: bytes = b""
    encoding: bytes = b"identity"
    metadata_size: int = 0  #: the request's header block decoded (RFC 7541 4.1 sizes)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  #: the client's END_STREAM came
    received: int = 0  #: bytes received and not yet given back to the stream's window
    #: the answer's message not yet sent (flow control), then its trailers
    pending: memoryview | None = None


class _CountedTable(HeaderTable):
    """An HPACK dynamic table that counts its changes (`generation`): an entry added (and
    those it evicts, RFC 7541 4.4) or a new size (a size update, 6.3), the only ways its
    contents change (referring to an entry leaves the table as it was: HPACK keeps no
    recency order)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property  # the same property, counted when set
    def maxsize(self) -> int:
        return HeaderTable.maxsize.fget(self)  # type: ignore[attr-defined,no-any-return]

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


#: header blocks remembered per connection, and the largest remembered (see `_BlockDecoder`)
_CACHED_BLOCKS = 16
_CACHED_BLOCK_MAX_BYTES = 4096


class _BlockDecoder:
    """A connection's HPACK decoder that decodes a header block it has seen before, on the
    same table, from memory. A gRPC client sends each call's headers as the same bytes once
    its table holds what it indexes (grpcio's Python client: one 161-byte block per
    CreateTask, which left the table as it was), and the `hpack` package's pure-Python
    decoder took 16 us of CPU for it at best, 30-45 us in the live emulator, on the way from
    CreateTask's bytes to the task's dispatch (0.1 us from memory). What a block decodes to
    depends only on its bytes and the table (RFC 7541 3.2): a block that left the table
    unchanged decodes to the same headers, again leaving it unchanged, as long as the table
    has not changed since; so the remembered blocks are forgotten at every change of the
    table (`_CountedTable.generation`), and a block that changes it is always decoded, which
    keeps the table in step with the peer's."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.header_table = self._table = _CountedTable()
        self._decoder.max_header_list_size = _MAX_DECODED_BYTES
        self._decoded: dict[bytes, list[hpack.HeaderTuple]] = {}

    def decode(self, block: bytes) -> list[hpack.HeaderTuple]:
        """The block's headers, raw (bytes); raises what `hpack.Decoder.decode` raises."""
        decoded = self._decoded.get(block)
        if decoded is not None:
            return decoded
        generation = self._table.generation
        decoded = cast(list[hpack.HeaderTuple], self._decoder.decode(block, raw=True))
        if self._table.generation != generation:
            self._decoded.clear()
        elif len(block) <= _CACHED_BLOCK_MAX_BYTES and len(self._decoded) < _CACHED_BLOCKS:
            self._decoded[block] = decoded
        return decoded


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    decoder: _BlockDecoder = field(default_factory=_BlockDecoder)
    incoming: bytearray = field(default_factory=bytearray)
    preface_seen: bool = False
    calls: dict[int, _Call] = field(default_factory=dict)
    last_stream_id: int = 0
    #: a header block still waiting for its CONTINUATION frames: (stream id, flags, block)
    header_block: tuple[int, int, bytearray] | None = None
    send_window: int = _DEFAULT_WINDOW
    peer_initial_window: int = _DEFAULT_WINDOW
    peer_max_frame: int = _DEFAULT_MAX_FRAME
    received: int = 0  #: bytes received and not yet given back to the connection's window
    owed: list[int] = field(default_factory=list)  #: streams that may be owed window
    buffered: int = 0  #: request bytes held by calls not yet answered
    outgoing: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ  #: what the selector watches the socket for
    closing: bool = False
    close_by: float = 0.0  #: when closing: the monotonic time it is closed at the latest
    #: the peer sent GOAWAY: its open calls still run to their end (RFC 9113 6.8), then close
    peer_going_away: bool = False


def _listen(host: str, port: int, logger: logging.Logger) -> list[socket.socket]:
    """Listening sockets for ``host:port`` on every address the host names, as grpcio's
    server binds them: ``::`` takes IPv4 as well (dual stack), a name such as ``localhost``
    both its IPv4 and IPv6 addresses, on one port. The first address must bind; another that
    cannot (no IPv6, or port 0's pick taken in the other family) is left out, logged."""
    # create_server sets SO_REUSEADDR, never SO_REUSEPORT: a port in use fails to bind.
    if host in ("", "::") and socket.has_dualstack_ipv6():
        dual = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return [dual]
    if host == "localhost":  # both loopbacks, whatever /etc/hosts lists (grpcio does too)
        addresses = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    else:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addresses = list(dict.fromkeys((info[0], str(info[4][0])) for info in found))
    first_family, first_host = addresses[0]
    listeners = [socket.create_server((first_host, port), family=first_family, backlog=128)]
    port = listeners[0].getsockname()[1]
    for family, address in addresses[1:]:
        try:
            listeners.append(socket.create_server((address, port), family=family, backlog=128))
        except OSError as error:
            logger.warning("gRPC: not listening on %s port %d: %s", address, port, error)
    return listeners


# --- the server -----------------------------------------------------------------------------


class UnaryGrpcServer:
    """Serves ``methods`` (by path, ``/package.Service/Method``) on ``host:port`` (0: any
    free port, see `port`) from one thread, between `start` and `stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        methods: Mapping[str, UnaryMethod],
        *,
        logger: logging.Logger,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
    ) -> None:
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._max_buffered = max_buffered_bytes
        self._log = logger
        self._listeners = _listen(host, port, logger)
        self.port: int = self._listeners[0].getsockname()[1]
        self._selector = selectors.DefaultSelector()
        for listener in self._listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, None)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, self._wake_reader)
        self._connections: set[_Connection] = set()
        self._closing: set[_Connection] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="tasks-emulator-grpc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: the call being run ends first (each runs whole on the serving
        thread); every connection gets a GOAWAY and is closed."""
        self._stopping = True
        if self._thread.is_alive():
            self._wake_writer.send(b"x")
            self._thread.join()
        for connection in list(self._connections):
            goaway = struct.pack(">II", connection.last_stream_id, _NO_ERROR)
            connection.outgoing += _frame(_GOAWAY, 0, 0, goaway)
            with suppress(OSError):  # the peer is gone: nothing more to tell it
                connection.sock.send(connection.outgoing)
            self._drop(connection)
        self._selector.close()
        for listener in self._listeners:
            listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            timeout = self._until_next_close() if self._closing else None
            for key, events in self._selector.select(timeout):
                if key.data is None:
                    self._accept(cast(socket.socket, key.fileobj))
                elif key.data is self._wake_reader:
                    continue  # stop() woke the loop
                else:
                    self._ready(key.data, events)
            if self._closing:
                self._close_late()

    def _ready(self, connection: _Connection, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self._write(connection)
            if events & selectors.EVENT_READ:
                self._read(connection)
        except Exception:
            # A fault of this server's own outside a connection's frames (those are caught in
            # _read): that connection ends, the serving thread serves on.
            self._log.exception("gRPC connection failed")
            self._drop(connection)

    def _until_next_close(self) -> float:
        soonest = min(connection.close_by for connection in self._closing)
        return max(0.0, soonest - time.monotonic())

    def _close_late(self) -> None:
        """Close every closing connection whose peer has not taken its output in time (it
        may never read again: the output would wait, and the connection stay, forever)."""
        now = time.monotonic()
        for connection in [c for c in self._closing if c.close_by <= now]:
            self._drop(connection)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # e.g. out of file descriptors: the client sees a reset
            self._log.warning("gRPC accept failed: %s", error)
            return
        sock.setblocking(False)
        # An answer is one small write; it must not wait on Nagle for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        connection.outgoing += _PREFACE_SETTINGS
        self._connections.add(connection)
        self._selector.register(sock, selectors.EVENT_READ, connection)
        self._write(connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        if connection.closing:
            # Read only to be thrown away: left unread, the socket would stay readable and
            # the loop spin on it until the connection closes.
            return
        connection.incoming += data
        try:
            self._frames(connection)
        except _ConnectionError as error:
            self._go_away(connection, error.code)
        except Exception:
            # A fault of this server's own: that connection ends, the server serves on.
            self._log.exception("gRPC connection failed")
            self._go_away(connection, _INTERNAL_ERROR)
        self._write(connection)

    def _go_away(self, connection: _Connection, code: int) -> None:
        goaway = struct.pack(">II", connection.last_stream_id, code)
        connection.outgoing += _frame(_GOAWAY, 0, 0, goaway)
        self._close_soon(connection)

    def _close_soon(self, connection: _Connection) -> None:
        """Close once the output is sent, or after CLOSE_GRACE_S whatever is left."""
        if not connection.closing:
            connection.closing = True
            connection.close_by = time.monotonic() + CLOSE_GRACE_S
            self._closing.add(connection)

    def _frames(self, connection: _Connection) -> None:
        """Handle every whole frame received so far."""
        incoming = connection.incoming
        if not connection.preface_seen:
            if len(incoming) < len(_PREFACE):
                if not _PREFACE.startswith(incoming):
                    raise _ConnectionError(_PROTOCOL_ERROR)
                return
            if incoming[: len(_PREFACE)] != _PREFACE:
                raise _ConnectionError(_PROTOCOL_ERROR)
            connection.preface_seen = True
            del incoming[: len(_PREFACE)]
        offset = 0
        while len(incoming) - offset >= _FRAME_HEAD.size:
            high, low, frame_type, flags, stream_id = _FRAME_HEAD.unpack_from(incoming, offset)
            size = (high << 8) | low
            if size > _DEFAULT_MAX_FRAME:  # our SETTINGS_MAX_FRAME_SIZE is the default
                raise _ConnectionError(_FRAME_SIZE_ERROR)
            end = offset + _FRAME_HEAD.size + size
            if len(incoming) < end:
                break
            payload = bytes(incoming[offset + _FRAME_HEAD.size : end])
            offset = end
            if connection.header_block is not None and frame_type != _CONTINUATION:
                raise _ConnectionError(_PROTOCOL_ERROR)  # a header block must be contiguous
            self._on_frame(connection, frame_type, flags, stream_id & _MAX_WINDOW, payload)
        del incoming[:offset]
        self._give_window(connection)
        if connection.peer_going_away and not connection.calls and connection.header_block is None:
            self._close_soon(connection)

    @staticmethod
    def _give_window(connection: _Connection) -> None:
        """WINDOW_UPDATE for what the frames just handled took, once a batch is handled:
        every byte of the batch was sent before the peer could see this grant, so a peer that
        sent more than its window is caught (see _on_data) rather than excused by it."""
        if connection.received >= _WINDOW_UPDATE_AT:
            increment, connection.received = connection.received, 0
            connection.outgoing += _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", increment))
        if not connection.owed:
            return
        for stream_id in connection.owed:
            call = connection.calls.get(stream_id)
            if call is not None and not call.ended and call.received >= _WINDOW_UPDATE_AT:
                increment, call.received = call.received, 0
                update = struct.pack(">I", increment)
                connection.outgoing += _frame(_WINDOW_UPDATE, 0, stream_id, update)
        connection.owed.clear()

    def _on_frame(
        self, connection: _Connection, frame_type: int, flags: int, stream_id: int, payload: bytes
    ) -> None:
        if frame_type == _DATA:
            self._on_data(connection, flags, stream_id, payload)
        elif frame_type in (_HEADERS, _CONTINUATION):
            self._on_header_frame(connection, frame_type, flags, stream_id, payload)
        elif frame_type == _RST_STREAM:
            self._on_rst_stream(connection, stream_id, payload)
        elif frame_type == _SETTINGS:
            self._on_settings(connection, flags, stream_id, payload)
        elif frame_type == _PING:
            self._on_ping(connection, flags, stream_id, payload)
        elif frame_type == _GOAWAY:
            self._on_goaway(connection, stream_id, payload)
        elif frame_type == _WINDOW_UPDATE:
            self._on_window_update(connection, stream_id, payload)
        elif frame_type == _PUSH_PROMISE:
            raise _ConnectionError(_PROTOCOL_ERROR)  # clients never push
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    @staticmethod
    def _on_goaway(connection: _Connection, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.8
        if len(payload) < 8:
            raise _ConnectionError(_FRAME_SIZE_ERROR)
        # The calls it opened go on to their end: an answer flow control holds still needs the
        # peer's WINDOW_UPDATEs, a request the rest of its DATA (RFC 9113 6.8); the connection
        # closes once none is left (_frames).
        connection.peer_going_away = True

    @staticmethod
    def _on_ping(connection: _Connection, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.7
        if len(payload) != 8:
            raise _ConnectionError(_FRAME_SIZE_ERROR)
        if not flags & _ACK:
            connection.outgoing += _frame(_PING, _ACK, 0, payload)

    def _on_rst_stream(self, connection: _Connection, stream_id: int, payload: bytes) -> None:
        if not stream_id or stream_id > connection.last_stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.4: not on 0 nor an idle one
        if len(payload) != 4:
            raise _ConnectionError(_FRAME_SIZE_ERROR)
        self._cancelled(connection, stream_id)  # the client cancelled the call

    def _on_settings(
        self, connection: _Connection, flags: int, stream_id: int, payload: bytes
    ) -> None:
        if stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.5
        if flags & _ACK:
            if payload:
                raise _ConnectionError(_FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise _ConnectionError(_FRAME_SIZE_ERROR)
        for index in range(0, len(payload), 6):
            self._setting(connection, *struct.unpack_from(">HI", payload, index))
        connection.outgoing += _frame(_SETTINGS, _ACK, 0, b"")
        self._resume(connection)

    @staticmethod
    def _setting(connection: _Connection, setting: int, value: int) -> None:
        """One setting (RFC 9113 6.5.2); the others are of no use to this server."""
        if setting == _SETTINGS_INITIAL_WINDOW_SIZE:
            if value > _MAX_WINDOW:
                raise _ConnectionError(_FLOW_CONTROL_ERROR)
            change = value - connection.peer_initial_window
            connection.peer_initial_window = value
            for call in connection.calls.values():
                call.send_window += change
                if call.send_window > _MAX_WINDOW:  # RFC 9113 6.9.2
                    raise _ConnectionError(_FLOW_CONTROL_ERROR)
        elif setting == _SETTINGS_MAX_FRAME_SIZE:
            if not _DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                raise _ConnectionError(_PROTOCOL_ERROR)
            connection.peer_max_frame = value
        elif setting == _SETTINGS_ENABLE_PUSH and value > 1:
            raise _ConnectionError(_PROTOCOL_ERROR)

    def _on_window_update(self, connection: _Connection, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(_FRAME_SIZE_ERROR)
        increment = struct.unpack(">I", payload)[0] & _MAX_WINDOW
        if stream_id == 0:
            if not increment:
                raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.9
            connection.send_window += increment
            if connection.send_window > _MAX_WINDOW:
                raise _ConnectionError(_FLOW_CONTROL_ERROR)
        elif stream_id > connection.last_stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 5.1: an idle stream
        elif (call := connection.calls.get(stream_id)) is not None:
            call.send_window += increment
            if not increment or call.send_window > _MAX_WINDOW:
                # A stream error (RFC 9113 6.9, 6.9.1): that call ends, the connection serves on.
                code = _PROTOCOL_ERROR if not increment else _FLOW_CONTROL_ERROR
                self._cancelled(connection, stream_id)
                connection.outgoing += _frame(_RST_STREAM, 0, stream_id, struct.pack(">I", code))
        self._resume(connection)

    def _on_header_frame(
        self, connection: _Connection, frame_type: int, flags: int, stream_id: int, payload: bytes
    ) -> None:
        if frame_type == _CONTINUATION:
            pending = connection.header_block
            if pending is None or pending[0] != stream_id:
                raise _ConnectionError(_PROTOCOL_ERROR)
            if len(pending[2]) + len(payload) > MAX_HEADER_BLOCK_BYTES:
                raise _ConnectionError(_ENHANCE_YOUR_CALM)
            pending[2].extend(payload)
            if flags & _END_HEADERS:
                connection.header_block = None
                self._on_headers(connection, stream_id, pending[1], bytes(pending[2]))
            return
        payload = _unpadded(flags, payload)
        if flags & _PRIORITY:
            if len(payload) < 5:
                raise _ConnectionError(_FRAME_SIZE_ERROR)  # RFC 9113 6.2, 4.2
            payload = payload[5:]  # stream dependency and weight, which this server ignores
        if flags & _END_HEADERS:
            self._on_headers(connection, stream_id, flags, payload)
        else:
            connection.header_block = (stream_id, flags, bytearray(payload))

    def _on_headers(
        self, connection: _Connection, stream_id: int, flags: int, block: bytes
    ) -> None:
        try:
            # Every block is decoded, whatever its stream: the HPACK table is the connection's.
            headers = connection.decoder.decode(block)
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(_ENHANCE_YOUR_CALM) from None
        except hpack.HPACKError:
            raise _ConnectionError(_COMPRESSION_ERROR) from None
        call = connection.calls.get(stream_id)
        if call is None:
            call = self._open(connection, stream_id, headers)
            if call is None:
                return
            if call.metadata_size > MAX_METADATA_BYTES:
                self._refuse_metadata(connection, stream_id, call, ended=bool(flags & _END_STREAM))
                return
        elif call.ended:
            raise _ConnectionError(_PROTOCOL_ERROR)  # headers after the request's end
        if flags & _END_STREAM:  # a second block is the client's trailers (gRPC sends none)
            self._answer(connection, stream_id, call)

    @staticmethod
    def _open(connection: _Connection, stream_id: int, headers: Headers) -> _Call | None:
        """A new call on ``stream_id``, or None if refused (too many open)."""
        if stream_id % 2 == 0 or stream_id <= connection.last_stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # not a new client stream
        connection.last_stream_id = stream_id
        if len(connection.calls) >= MAX_CONCURRENT_STREAMS:
            refused = struct.pack(">I", _REFUSED_STREAM)
            connection.outgoing += _frame(_RST_STREAM, 0, stream_id, refused)
            return None
        call = _Call(connection.peer_initial_window)
        size = 0
        method = b""
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name == b":path":
                call.path = bytes(value)
            elif name == b":method":
                method = bytes(value)
            elif name == b"content-type":
                call.content_type = bytes(value)
            elif name == b"grpc-encoding":
                call.encoding = bytes(value)
        call.metadata_size = size
        if method != b"POST" or not call.path:
            # Malformed for gRPC (RFC 9113 8.3.1; PROTOCOL-HTTP2.md: ":method POST", ":path"):
            # a stream error, the connection serves on; DATA that follows is dropped.
            malformed = struct.pack(">I", _PROTOCOL_ERROR)
            connection.outgoing += _frame(_RST_STREAM, 0, stream_id, malformed)
            return None
        connection.calls[stream_id] = call
        return call

    def _refuse_metadata(
        self, connection: _Connection, stream_id: int, call: _Call, *, ended: bool
    ) -> None:
        size = f"{call.metadata_size} vs. {MAX_METADATA_BYTES}"
        message = f"received metadata size exceeds hard limit ({size})"
        if ended:
            self._end(connection, stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        else:
            self._refuse(connection, stream_id, call, grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _on_data(self, connection: _Connection, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id > connection.last_stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR)  # RFC 9113 6.1: not on 0 nor an idle one
        connection.received += len(payload)  # padding included: it counts against the window
        if connection.received > _DEFAULT_WINDOW:
            raise _ConnectionError(_FLOW_CONTROL_ERROR)  # more than the window we gave
        call = connection.calls.get(stream_id)
        if call is None:
            return  # a call answered early (too large), refused or cancelled: data dropped
        if call.ended:
            # DATA after the request's END_STREAM: a stream error (RFC 9113 5.1, half-closed
            # remote), so the call ends here; the window it took is given back as usual.
            self._cancelled(connection, stream_id)
            closed = struct.pack(">I", _STREAM_CLOSED)
            connection.outgoing += _frame(_RST_STREAM, 0, stream_id, closed)
            return
        call.received += len(payload)
        if call.received > _DEFAULT_WINDOW:
            raise _ConnectionError(_FLOW_CONTROL_ERROR)
        data = _unpadded(flags, payload)
        had = len(call.body)
        call.body += data
        connection.buffered += len(data)
        if size := _over_size(call.body, had):
            self._refuse(connection, stream_id, call, *self._too_large(size))
        elif connection.buffered > self._max_buffered:
            message = f"Requests buffered on the connection over {self._max_buffered} bytes"
            self._refuse(connection, stream_id, call, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        elif flags & _END_STREAM:
            self._answer(connection, stream_id, call)
        else:
            connection.owed.append(stream_id)

    def _refuse(
        self,
        connection: _Connection,
        stream_id: int,
        call: _Call,
        code: grpc.StatusCode,
        message: str,
    ) -> None:
        """Answered now, before the rest arrives; RST_STREAM NO_ERROR then tells the client to
        stop sending (PROTOCOL-HTTP2.md, "Early Server Closure")."""
        connection.buffered -= len(call.body)
        call.body = bytearray()
        self._end(connection, stream_id, code, message)
        connection.outgoing += _frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _NO_ERROR))

    @staticmethod
    def _cancelled(connection: _Connection, stream_id: int) -> None:
        call = connection.calls.pop(stream_id, None)
        if call is not None and not call.ended:
            connection.buffered -= len(call.body)

    @staticmethod
    def _too_large(size: int) -> tuple[grpc.StatusCode, str]:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({size} vs. {MAX_MESSAGE_BYTES})",
        )

    # -- a call --------------------------------------------------------------------------

    def _answer(self, connection: _Connection, stream_id: int, call: _Call) -> None:
        call.ended = True
        connection.buffered -= len(call.body)
        if not call.content_type.startswith(_GRPC_CONTENT_TYPE):
            # Not a gRPC request at all: gRPC servers answer HTTP 415 (PROTOCOL-HTTP2.md).
            connection.calls.pop(stream_id, None)
            max_frame = connection.peer_max_frame
            connection.outgoing += _header_frames(stream_id, _NOT_GRPC_HEADERS, True, max_frame)
            return
        outcome = self._run(call)
        if isinstance(outcome, tuple):
            self._end(connection, stream_id, *outcome)
            return
        message = outcome.SerializeToString()
        call.body = bytearray()
        call.pending = memoryview(b"".join((b"\x00", len(message).to_bytes(4, "big"), message)))
        connection.outgoing += _header_frames(
            stream_id, _RESPONSE_HEADERS, False, connection.peer_max_frame
        )
        self._send_message(connection, stream_id, call)

    def _run(self, call: _Call) -> Any:
        """The method's response, or the (status, message) the call ends with."""
        method = self._methods.get(call.path)
        if method is None:
            return grpc.StatusCode.UNIMPLEMENTED, "Method not found!"
        request = _request(method, call)
        if isinstance(request, tuple):
            return request
        try:
            return method.behaviour(request)
        except RpcError as error:
            return error.code, error.message
        except Exception as error:
            self._log.exception("gRPC method %s raised", call.path.decode(errors="replace"))
            return grpc.StatusCode.UNKNOWN, f"Exception calling application: {error}"

    def _end(
        self, connection: _Connection, stream_id: int, code: grpc.StatusCode, message: str
    ) -> None:
        """Trailers-Only: the answer of a call that failed."""
        connection.calls.pop(stream_id, None)
        block = _RESPONSE_HEADERS + _status_block(code, message)
        connection.outgoing += _header_frames(stream_id, block, True, connection.peer_max_frame)

    def _resume(self, connection: _Connection) -> None:
        """Send what flow control held back, now that a window grew."""
        for stream_id, call in list(connection.calls.items()):
            if call.pending is not None:
                self._send_message(connection, stream_id, call)

    def _send_message(self, connection: _Connection, stream_id: int, call: _Call) -> None:
        """Send as much of the answer's message as flow control allows, then its trailers."""
        pending = call.pending
        assert pending is not None
        while pending:
            room = min(connection.send_window, call.send_window, connection.peer_max_frame)
            if room <= 0:
                call.pending = pending
                return  # a WINDOW_UPDATE (or SETTINGS) resumes it
            chunk, pending = pending[:room], pending[room:]
            connection.outgoing += _frame(_DATA, 0, stream_id, chunk)
            connection.send_window -= len(chunk)
            call.send_window -= len(chunk)
        connection.calls.pop(stream_id, None)
        connection.outgoing += _header_frames(
            stream_id, _OK_TRAILERS, True, connection.peer_max_frame
        )

    # -- the socket ----------------------------------------------------------------------

    def _write(self, connection: _Connection) -> None:
        outgoing = connection.outgoing
        while outgoing:
            try:
                sent = connection.sock.send(outgoing)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(connection)
                return
            del outgoing[:sent]
        if not outgoing and connection.closing:
            self._drop(connection)
            return
        # Written when the kernel takes more; read unless too much is waiting to be written
        # (a closing connection is read to throw its input away, see _read).
        events = selectors.EVENT_WRITE if outgoing else 0
        if connection.closing or len(outgoing) <= OUTGOING_HIGH_WATER:
            events |= selectors.EVENT_READ
        if events != connection.events:
            connection.events = events
            self._selector.modify(connection.sock, events, connection)

    def _drop(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self._closing.discard(connection)
        with suppress(KeyError, ValueError):  # a socket the selector no longer knows
            self._selector.unregister(connection.sock)
        connection.sock.close()
