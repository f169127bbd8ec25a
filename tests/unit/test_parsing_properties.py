"""Generated input against the request parsing and the cursor (Hypothesis, bounded).

The properties: whatever the bytes, parsing answers a value or a precise 4xx (never another
exception, so never a 500); it accepts exactly what can be stored and sent back; a cursor
either decodes to an instant Postgres can take or is ``invalid_cursor``. A case Hypothesis
once found is kept below as a regular test."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import flask
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from shared import errors
from shared.api import decode_cursor, encode_cursor
from shared.http import MAX_JSON_DEPTH, dump_json, parse_json, parse_model, read_json
from shared.jobs import (
    CreateJobRequest,
    Job,
    JobStatus,
    JobType,
    Priority,
    jobs_from_rows,
    json_depth,
    wire_without_results,
)
from shared.settings import Settings

BOUNDED = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)
PARSE_CODES = {"invalid_json", "json_too_deep", "unsupported_json_value"}

# Text that includes the characters that broke the API: lone surrogates and NUL.
any_text = st.text(st.characters(codec=None, min_codepoint=0), max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=40,
)


def representable(value: Any) -> bool:
    """The oracle: what the database and the response can hold, decided independently."""
    if json_depth(value) > MAX_JSON_DEPTH:
        return False
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def queued_job(job_id: uuid.UUID, created_at: datetime, **fields: Any) -> Job:
    """A job as a row just created would load: queued, nothing done yet."""
    return Job(
        id=job_id,
        user_id="u",
        type=JobType.REPORT,
        query=fields.pop("query", "q"),
        priority=Priority.NORMAL,
        status=JobStatus.QUEUED,
        progress=0,
        max_attempts=3,
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


@BOUNDED
@given(st.binary(max_size=256))
def test_any_bytes_parse_to_a_value_or_a_precise_400(raw: bytes) -> None:
    try:
        parse_json(raw)
    except errors.BadRequest as exc:
        assert exc.code in PARSE_CODES


@BOUNDED
@given(json_values, st.booleans())
@example([[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]], True)  # one level past the limit
@example({"x": float("nan")}, True)
@example({"\ud800": 1}, True)
def test_json_is_accepted_exactly_when_it_can_be_stored_and_sent_back(
    value: Any, ascii_only: bool
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        parsed = parse_json(raw)
    except errors.BadRequest as exc:
        assert exc.code in PARSE_CODES
        assert not representable(value)
        return
    assert representable(value)
    assert parsed == value
    json.dumps(parsed, allow_nan=False, ensure_ascii=False).encode("utf-8")  # sendable


@BOUNDED
@given(st.dictionaries(any_text, json_values, max_size=4), any_text)
def test_a_create_request_parses_to_a_model_the_response_can_serialize_or_a_400(
    metadata: dict[str, Any], query: str
) -> None:
    raw = json.dumps({"query": query, "metadata": metadata}).encode()
    try:
        create = parse_model(CreateJobRequest, parse_json(raw))
    except errors.BadRequest as exc:
        assert exc.code in PARSE_CODES | {"validation_failed"}
        return
    job = queued_job(uuid.uuid4(), datetime.now(UTC), query=create.query, metadata=create.metadata)
    wire = job.wire()
    json.dumps(wire, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert wire["metadata"] == metadata


@BOUNDED
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400), st.booleans())
def test_any_body_and_content_length_is_read_whole_or_refused(
    body: bytes, declared: int, server_terminates_input: bool
) -> None:
    environ = EnvironBuilder(
        method="POST", input_stream=io.BytesIO(body), content_type="application/json"
    ).get_environ()
    environ["CONTENT_LENGTH"] = str(declared)
    if server_terminates_input:
        environ["wsgi.input_terminated"] = True
    limit = Settings(supabase_url="u", supabase_service_key="k", max_body_bytes=256)
    try:
        read_json(flask.Request(environ), limit)
    except errors.IncompleteBody:
        assert declared > len(body), "only a body shorter than declared is incomplete"
    except errors.PayloadTooLarge:
        assert declared > 256
    except errors.BadRequest as exc:
        assert exc.code in PARSE_CODES | {"validation_failed"}
    else:
        assert declared <= len(body), "a short body is never used"


offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)


@BOUNDED
@given(st.text(max_size=300))
@example(
    "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzIzOjU5IiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd"
)
def test_any_cursor_decodes_to_a_utc_instant_or_is_an_invalid_cursor(cursor: str) -> None:
    try:
        instant, job_id = decode_cursor(cursor)
    except errors.InvalidCursor:
        return
    assert instant.utcoffset() == timedelta(0)
    assert isinstance(job_id, uuid.UUID)


@BOUNDED
@given(st.datetimes(timezones=offsets), st.uuids())
def test_a_cursor_written_by_the_service_reads_back_as_the_same_instant(
    created_at: datetime, job_id: uuid.UUID
) -> None:
    try:
        created_at.astimezone(UTC)
    except OverflowError:
        return  # not an instant a database row can have
    job = queued_job(job_id, created_at)
    instant, decoded_id = decode_cursor(encode_cursor(job))
    assert (instant, decoded_id) == (created_at, job_id)
    assert instant.tzinfo == UTC


@pytest.mark.parametrize(
    "parts",
    [
        ["0001-01-01T00:00:00+23:59", str(uuid.UUID(int=0))],  # before year 1 in UTC
        ["9999-12-31T23:59:59-23:59", str(uuid.UUID(int=0))],  # after year 9999 in UTC
        ["2026-01-01T00:00:00", str(uuid.UUID(int=0))],  # no offset: which instant?
        [[["2026"]], str(uuid.UUID(int=0))],
    ],
)
def test_cursors_that_once_reached_postgres_are_invalid_cursors(parts: list[Any]) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()
    with pytest.raises(errors.InvalidCursor):
        decode_cursor(cursor)


@BOUNDED
@given(
    st.lists(
        st.tuples(st.dictionaries(any_text, json_values, max_size=3), st.sampled_from(JobStatus)),
        max_size=5,
    )
)
def test_a_page_of_jobs_loads_and_shows_byte_for_byte_as_each_job_alone(
    pages: list[tuple[dict[str, Any], JobStatus]],
) -> None:
    now = datetime.now(UTC)
    try:
        rows = [
            queued_job(uuid.uuid4(), now, metadata=metadata, result={"r": 1}, error="e")
            .model_copy(update={"status": status})
            .model_dump(mode="json")
            for metadata, status in pages
        ]
        one_by_one = [Job.model_validate(row) for row in rows]
    except ValueError:  # a lone surrogate: metadata the create request refuses first
        return

    jobs = jobs_from_rows(rows)

    assert jobs == one_by_one
    each = [job.wire(include_result=False) for job in one_by_one]
    assert dump_json(wire_without_results(jobs)) == dump_json(each)
