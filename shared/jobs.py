"""The job model: types, statuses, priorities, allowed transitions and the API shapes.

No I/O here: this module imports neither the database nor any Google client. The database
enforces the same state machine (``infra/supabase/migrations``); ``TRANSITIONS`` is the
reference the tests check it against.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic.alias_generators import to_camel

#: A job id (and a Supabase Auth user id) as the API writes it: the canonical 8-4-4-4-12
#: form only (``uuid.UUID`` would also take braces, "urn:uuid:" and no hyphens), which is
#: also what RLS compares with ``auth.uid()``.
CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class JobType(enum.StrEnum):
    ANALYSIS = "analysis"  #: findings per server
    REPORT = "report"  #: incident report with root cause and actions
    OPTIMIZATION = "optimization"  #: capacity and cost recommendations
    PREDICTION = "prediction"  #: forecasts and time-to-threshold


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  #: waiting for a worker (new, or a retryable failure)
    PROCESSING = "processing"  #: a worker holds the lease
    COMPLETED = "completed"  #: result stored; final
    FAILED = "failed"  #: permanent error or attempts used up; final
    CANCELLED = "cancelled"  #: cancelled by the client; final

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class Complexity(enum.StrEnum):
    SIMPLE = "simple"  #: answered synchronously
    MEDIUM = "medium"
    COMPLEX = "complex"


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Every legal status change, named by the SQL function that makes it.
TRANSITIONS: dict[str, frozenset[tuple[JobStatus, JobStatus]]] = {
    "claim_job": frozenset(
        {
            (JobStatus.QUEUED, JobStatus.PROCESSING),
            # only when the previous lease expired
            (JobStatus.PROCESSING, JobStatus.PROCESSING),
        }
    ),
    "complete_job": frozenset({(JobStatus.PROCESSING, JobStatus.COMPLETED)}),
    "fail_job": frozenset(
        {
            (JobStatus.PROCESSING, JobStatus.FAILED),
            (JobStatus.PROCESSING, JobStatus.QUEUED),  # retryable, attempts left
        }
    ),
    "cancel_job": frozenset(
        {
            (JobStatus.QUEUED, JobStatus.CANCELLED),
            (JobStatus.PROCESSING, JobStatus.CANCELLED),
        }
    ),
    "reap_jobs": frozenset(
        {
            (JobStatus.PROCESSING, JobStatus.FAILED),  # lease expired, no attempts left
            (JobStatus.PROCESSING, JobStatus.QUEUED),  # lease expired: dispatch again
        }
    ),
}
# later versions make the same changes as the first: the sweep with dispatch numbers, the claim
# that refuses a stale delivery, the completion that writes the steps it carries
for _later, _first in (
    ("reap_jobs_v2", "reap_jobs"),
    ("claim_job_v3", "claim_job"),
    ("complete_job_v2", "complete_job"),
    ("complete_job_v3", "complete_job"),  # the result as JSON text
):
    TRANSITIONS[_later] = TRANSITIONS[_first]


def is_legal(operation: str, old: JobStatus, new: JobStatus) -> bool:
    return (old, new) in TRANSITIONS.get(operation, frozenset())


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


MAX_QUERY_CHARS = 4000
#: Metadata is the client's own: bounded so that whatever is accepted can be stored, listed
#: and sent back (jobs are listed with it, and pydantic-core's serializer stops near depth 255).
MAX_METADATA_BYTES = 4096  #: as compact UTF-8 JSON
MAX_METADATA_DEPTH = 8  #: nested objects/arrays, the metadata object itself being 1


class CreateJobOptions(WireModel):
    priority: Priority = Priority.NORMAL


class CreateJobRequest(WireModel):
    """The body of ``POST ai-jobs-create``: ``{query, type?, options?, metadata?}``."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    type: JobType | None = None
    options: CreateJobOptions = CreateJobOptions()
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("query")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("query must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if json_depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata may nest at most {MAX_METADATA_DEPTH} levels")
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value


def json_depth(value: Any) -> int:
    """How many arrays/objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth) for child in children)
    return deepest


class Job(BaseModel):
    """A row of ``ai_jobs`` as the store returns it (snake_case, every column), and as the API
    shows it (``wire``: camelCase, ``id`` as ``jobId``, the columns in ``WIRE_FIELDS``)."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=AliasGenerator(serialization_alias=to_camel)
    )

    id: uuid.UUID = Field(serialization_alias="jobId")
    user_id: str
    type: JobType
    query: str
    priority: Priority
    status: JobStatus
    progress: int
    current_step: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    complexity: Complexity | None = None
    complexity_score: float | None = None
    estimated_seconds: int | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    attempts: int = 0
    max_attempts: int  #: set from MAX_ATTEMPTS when the job is created
    lease_token: uuid.UUID | None = None
    lease_expires_at: datetime | None = None
    dispatch_count: int = 0
    dispatched_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def wire(self, *, include_result: bool = True) -> dict[str, Any]:
        """The job as the API shows it; the list leaves ``result`` out (it can be large)."""
        shown = self.model_dump(mode="json", by_alias=True, include=_WIRE_SERIALIZED)
        # result and metadata are the database's JSON, sent as they came: walking them through
        # the serializer again cost 0.2 ms per get of a finished job (a 90 KB report)
        shown["result"] = self.result if include_result else None
        shown["metadata"] = self.metadata
        return shown


#: What the API shows of a job. The owner, the lease, the dispatch bookkeeping, the request
#: hash and the router's score are the service's own.
WIRE_FIELDS = frozenset(
    {
        "id",
        "type",
        "query",
        "priority",
        "status",
        "progress",
        "current_step",
        "result",
        "error",
        "error_code",
        "attempts",
        "max_attempts",
        "complexity",
        "estimated_seconds",
        "metadata",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    }
)
_WIRE_SERIALIZED: set[str] = set(WIRE_FIELDS) - {"result", "metadata"}
#: A page of jobs is validated and shown by one serializer call each, not one per job: the
#: same models and dicts, at about four fifths of the CPU for a page of 20
#: (scripts/bench_apicpu.py).
_JOB_LIST: TypeAdapter[list[Job]] = TypeAdapter(list[Job])
_WIRE_EACH = {"__all__": _WIRE_SERIALIZED}


def jobs_from_rows(rows: list[dict[str, Any]]) -> list[Job]:
    """``[Job.model_validate(row) for row in rows]``, in one call."""
    return _JOB_LIST.validate_python(rows)


def wire_without_results(jobs: list[Job]) -> list[dict[str, Any]]:
    """``[job.wire(include_result=False) for job in jobs]`` (the same dicts, keys in the same
    order), serialized in one call."""
    shown: list[dict[str, Any]] = _JOB_LIST.dump_python(
        jobs, mode="json", by_alias=True, include=_WIRE_EACH
    )
    for item, job in zip(shown, jobs, strict=True):
        item["result"] = None
        item["metadata"] = job.metadata
    return shown


class JobLog(BaseModel):
    """A row of ``ai_job_logs`` (camelCase on the wire)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    id: int
    job_id: uuid.UUID
    attempt: int
    level: str
    progress: int | None = None
    step: str | None = None
    message: str
    data: dict[str, Any] | None = None
    created_at: datetime
