"""The Realtime stand-in's pure parts, with nothing running: filters, frames, tokens."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import jwt
import pytest

from infra.local.auth import TokenError, verify_token
from infra.local.realtime import protocol
from infra.local.realtime.bindings import BindingError, parse_binding, parse_filter
from infra.local.realtime.server import commit_timestamp

SECRET = "s" * 40


def test_a_filter_splits_at_the_first_equals_and_the_first_dot() -> None:
    parsed = parse_filter("message=eq.a=b.c")

    assert (parsed.column, parsed.operator, parsed.values) == ("message", "eq", ("a=b.c",))


def test_an_in_filter_takes_a_parenthesised_list() -> None:
    assert parse_filter("status=in.(queued,processing)").values == ("queued", "processing")


@pytest.mark.parametrize("text", ["id", "id=eq", "id=like.x", "id=in.a,b", "id=in.()"])
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(BindingError):
        parse_filter(text)


def test_a_binding_keeps_exactly_what_the_client_sent_and_adds_an_id() -> None:
    raw = {"event": "UPDATE", "table": "ai_jobs", "filter": "id=eq.1"}

    echoed = parse_binding(raw, set()).echo()

    assert {k: v for k, v in echoed.items() if k != "id"} == raw
    assert isinstance(echoed["id"], int) and echoed["id"] > 0


def test_commit_timestamps_are_utc_milliseconds_with_z() -> None:
    when = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)

    assert commit_timestamp(when) == "2026-11-27T10:00:00.123Z"


def test_frames_round_trip_in_both_serializers() -> None:
    frame = protocol.Frame("realtime:x", "phx_reply", {"status": "ok"}, "2", "1")

    v1 = protocol.encode(protocol.VSN_1, frame)
    v2 = protocol.encode(protocol.VSN_2, frame)

    assert '"join_ref"' not in v1 and '"ref":"2"' in v1
    assert v2 == '["1","2","realtime:x","phx_reply",{"status":"ok"}]'
    assert protocol.decode(protocol.VSN_2, v2) == frame


@pytest.mark.parametrize(
    ("token", "kind"),
    [
        (None, "MalformedJWT"),
        ("nope", "MalformedJWT"),
        (
            jwt.encode({"role": "anon", "exp": 2**31}, "x" * 40, algorithm="HS256"),
            "JwtSignatureError",
        ),
        (jwt.encode({"exp": 2**31}, SECRET, algorithm="HS256"), "MalformedJWT"),
        (
            jwt.encode({"role": "anon", "exp": int(time.time()) - 9}, SECRET, algorithm="HS256"),
            "InvalidJWTToken",
        ),
    ],
)
def test_tokens_are_refused_with_the_real_servers_error_family(
    token: str | None, kind: str
) -> None:
    with pytest.raises(TokenError) as refused:
        verify_token(SECRET, token)

    assert refused.value.kind == kind
