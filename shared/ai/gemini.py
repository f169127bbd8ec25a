"""``GeminiWriter``: asks Gemini (google-genai) for a result's narrative as structured JSON.

Code has already built every fact and number; Gemini gets them as text and returns only the
small ``Narrative`` schema (title, summary, explanations per item, actions), which
``merge_narrative`` checks against the facts. Errors are classified for the processor:

- 429 and 408/5xx are retried here with exponential backoff, honouring the server's
  ``google.rpc.RetryInfo`` delay (or ``Retry-After``); when retries run out, or the wait would
  overrun the deadline, ``AIError(retryable=True, retry_after=...)``.
- Timeouts and connection failures: retried, then ``AIError(retryable=True)``; a timeout cut
  short by the job's deadline is ``DeadlineExceeded``.
- Other 4xx (bad request, bad key, no permission, unknown model): ``AIError(retryable=False)``.
- Output that is not valid JSON for the schema (or no output at all): retried, then
  ``AIError(retryable=False)`` -- the same prompt would most likely fail the same way again.

This module imports google-genai; only the processor path imports it (``writer_from_settings``).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from shared.ai.lang import Language
from shared.ai.render import render_markdown
from shared.ai.results import AIResult, Narrative, items_of
from shared.errors import AIError, DeadlineExceeded
from shared.settings import AISettings

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Keep this much of the deadline for formatting and storing the result.
DEADLINE_MARGIN_S = 1.0
MIN_TIMEOUT_S = 1.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Timeout and transport exceptions of httpx and of httpx2 (the fork google-genai prefers
    when it is installed)."""
    timeouts: list[type[BaseException]] = [httpx.TimeoutException]
    transport: list[type[BaseException]] = [httpx.TransportError]
    try:
        fork = importlib.import_module("httpx2")
    except ImportError:
        fork = None
    if fork is not None:
        timeouts.append(fork.TimeoutException)
        transport.append(fork.TransportError)
    return tuple(timeouts), tuple(transport)


TIMEOUT_ERRORS, TRANSPORT_ERRORS = _transport_errors()


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``$ref`` s expanded: small, and accepted by every Gemini version."""
    defs = schema.get("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return expand(defs[node["$ref"].split("/")[-1]])
            # drop "title" annotations (strings), not a property called "title"
            return {
                k: expand(v)
                for k, v in node.items()
                if k != "$defs" and not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    result: dict[str, Any] = expand(schema)
    return result


NARRATIVE_SCHEMA = {
    k: v
    for k, v in _inline_refs(Narrative.model_json_schema(by_alias=True)).items()
    if k != "description"  # the class docstring is for us, not the model
}


def retry_delay(error: genai_errors.APIError) -> float | None:
    """The server's retry hint: ``google.rpc.RetryInfo.retryDelay`` or ``Retry-After``."""
    details = (
        error.details.get("error", {}).get("details", []) if isinstance(error.details, dict) else []
    )
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(
            "google.rpc.RetryInfo"
        ):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    header = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def _instructions(language: Language) -> str:
    lang = "Korean (한국어)" if language == "ko" else "English"
    return (
        "You are the AI assistant of a server-monitoring dashboard. Write the prose parts of an "
        f"answer for an operator, in {lang}. The facts below were computed from the metrics; "
        "use only them. Never state a number, time or percentage that does not appear in the "
        "facts, and do not compute new numbers. Give one explanation per item id listed (what "
        "it means and why it matters), keep the summary to 3-5 sentences, and list concrete "
        "actions, most urgent first. Answer with JSON matching the schema."
    )


def _prompt(draft: AIResult, local_markdown: str) -> str:
    items = [{"id": item_id, "about": text} for item_id, text in items_of(draft)]
    return (
        f"User question: {draft.query}\n"
        f"Answer type: {draft.type.value}\n"
        f"Items to explain: {json.dumps(items, ensure_ascii=False)}\n\n"
        f"Facts (rendered from code):\n{local_markdown}"
    )


class GeminiWriter:
    """Writes the narrative with Gemini; one client per writer, created on first use."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_key = api_key
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.name = f"gemini:{model}"
        self._client: genai.Client | None = None

    @classmethod
    def from_settings(cls, settings: AISettings) -> GeminiWriter:
        if not settings.gemini_api_key:
            raise AIError("no Gemini API key configured", retryable=False)
        return cls(
            api_key=settings.gemini_api_key,
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            timeout_s=settings.gemini_timeout_s,
            max_retries=settings.gemini_max_retries,
        )

    @property
    def client(self) -> genai.Client:
        if self._client is None:
            # retries are ours (to honour RetryInfo and the deadline): the SDK makes one attempt
            options = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout_s * 1000))
            self._client = genai.Client(api_key=self.api_key, http_options=options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> GeminiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- one call

    def _timeout_for(self, deadline: float | None) -> tuple[float, bool]:
        """This attempt's timeout, and whether the deadline (not the setting) bounds it."""
        if deadline is None:
            return self.timeout_s, False
        remaining = deadline - time.monotonic() - DEADLINE_MARGIN_S
        if remaining < MIN_TIMEOUT_S:
            raise DeadlineExceeded("no time left for the model call", details={"step": "ai"})
        return min(self.timeout_s, remaining), remaining < self.timeout_s

    def _call(self, draft: AIResult, prompt: str, timeout_s: float) -> str:
        config = types.GenerateContentConfig(
            system_instruction=_instructions(draft.language),
            response_mime_type="application/json",
            response_json_schema=NARRATIVE_SCHEMA,
            temperature=0.3,
            http_options=types.HttpOptions(timeout=max(int(timeout_s * 1000), 1)),
        )
        response = self.client.models.generate_content(
            model=self.model, contents=prompt, config=config
        )
        return response.text or ""

    # ------------------------------------------------------------------------- retries

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_s * (2**attempt), self.max_backoff_s))

    def _wait_or_raise(self, delay: float, deadline: float | None, error: AIError) -> None:
        if (
            deadline is not None
            and time.monotonic() + delay + MIN_TIMEOUT_S + DEADLINE_MARGIN_S > deadline
        ):
            raise error  # the wait would overrun the job: let the queue retry later
        self.sleep(delay)

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative:
        prompt = _prompt(draft, render_markdown(draft))
        attempt = 0
        while True:
            timeout_s, bounded_by_deadline = self._timeout_for(deadline)
            try:
                text = self._call(draft, prompt, timeout_s)
                return Narrative.model_validate_json(text)
            except (ValidationError, ValueError) as exc:
                failure = AIError(
                    f"Gemini returned output that does not fit the schema: {str(exc)[:200]}",
                    retryable=False,
                    details={"reason": "malformed_output"},
                )
                delay = 0.0
            except genai_errors.APIError as exc:
                failure, delay = self._classify_api_error(exc, attempt)
            except TIMEOUT_ERRORS as exc:
                if bounded_by_deadline:
                    raise DeadlineExceeded(
                        "the model call ran into the job's deadline", details={"step": "ai"}
                    ) from exc
                failure = AIError(
                    f"Gemini did not answer within {timeout_s:g}s",
                    retryable=True,
                    details={"reason": "timeout"},
                )
                delay = self._backoff(attempt)
            except TRANSPORT_ERRORS as exc:
                failure = AIError(
                    f"cannot reach Gemini: {exc}", retryable=True, details={"reason": "network"}
                )
                delay = self._backoff(attempt)
            if not failure.retryable and failure.details.get("reason") != "malformed_output":
                raise failure
            if attempt >= self.max_retries:
                raise failure
            log.info(
                "gemini attempt %d failed (%s); retrying in %.2fs",
                attempt + 1,
                failure.message,
                delay,
            )
            self._wait_or_raise(delay, deadline, failure)
            attempt += 1

    def _classify_api_error(
        self, exc: genai_errors.APIError, attempt: int
    ) -> tuple[AIError, float]:
        status = exc.code
        message = f"Gemini error {status} {exc.status or ''}: {exc.message or ''}".strip()
        if status not in RETRYABLE_STATUS:
            return AIError(
                message, retryable=False, details={"reason": "rejected", "status": status}
            ), 0.0
        hint = retry_delay(exc)
        delay = hint if hint is not None else self._backoff(attempt)
        return AIError(
            message,
            retryable=True,
            retry_after=delay,
            details={"reason": "unavailable", "status": status},
        ), delay
