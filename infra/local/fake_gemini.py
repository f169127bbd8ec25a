"""A fake Gemini API on loopback for tests: answers ``google-genai``'s ``generateContent``.

``start()`` serves ``POST /{version}/models/{model}:generateContent`` on 127.0.0.1 (a free port,
background thread) and returns a ``FakeGemini`` with ``.base_url`` (pass it as
``HttpOptions(base_url=...)`` or ``GEMINI_BASE_URL``) and ``.stop()``; it is also a context
manager. By default every call succeeds with a JSON instance generated from the request's
``responseJsonSchema`` (or OpenAPI-style ``responseSchema``), so any structured request works
unscripted. ``push(...)`` queues what the next calls get instead: a 429 with a
``google.rpc.RetryInfo`` delay, a 5xx, a 4xx, malformed JSON text, a slow answer, or a fixed
answer. ``requests`` records every request received.
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
    body: dict[str, Any] | None = None  #: the JSON body for an HTTP error
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


def rate_limited(retry_delay_s: float = 0.1) -> Fault:
    """HTTP 429 with a ``google.rpc.RetryInfo`` delay, like the real API's quota errors."""
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay_s:g}s"},
    ]
    return Fault(status=429, body=error_body(429, "You exceeded your current quota.", details))


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
            fake = fake_ref[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            match = _PATH.match(self.path.split("?")[0])
            if match is None or match["method"] != "generateContent":
                self._send(404, error_body(404, f"unknown path {self.path}"))
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, error_body(400, "Invalid JSON payload received."))
                return
            fake.record(
                RecordedRequest(self.path, match["model"], dict(self.headers.items()), body)
            )
            fault = fake.next_fault()
            if fault is not None and fault.delay_s and fake.stopping.wait(fault.delay_s):
                return
            if fault is not None and fault.status != 200:
                self._send(fault.status, fault.body or error_body(fault.status, "error"))
                return
            self._send(200, _success(match["model"], _candidate_text(body, fault)))

    return Handler


def start() -> FakeGemini:
    """Serve the fake on a free loopback port in a background thread."""
    holder: list[FakeGemini] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-gemini", daemon=True)
    fake = FakeGemini(server=server, thread=thread)
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
