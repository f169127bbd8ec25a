"""The project's one exception hierarchy.

Every error that can reach a client maps to one HTTP status and one machine-readable
``code``; the HTTP layer (``shared.http``) turns an ``AppError`` into
``{"error": {"code", "message", "details"}}`` and never shows a stack trace.
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

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ConfigError(AppError):
    """A setting is missing or malformed; raised at start-up."""

    status = 500
    code = "config_error"


class BackendMisconfigured(AppError):
    """The database refused our credentials or lacks a function: a deployment error."""

    status = 500
    code = "backend_misconfigured"


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    code = "invalid_json"


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


class FeatureDisabled(AppError):
    status = 503
    code = "feature_disabled"


class DependencyDown(AppError):
    """The database, the queue or the model is unreachable; the caller may retry."""

    status = 503
    code = "dependency_unavailable"
    retryable = True


class DatabaseUnavailable(DependencyDown):
    code = "database_unavailable"


class QueueUnavailable(DependencyDown):
    code = "queue_unavailable"


class AIError(AppError):
    """An error from the AI work; ``retryable`` says whether another attempt may succeed."""

    status = 502
    code = "ai_error"

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
