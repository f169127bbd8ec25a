"""Bodies through the one local Supabase URL (uvicorn in front of the WSGI gateway): the bridge
keeps the gateway's limits, and an abandoned body never runs an RPC — as PostgREST behind
Supabase's gateway never runs a request it did not receive whole."""

from __future__ import annotations

import json
import socket
import uuid
from urllib.parse import urlsplit

from tests.support import LocalSupabase

#: the gateway's body limit (infra/local/gateway.py, DEFAULT_MAX_BODY_BYTES)
LIMIT = 1024 * 1024


def _connect(server: LocalSupabase) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    return sock


def _head(server: LocalSupabase, length_header: str) -> bytes:
    return (
        "POST /rest/v1/rpc/create_job HTTP/1.1\r\n"
        f"Host: {urlsplit(server.url).netloc}\r\n"
        f"apikey: {server.service_key}\r\n"
        f"Authorization: Bearer {server.service_key}\r\n"
        "Content-Type: application/json\r\n"
        f"{length_header}\r\n"
        "\r\n"
    ).encode()


def _status(sock: socket.socket) -> int:
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return int(reply.split(b" ", 2)[1])


def _create_body(user_id: str) -> bytes:
    return json.dumps(
        {
            "p_user_id": user_id,
            "p_type": "analysis",
            "p_query": "a job from half a request",
            "p_priority": "normal",
            "p_idempotency_key": None,
            "p_request_hash": None,
            "p_complexity": None,
            "p_complexity_score": None,
            "p_estimated_seconds": None,
            "p_metadata": {},
            "p_max_attempts": 3,
            "p_max_per_minute": 30,
            "p_max_active": 10,
        }
    ).encode()


def _jobs_of(server: LocalSupabase, user_id: str) -> int:
    return int(server.sql("select count(*) from public.ai_jobs where user_id = %s", user_id)[0][0])


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_sent(
    supabase_server: LocalSupabase,
) -> None:
    with _connect(supabase_server) as sock:
        sock.sendall(_head(supabase_server, f"Content-Length: {64 * LIMIT}"))

        assert _status(sock) == 413


def test_a_chunked_body_past_the_limit_is_413(supabase_server: LocalSupabase) -> None:
    with _connect(supabase_server) as sock:
        sock.sendall(_head(supabase_server, "Transfer-Encoding: chunked"))
        piece = b"x" * 65536
        try:
            for _ in range(LIMIT // len(piece) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            pass  # the server may answer and close before the client stops sending

        assert _status(sock) == 413


def test_a_body_the_client_abandoned_runs_no_rpc(supabase_server: LocalSupabase) -> None:
    user_id = str(uuid.uuid4())
    body = _create_body(user_id)
    with _connect(supabase_server) as sock:
        # a whole JSON document, but less than the declared length; then the client leaves
        sock.sendall(_head(supabase_server, f"Content-Length: {len(body) + 500}") + body)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)  # the server closes without running anything

    # the same request sent whole does create the job (the check above can fail)
    with _connect(supabase_server) as sock:
        sock.sendall(_head(supabase_server, f"Content-Length: {len(body)}") + body)
        assert _status(sock) == 200

    assert _jobs_of(supabase_server, user_id) == 1


def test_a_chunked_body_within_the_limit_reaches_the_rpc_whole(
    supabase_server: LocalSupabase,
) -> None:
    user_id = str(uuid.uuid4())
    body = _create_body(user_id)
    half = len(body) // 2
    with _connect(supabase_server) as sock:
        sock.sendall(_head(supabase_server, "Transfer-Encoding: chunked"))
        for piece in (body[:half], body[half:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")

        assert _status(sock) == 200
    assert _jobs_of(supabase_server, user_id) == 1
