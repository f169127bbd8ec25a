"""The API's JSON writer (``shared.http.dump_json``): pydantic-core's serializer, with the
standard library's for what it refuses; the text must be what ``json.dumps`` wrote before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.http import dump_json, dump_json_bytes


def reference(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    "body",
    [
        {"jobId": "6f1c1a52-6a8e-4f0f-9d1e-0c1b2a3d4e5f", "status": "queued", "progress": 0},
        {"answer": "모든 서버 분석 완료 — 🚀", "quote": 'a "b" \\ c', "ctl": "\n\t\x01\x7f\u2028"},
        {"big": 10**30, "negative": -(2**63), "floats": [0.1, 1.5e300, -0.0, 123456789.123]},
        {"nested": [{"a": [None, True, False, []]}, {}], "empty": ""},
        [1, "two", 3.0],
    ],
)
def test_the_answer_is_the_text_json_dumps_wrote(body: Any) -> None:
    assert dump_json(body) == reference(body)
    assert dump_json_bytes(body) == reference(body).encode()


def test_what_the_fast_writer_refuses_is_written_by_the_standard_library() -> None:
    lone_surrogate = {"text": "\ud800"}

    assert dump_json(lone_surrogate) == reference(lone_surrogate)
    with pytest.raises(UnicodeEncodeError):  # as the text did, encoded for the response
        dump_json_bytes(lone_surrogate)
