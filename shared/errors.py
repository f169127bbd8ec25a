"""The project's one exception hierarchy.

Every error that can reach a client maps to one HTTP status and one machine-readable
``code``; the HTTP layer (``shared.http.error_response``) turns an ``AppError`` into
``{"error": {"code", "message", "details"}}`` (a 5xx carries only ``code`` and the class's
``public_message``) and never shows a stack trace.
Errors raised inside the AI work also say whether the processor should let Cloud Tasks
retry (``retryable``).
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error the project raises on purpose."""

    status: int = 500
    code: str = "internal"
    retryable: bool = False
    #: What a client is told for a 5xx: a fixed sentence per class. The instance's message
    #: and details may carry backend text, so they go to the log only (shared.http).
    public_message: str = "internal error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ConfigError(AppError):
    """A setting is missing or malformed; raised at start-up."""

    status = 500
    code = "config_error"
    public_message = "the service is misconfigured"


class BackendMisconfigured(AppError):
    """The database refused our credentials or lacks a function: a deployment error."""

    status = 500
    code = "backend_misconfigured"
    public_message = "the service is misconfigured"


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    """Not JSON as RFC 8259 defines it (syntax, encoding, NaN/Infinity)."""

    code = "invalid_json"


class JsonTooDeep(BadRequest):
    """JSON that nests more arrays/objects than the API accepts (shared.http.MAX_JSON_DEPTH)."""

    code = "json_too_deep"


class UnsupportedJsonValue(BadRequest):
    """Valid JSON the API cannot store or send back: a number beyond a double, a lone
    surrogate, or a NUL character (Postgres text and jsonb reject both)."""

    code = "unsupported_json_value"


class IncompleteBody(BadRequest):
    """The body could not be read whole: shorter than its Content-Length, broken chunked
    framing, or the client went away. Nothing is done with a partial body."""

    code = "incomplete_body"


class ValidationFailed(BadRequest):
    code = "validation_failed"


class InvalidId(BadRequest):
    code = "invalid_id"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"


class Conflict(AppError):
    status = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class IllegalTransition(Conflict):
    """The job is not in a state that allows the change (e.g. cancelling a finished job)."""

    code = "illegal_state"


class LeaseLost(Conflict):
    """The worker's lease token no longer matches: another attempt owns the job."""

    code = "lease_lost"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(AppError):
    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int = 60, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class DependencyDown(AppError):
    """The database, the queue or the model is unreachable; the caller may retry."""

    status = 503
    code = "dependency_unavailable"
    retryable = True
    public_message = "a service this one depends on is unavailable; retry later"


class DatabaseUnavailable(DependencyDown):
    code = "database_unavailable"
    public_message = "the database is unavailable; retry later"


class QueueUnavailable(DependencyDown):
    code = "queue_unavailable"
    public_message = "the task queue is unavailable; retry later"


class AIError(AppError):
    """An error from the AI work; ``retryable`` says whether another attempt may succeed."""

    status = 502
    code = "ai_error"
    public_message = "the AI model failed to answer"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.retryable = retryable
        self.retry_after = retry_after


class JobCancelled(AppError):
    """Raised inside the pipeline when the job was cancelled; the worker stops quietly."""

    status = 409
    code = "job_cancelled"


class DeadlineExceeded(AppError):
    """The run's own deadline passed; ends the work cleanly before the platform kills it."""

    status = 504
    code = "deadline_exceeded"
    retryable = True
    public_message = "the work ran out of time"
