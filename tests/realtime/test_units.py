"""The Realtime stand-in's pure parts, with nothing running: filters, frames, tokens."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import jwt
import pytest

from infra.local.auth import TokenError, verify_token
from infra.local.realtime import protocol
from infra.local.realtime.bindings import BindingError, parse_binding, parse_filter
from infra.local.realtime.database import MAX_PAYLOAD_BYTES, _statements, limit_payload
from infra.local.realtime.pgoutput import Column, Relation
from infra.local.realtime.protocol import RawJSON
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


#: jsonb's own printing (", " and ": " separators), with what json.dumps writes longer: non-ASCII
#: text (escaped by ensure_ascii) and floats of 17 or more integer digits (exponent form)
JSONB_TEXTS = [
    '{"a": [1, 2.50, -0, 1.0], "k": "\\"q\\" \\\\ \\n", "z": null, "aa": {"b": true}}',
    '{"ko": "모든 서버 분석", "emoji": "😀😀", "mixed": ["é", 1]}',
    "[12345678901234567.5, 123456789012345678901.25, 0.000012345678901234567]",
    '"plain"',
]


@pytest.mark.parametrize("text", JSONB_TEXTS)
def test_raw_json_is_written_into_frames_as_it_is_in_both_serializers(text: str) -> None:
    record = {"id": "7", "result": RawJSON(text), "progress": 5}
    frame = protocol.Frame("realtime:x", "postgres_changes", {"data": {"record": record}})

    v1 = protocol.encode(protocol.VSN_1, frame)
    v2 = protocol.encode(protocol.VSN_2, frame)

    expected = {"id": "7", "result": json.loads(text), "progress": 5}
    assert json.loads(v1)["payload"]["data"]["record"] == expected
    assert json.loads(v2)[4]["data"]["record"] == expected
    assert f'"result":{text},' in v1 and f'"result":{text},' in v2


@pytest.mark.parametrize("text", JSONB_TEXTS)
def test_rows_of_raw_json_under_the_limit_are_passed_on_unparsed(text: str) -> None:
    record, old = {"id": "7", "result": RawJSON(text)}, {"id": "7"}

    new_record, new_old, errors = limit_payload(record, old)

    assert (new_record, new_old, errors) == (record, old, None)


def test_a_raw_json_row_over_the_limit_keeps_only_small_values_as_a_parsed_one_does() -> None:
    big = json.dumps({"blob": "x" * (MAX_PAYLOAD_BYTES + 1)}, separators=(", ", ": "))
    raw = {"id": "7", "message": "big", "data": RawJSON(big), "meta": RawJSON('{"n": 1}')}
    parsed = {"id": "7", "message": "big", "data": json.loads(big), "meta": {"n": 1}}

    assert limit_payload(raw, {}) == limit_payload(parsed, {})
    assert limit_payload(raw, {}) == (
        {"id": "7", "message": "big", "meta": {"n": 1}},
        {},
        ["Error 413: Payload Too Large"],
    )


def test_a_raw_json_row_near_the_limit_is_measured_as_a_parsed_one_is() -> None:
    # ASCII text whose bound (3 characters per byte) is over the limit but whose size is not
    text = json.dumps({"blob": "x" * (MAX_PAYLOAD_BYTES // 2)}, separators=(", ", ": "))
    raw = {"id": "7", "data": RawJSON(text)}

    assert limit_payload(raw, {}) == (raw, {}, None)


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


def test_relations_alike_in_every_field_are_one_cache_key_and_others_are_not() -> None:
    def relation(type_oid: int) -> Relation:
        return Relation(1, "public", "t", "d", (Column("id", type_oid, -1, True),))

    cache = {relation(2950): "uuid"}

    assert cache.get(relation(2950)) == "uuid"
    assert cache.get(relation(25)) is None


def test_a_polls_casts_are_cut_into_statements_within_postgres_limits() -> None:
    few = [("(cast(${0} as int) as a)", ["1"])] * 600
    wide = [("(" + ", ".join(f"${{{j}}}" for j in range(30000)) + ")", ["v"] * 30000)] * 3

    few_statements = _statements(few)
    wide_statements = _statements(wide)

    assert [len(exprs) for exprs, _ in few_statements] == [500, 100]
    assert few_statements[1][0][0] == "(cast($1 as int) as a)"
    assert few_statements[1][0][-1] == "(cast($100 as int) as a)"
    assert [len(params) for _, params in wide_statements] == [60000, 30000]
    assert wide_statements[0][0][1].startswith("($30001, ")
