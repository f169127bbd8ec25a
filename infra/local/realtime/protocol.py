"""Phoenix channel frames as the two official clients speak them (REALTIME.md, "Envelope").

vsn 1.0.0 (realtime-py): JSON objects; server → client ``{topic, event, payload, ref}`` with
``ref`` always present and never ``join_ref``. vsn 2.0.0 (supabase-js with @supabase/phoenix):
JSON arrays ``[join_ref, ref, topic, event, payload]`` both ways; supabase-js drops a message
whose ``join_ref`` is set and differs from the channel's, so replies and ``phx_close`` echo it
and ``postgres_changes`` / ``system`` carry null.

A value may be ``RawJSON``: JSON already written (a jsonb column's text as the WAL carries it),
spliced into the frame as it is instead of parsed here and written again — a job's result is
tens of kB, and parsing and re-encoding it was most of this stand-in's CPU per event.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

VSN_1 = "1.0.0"
VSN_2 = "2.0.0"
SUPPORTED = (VSN_1, VSN_2)


class FrameError(ValueError):
    """A frame the server cannot read."""


@dataclass(frozen=True)
class Frame:
    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


def decode(vsn: str, text: str) -> Frame:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FrameError("not JSON") from exc
    if vsn == VSN_2:
        if not isinstance(raw, list) or len(raw) != 5:
            raise FrameError("a vsn 2.0.0 frame is [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = raw
    else:
        if not isinstance(raw, dict):
            raise FrameError("a vsn 1.0.0 frame is a JSON object")
        topic, event, payload = raw.get("topic"), raw.get("event"), raw.get("payload")
        ref, join_ref = raw.get("ref"), raw.get("join_ref")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise FrameError("topic and event must be strings")
    return Frame(
        topic,
        event,
        payload if payload is not None else {},
        None if ref is None else str(ref),
        None if join_ref is None else str(join_ref),
    )


@dataclass(frozen=True, slots=True)
class RawJSON:
    """A value that is already JSON text, written into a frame verbatim."""

    text: str


# A RawJSON is first written as a string holding NUL, this process's nonce and its index, then
# that string (quotes included) is replaced by the text. NUL never comes from the database
# (text and jsonb refuse it) and the nonce is unknown to clients, so nothing else can match.
_NONCE = secrets.token_hex(8)
_PLACEHOLDER = re.compile(r'"\\u0000' + _NONCE + r'(\d+)\\u0000"')


def encode(vsn: str, frame: Frame) -> str:
    if vsn == VSN_2:
        body: Any = [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload]
    else:
        body = {"topic": frame.topic, "event": frame.event, "payload": frame.payload}
        body["ref"] = frame.ref
    raws: list[str] = []

    def placeholder(value: object) -> str:
        if not isinstance(value, RawJSON):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        raws.append(value.text)
        return f"\0{_NONCE}{len(raws) - 1}\0"

    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=placeholder)
    if not raws:
        return text
    return _PLACEHOLDER.sub(lambda match: raws[int(match[1])], text)
