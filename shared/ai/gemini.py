"""``GeminiWriter``: asks Gemini (google-genai) for a result's narrative as structured JSON.

Code has already built every fact and number; Gemini gets them as text and returns only the
small ``Narrative`` schema (title, summary, explanations per item, actions), which
``merge_narrative`` checks against the facts.

The request follows the model's own guidance (https://ai.google.dev/gemini-api/docs/gemini-3):
no ``temperature`` (Gemini 3 is tuned for its default; lower values can loop), a deliberate
thinking level (``low``: prose from computed facts, latency-bound) and ``maxOutputTokens``
(which thinking tokens count against), on the pinned API version ``GEMINI_API_VERSION``.

Errors are classified for the pipeline and the processor (``details["reason"]``):

- 429 per-minute and 408/5xx: retried here with exponential backoff, honouring the server's
  ``google.rpc.RetryInfo`` delay; when retries run out, or the wait would overrun the deadline,
  ``AIError(retryable=True, retry_after=...)``.
- 429 for a daily quota or a quota of 0 (``google.rpc.QuotaFailure``): not waited for in the
  call; ``AIError(retryable=True, retry_after=<server hint>, reason="quota_exhausted")`` at once,
  so the processor schedules the job's next attempt.
- Timeouts and connection failures: retried, then ``AIError(retryable=True)``; a timeout cut
  short by the job's deadline is ``DeadlineExceeded``.
- 404 (model unknown or shut down): ``model_unavailable``; other 4xx (bad request, bad key, no
  permission): ``rejected``. Both permanent.
- An answer that stopped for another reason than ``STOP``: a blocked prompt
  (``promptFeedback.blockReason``) or ``finishReason`` SAFETY / RECITATION / BLOCKLIST /
  PROHIBITED_CONTENT / SPII / ... is ``blocked``; ``MAX_TOKENS`` is ``max_tokens``; anything
  else ``stopped``. All permanent and never retried: the same prompt stops the same way.
- Output that stopped normally but does not fit the schema (or is empty): retried in place
  (it varies between calls), then ``malformed_output``, permanent.

This module imports google-genai; only the processor path imports it (``writer_from_settings``).
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from shared import logs
from shared.ai.lang import Language
from shared.ai.render import render_markdown
from shared.ai.results import AIResult, Narrative, items_of
from shared.errors import AIError, DeadlineExceeded
from shared.settings import DEFAULT_GEMINI_MODEL, GEMINI_API_VERSION, AISettings

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Keep this much of the deadline for formatting and storing the result.
DEADLINE_MARGIN_S = 1.0
MIN_TIMEOUT_S = 1.0
#: A daily or zero quota whose error carries no RetryInfo: try again in an hour.
QUOTA_RETRY_DEFAULT_S = 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_LIMIT_ZERO = re.compile(r"\blimit:\s*0\b")

#: finishReason values that mean "the content was refused", per
#: https://ai.google.dev/api/generate-content#FinishReason
BLOCKED_FINISH = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
_NORMAL_FINISH = frozenset({"STOP", "FINISH_REASON_UNSPECIFIED", ""})


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


# ----------------------------------------------------------------------------- error bodies


def _error_details(error: genai_errors.APIError) -> list[dict[str, Any]]:
    """The ``google.rpc`` details of an API error body, or nothing."""
    body = error.details if isinstance(error.details, dict) else {}
    details = body.get("error", {}).get("details", []) if isinstance(body, dict) else []
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _of_type(details: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in details if str(d.get("@type", "")).endswith(f"google.rpc.{name}")]


def retry_delay(error: genai_errors.APIError) -> float | None:
    """The server's retry hint: ``google.rpc.RetryInfo.retryDelay`` or ``Retry-After``."""
    for detail in _of_type(_error_details(error), "RetryInfo"):
        match = _DURATION.match(str(detail.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    header = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def quota_kind(error: genai_errors.APIError) -> str | None:
    """``"zero"`` (the project has no quota for the model), ``"daily"`` (a per-day quota is
    used up) or ``None`` (a short-window quota, worth a brief wait), from the 429's
    ``google.rpc.QuotaFailure`` / ``ErrorInfo`` details and message
    (https://ai.google.dev/gemini-api/docs/rate-limits)."""
    details = _error_details(error)
    violations = [
        v
        for failure in _of_type(details, "QuotaFailure")
        for v in failure.get("violations", [])
        if isinstance(v, dict)
    ]
    limits = [str(v.get("quotaValue", "")) for v in violations] + [
        str(info.get("metadata", {}).get("quota_limit_value", ""))
        for info in _of_type(details, "ErrorInfo")
        if isinstance(info.get("metadata"), dict)
    ]
    if "0" in limits or _LIMIT_ZERO.search(error.message or ""):
        return "zero"
    if any("PerDay" in str(v.get("quotaId", "")) for v in violations):
        return "daily"
    return None


# ----------------------------------------------------------------------------- the request


def _instructions(language: Language) -> str:
    lang = "Korean (한국어)" if language == "ko" else "English"
    return (
        "You are the AI assistant of a server-monitoring dashboard. Write the prose parts of an "
        f"answer for an operator, in {lang}. The facts below were computed from the metrics; "
        "base every statement on them and perform no calculations of your own. Give one "
        "explanation per item id listed (what it means and why it matters), keep the summary to "
        "3-5 sentences, and list concrete actions, most urgent first. Answer with JSON matching "
        "the schema. Never state a number, time or percentage that does not appear in the facts. "
        "Keep the facts' words for direction (a metric that fell reached a low, not a peak) and "
        "name each event at the time the facts give it."
    )


def _prompt(draft: AIResult, local_markdown: str) -> str:
    items = [{"id": item_id, "about": text} for item_id, text in items_of(draft)]
    return (
        f"User question: {draft.query}\n"
        f"Answer type: {draft.type.value}\n"
        f"Items to explain: {json.dumps(items, ensure_ascii=False)}\n\n"
        f"Facts (rendered from code):\n{local_markdown}"
    )


#: Gemini 2.5 takes a token budget instead of a level
#: (https://ai.google.dev/gemini-api/docs/generate-content/thinking).
_BUDGET_FOR_LEVEL = {"minimal": 0, "low": 1024, "medium": 4096, "high": -1}


def thinking_config(model: str, level: str) -> types.ThinkingConfig:
    """``thinkingLevel`` for Gemini 3 models, ``thinkingBudget`` for 2.x (never both: the API
    rejects a request with both)."""
    if model.startswith("gemini-2"):
        return types.ThinkingConfig(thinking_budget=_BUDGET_FOR_LEVEL[level])
    return types.ThinkingConfig(thinking_level=types.ThinkingLevel(level.upper()))


# ----------------------------------------------------------------------------- reading answers


#: What a job's owner reads when Gemini answers an error (the upstream text is only logged).
_PUBLIC_MESSAGE = {
    "model_unavailable": "Gemini model {model} is not available (HTTP {status})",
    "rejected": "Gemini refused the request (HTTP {status}); the server log has its reason",
    "quota_exhausted": "Gemini's quota for {model} is used up (HTTP {status})",
    "unavailable": "Gemini is unavailable or overloaded (HTTP {status})",
}


def _reason(response: types.GenerateContentResponse) -> tuple[str, str] | None:
    """(reason code, message) when the answer did not stop normally; None when it did."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        block = str(getattr(feedback.block_reason, "value", feedback.block_reason))
        return "blocked", f"Gemini blocked the prompt ({block})"
    if not response.candidates:
        return None
    finish = response.candidates[0].finish_reason
    name = str(getattr(finish, "value", finish or ""))
    if name in _NORMAL_FINISH:
        return None
    if name == "MAX_TOKENS":
        usage = response.usage_metadata
        thoughts = usage.thoughts_token_count if usage is not None else None
        return "max_tokens", (
            f"Gemini hit maxOutputTokens before finishing (thinking used {thoughts} tokens)"
        )
    if name in BLOCKED_FINISH:
        return "blocked", f"Gemini stopped the answer ({name})"
    return "stopped", f"Gemini stopped the answer ({name})"


def _text(response: types.GenerateContentResponse) -> str:
    """The answer's text parts (thought summaries excluded)."""
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    return "".join(p.text for p in parts if p.text and not p.thought)


def read_narrative(response: types.GenerateContentResponse) -> Narrative:
    """The narrative in a response, or the ``AIError`` that says why there is none."""
    stopped = _reason(response)
    if stopped is not None:
        code, message = stopped
        raise AIError(message, retryable=False, details={"reason": code})
    text = _text(response)
    try:
        return Narrative.model_validate_json(text)
    except (ValidationError, ValueError) as exc:
        # the validation text quotes the model's output: log it, do not store it on the job
        logs.warning("gemini output does not fit the schema", error=str(exc)[:500])
        raise AIError(
            "Gemini returned output that does not fit the answer's schema",
            retryable=False,
            details={"reason": "malformed_output"},
        ) from exc


class _Failure(NamedTuple):
    error: AIError
    delay_s: float  #: how long to wait before the next call, when there is one


class GeminiWriter:
    """Writes the narrative with Gemini; one client per writer, created on first use and kept
    for the life of the process (``writer_from_settings`` caches the writer)."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_GEMINI_MODEL,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        thinking_level: str = "low",
        max_output_tokens: int = 8192,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_key = api_key
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.thinking_level = thinking_level
        self.max_output_tokens = max_output_tokens
        self.sleep = sleep
        self.name = f"gemini:{model}"
        self._client: genai.Client | None = None
        self._lock = threading.Lock()

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
            thinking_level=settings.gemini_thinking_level,
            max_output_tokens=settings.gemini_max_output_tokens,
        )

    @property
    def client(self) -> genai.Client:
        # Under a lock: the processor runs several jobs per instance, and a second client made
        # by a racing thread would replace the first, whose ``__del__`` then closes the HTTP
        # client that the first thread's call is still using ("the client has been closed").
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # retries are ours (RetryInfo and the deadline): the SDK makes one attempt
                    options = types.HttpOptions(
                        base_url=self.base_url,
                        api_version=GEMINI_API_VERSION,
                        timeout=int(self.timeout_s * 1000),
                    )
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

    def config(self, language: Language, timeout_s: float) -> types.GenerateContentConfig:
        """The request's configuration; no ``temperature``: Gemini 3 is tuned for its default."""
        return types.GenerateContentConfig(
            system_instruction=_instructions(language),
            response_mime_type="application/json",
            response_json_schema=NARRATIVE_SCHEMA,
            thinking_config=thinking_config(self.model, self.thinking_level),
            max_output_tokens=self.max_output_tokens,
            http_options=types.HttpOptions(
                api_version=GEMINI_API_VERSION, timeout=max(int(timeout_s * 1000), 1)
            ),
        )

    def _call(self, draft: AIResult, prompt: str, timeout_s: float) -> Narrative:
        response = self.client.models.generate_content(
            model=self.model, contents=prompt, config=self.config(draft.language, timeout_s)
        )
        return read_narrative(response)

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

    def _attempt(
        self, draft: AIResult, prompt: str, deadline: float | None, attempt: int
    ) -> Narrative | _Failure:
        """One call: the narrative, or the failure and how long to wait before the next."""
        timeout_s, bounded_by_deadline = self._timeout_for(deadline)
        try:
            return self._call(draft, prompt, timeout_s)
        except AIError as exc:
            return _Failure(exc, 0.0)
        except genai_errors.APIError as exc:
            return self._classify_api_error(exc, attempt)
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
            return _Failure(failure, self._backoff(attempt))
        except TRANSPORT_ERRORS as exc:
            failure = AIError(
                f"cannot reach Gemini: {exc}", retryable=True, details={"reason": "network"}
            )
            return _Failure(failure, self._backoff(attempt))

    def write(self, draft: AIResult, *, deadline: float | None = None) -> Narrative:
        prompt = _prompt(draft, render_markdown(draft))
        attempt = 0
        while True:
            outcome = self._attempt(draft, prompt, deadline, attempt)
            if isinstance(outcome, Narrative):
                return outcome
            failure, delay = outcome
            reason = failure.details.get("reason")
            # output varies between calls, so malformed JSON is worth another try; a refusal,
            # a token limit or a daily quota is not (the same call ends the same way)
            worth_retrying = reason == "malformed_output" or (
                failure.retryable and reason != "quota_exhausted"
            )
            if not worth_retrying or attempt >= self.max_retries:
                raise failure
            logs.info(
                "gemini attempt failed; retrying",
                model=self.model,
                attempt=attempt + 1,
                reason=reason,
                error=failure.message,
                retryInS=round(delay, 2),
            )
            self._wait_or_raise(delay, deadline, failure)
            attempt += 1

    def _classify_api_error(self, exc: genai_errors.APIError, attempt: int) -> _Failure:
        status = exc.code
        # Google's own text can name the project or the key's state: it goes to the log, and
        # the job (which its owner reads) gets our sentence with the status
        logs.warning(
            "gemini answered an error",
            model=self.model,
            status=status,
            statusName=exc.status,
            upstream=(exc.message or "")[:500],
        )
        if status not in RETRYABLE_STATUS:
            reason = "model_unavailable" if status == 404 else "rejected"
            message = _PUBLIC_MESSAGE[reason].format(model=self.model, status=status)
            return _Failure(
                AIError(message, retryable=False, details={"reason": reason, "status": status}),
                0.0,
            )
        hint = retry_delay(exc)
        quota = quota_kind(exc) if status == 429 else None
        message = _PUBLIC_MESSAGE["quota_exhausted" if quota else "unavailable"].format(
            model=self.model, status=status
        )
        if quota is not None:
            # a daily or zero quota does not come back within this job: hand the wait to the
            # processor (the job's next task at now + retry_after), do not sleep here
            failure = AIError(
                message,
                retryable=True,
                retry_after=hint if hint is not None else QUOTA_RETRY_DEFAULT_S,
                details={"reason": "quota_exhausted", "quota": quota, "status": status},
            )
            return _Failure(failure, 0.0)
        delay = hint if hint is not None else self._backoff(attempt)
        failure = AIError(
            message,
            retryable=True,
            retry_after=delay,
            details={"reason": "unavailable", "status": status},
        )
        return _Failure(failure, delay)
