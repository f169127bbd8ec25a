"""A fake Gemini API on loopback for tests: answers ``google-genai``'s ``generateContent``.

``start()`` serves ``POST /{version}/models/{model}:generateContent`` on 127.0.0.1 (a free port,
background thread) and returns a ``FakeGemini`` with ``.base_url`` (pass it as
``HttpOptions(base_url=...)`` or ``GEMINI_BASE_URL``) and ``.stop()``; it is also a context
manager. By default every call succeeds with a JSON instance generated from the request's
``responseJsonSchema`` (or OpenAPI-style ``responseSchema``), so any structured request works
unscripted. ``push(...)`` queues what the next calls get instead: a 429 with a
``google.rpc.RetryInfo`` delay (per minute, per day, or a quota of 0), a 5xx, a 4xx, a model
that is gone, malformed JSON text, a blocked prompt, an answer stopped by SAFETY / RECITATION /
MAX_TOKENS / ..., a slow answer, or a fixed answer. ``requests`` records every request received.

It is as strict as the API where the project could get it wrong: only the pinned API version
(``GEMINI_API_VERSION``) exists, other paths are 404 (so an SDK that changes its default
version fails the tests); ``thinkingLevel`` and ``thinkingBudget`` together, or a level the
model does not take, are 400; a model listed in ``retired`` answers 404 as a shut-down model
does (https://ai.google.dev/gemini-api/docs/deprecations).
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.settings import GEMINI_API_VERSION

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Fault:
    """What one call gets instead of the automatic answer."""

    status: int = 200
    body: dict[str, Any] | None = None  #: the whole JSON body (an error, or a scripted 200)
    text: str | None = None  #: the candidate's text for a 200 (e.g. malformed JSON)
    answer: Any = None  #: a JSON value to send as the candidate's text
    delay_s: float = 0.0  #: wait this long before answering


def error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The error JSON the real API sends."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


_QUOTA_IDS = {
    "minute": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    "day": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
}


def rate_limited(
    retry_delay_s: float | None = 0.1, *, per: str = "minute", limit: int = 10
) -> Fault:
    """HTTP 429 as the real API sends it: ``google.rpc.QuotaFailure`` naming the quota
    (``per``: "minute" or "day"; ``limit`` 0 for a model the project has no quota for) and a
    ``google.rpc.RetryInfo`` delay (none when ``retry_delay_s`` is None)."""
    violation = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": _QUOTA_IDS[per],
        "quotaDimensions": {"location": "global", "model": "any"},
        "quotaValue": str(limit),
    }
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
    ]
    if retry_delay_s is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{retry_delay_s:g}s",
            }
        )
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"* Quota exceeded for metric: {violation['quotaMetric']}, limit: {limit}"
    )
    return Fault(status=429, body=error_body(429, message, details))


def model_gone(model: str = "gemini-2.5-flash") -> Fault:
    """The 404 of a model that is shut down or closed to new users."""
    return Fault(
        status=404,
        body=error_body(
            404,
            f"This model models/{model} is no longer available to new users. Please update "
            "your code to use a newer model for the latest features and improvements.",
        ),
    )


def server_error(status: int = 503) -> Fault:
    return Fault(
        status=status, body=error_body(status, "The model is overloaded. Please try again later.")
    )


def client_error(
    status: int = 400, message: str = "Request contains an invalid argument."
) -> Fault:
    return Fault(status=status, body=error_body(status, message))


def malformed(text: str = '{"title": "unterminated') -> Fault:
    return Fault(text=text)


def blocked_prompt(reason: str = "SAFETY") -> Fault:
    """A 200 without candidates: the prompt itself was blocked (``promptFeedback``)."""
    return Fault(
        body={
            "promptFeedback": {"blockReason": reason},
            "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
            "modelVersion": "fake",
        }
    )


def stopped(finish_reason: str, text: str | None = None) -> Fault:
    """A 200 whose candidate ended with ``finish_reason`` (SAFETY, RECITATION, MAX_TOKENS, ...),
    with the partial ``text`` or, as a refused answer has, no content at all."""
    candidate: dict[str, Any] = {"finishReason": finish_reason, "index": 0}
    if text is not None:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 800}
    return Fault(body={"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake"})


def slow(delay_s: float) -> Fault:
    return Fault(delay_s=delay_s)


def answer(value: Any) -> Fault:
    return Fault(answer=value)


# ----------------------------------------------------------------------------- example instances


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return dict(node)


def example_from_schema(
    schema: dict[str, Any], root: dict[str, Any] | None = None, name: str = "value"
) -> Any:
    """A small instance valid against a JSON Schema (or Gemini's OpenAPI-style ``Schema``)."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if _type_of(_resolve(o, root)) != "null"]
        if options:
            return example_from_schema(options[0], root, name)
    kind = _type_of(schema)
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {key: example_from_schema(sub, root, key) for key, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [example_from_schema(schema.get("items", {}), root, name) for _ in range(count)]
    return _scalar(kind, schema, name)


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    return str(kind).lower()


def _scalar(kind: str, schema: dict[str, Any], name: str) -> Any:
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if schema.get("format") == "date-time":
        return "2025-01-01T00:00:00Z"
    text = f"example {name}"
    return text.ljust(int(schema.get("minLength", 0)), "x")


# ----------------------------------------------------------------------------- server


@dataclass
class RecordedRequest:
    path: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeGemini:
    """The running fake; thread-safe queue of faults and log of requests."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    #: models that answer 404 like a shut-down model (e.g. ``{"gemini-2.5-flash"}``)
    retired: set[str] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *faults: Fault) -> None:
        """The next ``len(faults)`` calls get these, in order."""
        with self.lock:
            self.faults.extend(faults)

    def next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def record(self, request: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(request)

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def stop(self) -> None:
        self.stopping.set()  # wake handlers sleeping in a slow answer
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeGemini:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return schema if isinstance(schema, dict) else None


def _candidate_text(body: dict[str, Any], fault: Fault | None) -> str:
    if fault is not None and fault.text is not None:
        return fault.text
    if fault is not None and fault.answer is not None:
        return json.dumps(fault.answer, ensure_ascii=False)
    schema = _response_schema(body)
    if schema is None:
        return "This is a fake Gemini answer."
    return json.dumps(example_from_schema(schema), ensure_ascii=False)


#: thinking levels a model rejects (gemini-3.8-flash: "minimal is not supported and returns an
#: error", https://ai.google.dev/gemini-api/docs/models/gemini-3.8-flash)
_REJECTED_LEVELS = {"gemini-3.8-flash": {"MINIMAL"}, "gemini-3.7-flash": {"MINIMAL"}}
_LEVELS = {"MINIMAL", "LOW", "MEDIUM", "HIGH"}


def request_error(model: str, body: dict[str, Any]) -> str | None:
    """Why the real API would refuse this request with a 400, or None."""
    config = body.get("generationConfig") or {}
    thinking = config.get("thinkingConfig") or {}
    # proto JSON accepts a field's camelCase and snake_case names alike, and google-genai
    # 3.6.1 sends the nested thinkingConfig keys in snake_case: accept both, as the API does
    level = thinking.get("thinkingLevel", thinking.get("thinking_level"))
    budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    if level is not None and budget is not None:
        return "You can only set one of thinking budget and thinking level."
    if level is not None and (
        str(level) not in _LEVELS or str(level) in _REJECTED_LEVELS.get(model, set())
    ):
        return f"Thinking level {level} is not supported for this model."
    if not body.get("contents"):
        return "* GenerateContentRequest.contents: contents is not specified"
    return None


def _success(model: str, text: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 10,
            "totalTokenCount": 20,
        },
        "modelVersion": model,
        "responseId": "fake-response",
    }


Answer = tuple[int, dict[str, Any]]


def _route(fake: FakeGemini, path: str, headers: dict[str, str], raw: bytes) -> Answer | None:
    """The status and JSON body for one request (None: the fake is stopping, answer nothing)."""
    match = _PATH.match(path.split("?", maxsplit=1)[0])
    if match is None or match["method"] != "generateContent":
        return 404, error_body(404, f"unknown path {path}")
    if match["version"] != GEMINI_API_VERSION:
        # only the pinned version exists here: an SDK that changes its default fails the tests
        return 404, error_body(404, f"API version {match['version']} is not served here")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return 400, error_body(400, "Invalid JSON payload received.")
    model = match["model"]
    fake.record(RecordedRequest(path, model, headers, body))
    if model in fake.retired:
        return 404, model_gone(model).body or {}
    invalid = request_error(model, body)
    if invalid is not None:
        return 400, error_body(400, invalid)
    return _scripted(fake, model, body)


def _scripted(fake: FakeGemini, model: str, body: dict[str, Any]) -> Answer | None:
    fault = fake.next_fault()
    if fault is not None and fault.delay_s and fake.stopping.wait(fault.delay_s):
        return None
    if fault is not None and fault.body is not None:
        return fault.status, fault.body
    if fault is not None and fault.status != 200:
        return fault.status, error_body(fault.status, "error")
    return 200, _success(model, _candidate_text(body, fault))


def _handler(fake_ref: list[FakeGemini]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep test output clean

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nothing to answer

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            answer = _route(fake_ref[0], self.path, dict(self.headers.items()), raw)
            if answer is not None:
                self._send(*answer)

    return Handler


def start(retired: set[str] | None = None) -> FakeGemini:
    """Serve the fake on a free loopback port in a background thread."""
    holder: list[FakeGemini] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-gemini", daemon=True)
    fake = FakeGemini(server=server, thread=thread, retired=set(retired or ()))
    holder.append(fake)
    thread.start()
    return fake


def running() -> Iterator[FakeGemini]:
    """For a pytest fixture: ``yield from running()``."""
    fake = start()
    try:
        yield fake
    finally:
        fake.stop()
