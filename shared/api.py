"""The client-facing handlers: create, get, list and cancel jobs (the API in infra/openapi.yaml).

Each ``functions/<name>/main.py`` exposes one of these; they parse and validate, call the
store, the queue or the router, and shape the response. The state machine is in SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime

import flask

from shared import errors
from shared.functions import GET
from shared.http import (
    dump_json_bytes,
    json_response,
    json_text_response,
    parse_job_id,
    parse_json,
    parse_model,
    path_job_id,
    read_json,
)
from shared.identity import caller_id
from shared.jobs import (
    CreateJobRequest,
    Job,
    JobLog,
    JobStatus,
    JobType,
    wire_without_results,
)
from shared.settings import Settings
from shared.store import get_store
from shared.tasks import dispatch_or_release, get_queue

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_INTEGER = re.compile(r"^-?[0-9]+$")
MAX_PAGE = 100


def poll_url(settings: Settings, job_id: uuid.UUID) -> str:
    return GET.url(settings.public_base_url, str(job_id))


def _idempotency_key(request: flask.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise errors.ValidationFailed(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            details={"header": "Idempotency-Key"},
        )
    return key


def _request_hash(create: CreateJobRequest) -> str:
    canonical = json.dumps(create.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_job(request: flask.Request, settings: Settings) -> flask.Response:
    from shared.ai import router

    create = parse_model(CreateJobRequest, read_json(request, settings))
    user_id = caller_id(request, settings)
    key = _idempotency_key(request)
    routed = router.classify(create.query, settings.ai)

    if settings.enable_complexity_routing and routed.level.value == "simple":
        simple = router.answer_simple(create.query, settings.ai)
        return json_response(
            {
                "mode": "sync",
                "status": "completed",
                "complexity": routed.level.value,
                "answer": simple.answer,
                "data": simple.data,
            }
        )
    job_type = create.type or JobType(routed.job_type)
    if not settings.enable_job_queue:
        return _answer_synchronously(create.query, job_type, settings)

    created = get_store(settings).create_job(
        user_id=user_id,
        job_type=job_type.value,
        query=create.query,
        priority=create.options.priority.value,
        idempotency_key=key,
        request_hash=_request_hash(create) if key else None,
        complexity=routed.level.value,
        complexity_score=routed.score,
        estimated_seconds=routed.estimated_seconds,
        metadata=create.metadata,
        max_attempts=settings.max_attempts,
        max_per_minute=settings.max_jobs_per_minute,
        max_active=settings.max_active_jobs,
    )
    if created.created:  # first: the task's pickup waits for nothing the answer needs
        _dispatch(created.job_id, created.dispatch_count, settings)
    job = created.job
    url = poll_url(settings, job.id)
    headers = {"Location": url}
    if not created.created:
        headers["Idempotent-Replayed"] = "true"
    body = {
        "jobId": str(job.id),
        "status": job.status.value,
        "type": job.type.value,
        "priority": job.priority.value,
        "complexity": routed.level.value,
        "pollUrl": url,
        "pollIntervalSeconds": settings.poll_interval_s,
        "estimatedTime": job.estimated_seconds,
        "createdAt": job.created_at.isoformat(),
    }
    return json_response(body, 202, headers)


def _dispatch(job_id: uuid.UUID, dispatch: int, settings: Settings) -> None:
    """Nudge the processor. The row is the source of truth: if the queue is down, the job
    stays queued and the reaper dispatches it later, so the client still gets its 202."""
    dispatch_or_release(get_queue(settings), get_store(settings), job_id, dispatch)


def _answer_synchronously(query: str, job_type: JobType, settings: Settings) -> flask.Response:
    """ENABLE_JOB_QUEUE=false: the seed's rollback to answering in the request itself."""
    import time

    from shared.ai import pipeline

    deadline = time.monotonic() + min(settings.job_deadline_s, 50.0)
    result = pipeline.run(
        query, job_type, lambda _p, _s: True, settings=settings.ai, deadline=deadline
    )
    return json_response(
        {
            "mode": "sync",
            "status": "completed",
            "type": job_type.value,
            "result": result.model_dump(mode="json", by_alias=True),
        }
    )


def _etag(raw: bytes) -> str:
    """The ETag of a get's answer: a digest of the very bytes sent, so the body is serialized
    once (the same job and logs always serialize alike: the fields in model order, jsonb
    keys in Postgres's order)."""
    return f'"{hashlib.sha256(raw).hexdigest()[:32]}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def get_job(request: flask.Request, settings: Settings) -> flask.Response:
    job_id = parse_job_id(path_job_id(request))
    user_id = caller_id(request, settings)
    store = get_store(settings)
    logs: list[JobLog] | None = None
    if request.args.get("logs", "").lower() in {"1", "true"}:
        after = _int_arg(request, "logsAfter", 0, minimum=0, maximum=2**62)
        # one round trip for the job and its logs (get_job_with_logs), not two
        found = store.get_job_with_logs(job_id, user_id, after_id=after)
        job, logs = found.job, found.logs
    else:
        job = store.get_job(job_id, user_id)
    body = job.wire()
    headers: dict[str, str] = {}
    if not job.status.is_final:
        body["pollIntervalSeconds"] = settings.poll_interval_s
        headers["X-Poll-Interval"] = str(settings.poll_interval_s)
    if logs is not None:
        body["logs"] = [
            log.model_dump(mode="json", by_alias=True, exclude={"job_id"}) for log in logs
        ]
    raw = dump_json_bytes(body)
    etag = _etag(raw)
    headers["ETag"] = etag
    if _matches(request.headers.get("If-None-Match"), etag):
        response = flask.Response(status=304)
        response.headers.update({"Cache-Control": "no-store", **headers})
        return response
    return json_text_response(raw, 200, headers)


def _int_arg(request: flask.Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() would also take "", " 5", "5_0" and "٥", which no schema allows
    if not _INTEGER.fullmatch(raw) or len(raw) > 20:
        raise errors.ValidationFailed(f"{name} must be an integer", details={"field": name})
    value = int(raw)
    if not minimum <= value <= maximum:
        raise errors.ValidationFailed(
            f"{name} must be between {minimum} and {maximum}", details={"field": name}
        )
    return value


def _enum_list(
    request: flask.Request, name: str, allowed: type[JobStatus] | type[JobType]
) -> list[str] | None:
    raw = request.args.get(name)
    if not raw:
        return None
    values = raw.split(",")  # exact values: what the OpenAPI pattern describes
    valid = {member.value for member in allowed}
    unknown = [value for value in values if value not in valid]
    if unknown:
        raise errors.ValidationFailed(
            f"unknown {name}: {', '.join(unknown)}",
            details={"field": name, "allowed": sorted(valid)},
        )
    return values


#: A cursor this service writes is about 100 characters; anything much longer is not one.
MAX_CURSOR_CHARS = 200


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.astimezone(UTC).isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor points after, or 400 ``invalid_cursor``.

    The instant comes back in UTC: a client-made offset such as +23:59 is valid in Python but
    out of Postgres's range, and Postgres's message must never reach the client."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("cursor too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = parse_json(base64.urlsafe_b64decode(padded), max_depth=1)
        if not isinstance(parts, list) or len(parts) != 2:
            raise ValueError("a cursor is a pair")
        created_at, job_id = parts
        if not isinstance(created_at, str) or not isinstance(job_id, str):
            raise ValueError("cursor parts must be strings")
        instant = datetime.fromisoformat(created_at)
        if instant.tzinfo is None:
            raise ValueError("the cursor's time has no offset")
        return instant.astimezone(UTC), uuid.UUID(job_id)
    except (ValueError, TypeError, OverflowError, binascii.Error, errors.BadRequest):
        raise errors.InvalidCursor("the cursor is not valid", details={"field": "cursor"}) from None


def list_jobs(request: flask.Request, settings: Settings) -> flask.Response:
    user_id = caller_id(request, settings)
    statuses = _enum_list(request, "status", JobStatus)
    types = _enum_list(request, "type", JobType)
    limit = _int_arg(request, "limit", 20, minimum=1, maximum=MAX_PAGE)
    cursor = request.args.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    page = get_store(settings).list_jobs(
        user_id, statuses=statuses, types=types, limit=limit, before=before
    )
    return json_response(
        {
            "jobs": wire_without_results(page.jobs),
            "nextCursor": encode_cursor(page.jobs[-1]) if page.has_more and page.jobs else None,
        }
    )


def cancel_job(request: flask.Request, settings: Settings) -> flask.Response:
    body = read_json(request, settings) if request.method == "POST" else {}
    unknown = set(body) - {"jobId", "reason"}
    if unknown:
        raise errors.ValidationFailed(
            "unknown field",
            details={
                "errors": [{"field": f[:100], "message": "unknown field"} for f in sorted(unknown)]
            },
        )
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise errors.ValidationFailed("reason must be a string of at most 500 characters")
    job_id = parse_job_id(body.get("jobId") or path_job_id(request))
    user_id = caller_id(request, settings)
    job = get_store(settings).cancel_job(job_id, user_id, reason)
    # The pending task would find nothing to do; deleting it saves a delivery.
    get_queue(settings).delete(job.id, job.dispatch_count)
    return json_response(job.wire())
