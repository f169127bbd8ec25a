"""A loopback TCP relay in front of Postgres that counts what clients send through it.

Tests that need to know which statements the gateway sends (not only what it answers) point
the gateway at the relay instead of the server: every byte goes through unchanged, to the
server's Unix socket, and ``count(text)`` says how many times ``text`` was sent so far.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from types import TracebackType

from psycopg import conninfo


class PostgresRelay:
    """Relays TCP connections on a free loopback port to the server of ``db_uri`` (its Unix
    socket); ``uri`` is ``db_uri`` through the relay. Use as a context manager."""

    def __init__(self, db_uri: str) -> None:
        params = conninfo.conninfo_to_dict(db_uri)
        self._socket_path = Path(str(params["host"])) / f".s.PGSQL.{params.get('port', 5432)}"
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.uri = conninfo.make_conninfo(db_uri, host="127.0.0.1", port=port, sslmode="disable")
        #: what each connection's client sent, in order (one buffer per connection, so that
        #: a text split between two reads is still found whole)
        self._sent: list[bytearray] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="pg-relay", daemon=True)
        self._thread.start()

    def count(self, text: bytes) -> int:
        """How many times the clients sent ``text`` (byte for byte) since the relay started."""
        with self._lock:
            return sum(bytes(sent).count(text) for sent in self._sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(str(self._socket_path))
            sent = bytearray()
            with self._lock:
                self._open += [client, server]
                self._sent.append(sent)
            threading.Thread(target=self._pipe, args=(client, server, sent), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, log: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if log is not None:
                    with self._lock:
                        log += chunk
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)

    def __enter__(self) -> PostgresRelay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
