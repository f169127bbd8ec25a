"""The job store: one method per SQL function, called with the real ``supabase`` client.

The state machine lives in the database (``infra/supabase/migrations``); this module only
names the calls, converts rows into ``shared.jobs`` models and maps PostgREST errors onto
the project's exceptions. The client is created lazily, once per process (a Cloud Functions
instance reuses it across invocations).
"""

from __future__ import annotations

import functools
import http.cookiejar
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import errors, logs
from shared.jobs import Job, JobLog, jobs_from_rows

if TYPE_CHECKING:
    from postgrest.exceptions import APIError
    from supabase import Client

    from shared.settings import Settings

#: SQL error messages (see the migration's header) -> exception classes.
_SQL_ERRORS: dict[str, type[errors.AppError]] = {
    "job_not_found": errors.JobNotFound,
    "illegal_state": errors.IllegalTransition,
    "lease_lost": errors.LeaseLost,
    "idempotency_conflict": errors.IdempotencyConflict,
    "invalid_argument": errors.ValidationFailed,
}
#: Rows per reaper sweep / purge batch: well below Supabase's db-max-rows (1000), which
#: truncates an RPC's result silently.
REAP_BATCH = 100
PURGE_BATCH = 500
_UNAVAILABLE_PREFIXES = ("PGRST000", "PGRST001", "PGRST002", "08", "53", "57P", "5")
#: Wrong key or project, or migrations not applied: no caller can fix this by retrying.
#: PGRST301 (undecodable token), PGRST302 (no token), PGRST303 (invalid claims, such as an
#: expired key: PostgREST v13+), 42501 (no privilege), PGRST202/203 and 42883 (no such function).
_MISCONFIGURED_CODES = frozenset(
    {"PGRST301", "PGRST302", "PGRST303", "PGRST202", "PGRST203", "42501", "42883"}
)
#: No such function: PostgREST's schema cache lacks it (PGRST202), or Postgres does (42883).
_NO_SUCH_FUNCTION = frozenset({"PGRST202", "42883"})
#: After complete_job_v3 was found missing, completions go straight to v2 for this long
#: before v3 is tried again (the migration adding it may land in the meantime).
V3_RETRY_AFTER_S = 60.0
# Supabase's API gateway refuses a missing or unknown key before PostgREST, with a message and
# no code (supabase/supabase docker/volumes/api/kong.yml; supabase-py issue 1228).
_KEY_REFUSALS = frozenset({"Invalid API key", "No API key found in request"})

# Supabase's PostgREST logs in as authenticator, whose statement_timeout (and lock_timeout) is
# 8 s for every API role (supabase/postgres, migrations/db/migrations/
# 20221028101028_set_authenticator_timeout.sql), and waits up to its db-pool-acquisition-timeout
# (10 s) for a connection before the statement starts. The client waits longer than both, so
# it never gives up on a call the server may still commit: it hears the commit or the timeout.
SERVER_STATEMENT_TIMEOUT_S = 8.0
SERVER_POOL_ACQUISITION_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = SERVER_POOL_ACQUISITION_TIMEOUT_S + SERVER_STATEMENT_TIMEOUT_S + 2.0
CLIENT_CONNECT_TIMEOUT_S = 5.0


def _details(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {"details": raw}
        return parsed if isinstance(parsed, dict) else {"details": raw}
    return {} if raw is None else {"details": raw}


def _client_error(exc: Exception) -> errors.AppError | None:
    """The project's error for a failed ``rpc()`` call: PostgREST's answer (``APIError``), or
    no answer at all (any ``httpx.HTTPError``); None for anything else (a bug: it propagates)."""
    import httpx
    from postgrest.exceptions import APIError

    if isinstance(exc, APIError):
        return map_api_error(exc)
    if isinstance(exc, httpx.HTTPError):
        return errors.DatabaseUnavailable(
            "the database is unavailable", details={"upstream": type(exc).__name__}
        )
    return None


def _is_missing_role(code: str, message: str) -> bool:
    # PostgREST v13 passes through Postgres's 22023 when the key's role does not exist
    # (answering 401, its issue 3601); any other 22023 is the caller's bad value.
    return code == "22023" and message.startswith("role") and message.endswith("does not exist")


def map_api_error(error: APIError) -> errors.AppError:
    """Turn a PostgREST error (code = SQLSTATE or PGRSTxxx) into the project's exception."""
    code = str(error.code or "")
    message = str(error.message or "")
    details = _details(error.details)
    human = str(error.hint or message)
    if code in {"PT429"}:
        return errors.RateLimited(
            human,
            retry_after=int(details.get("retryAfter", 60)),
            details={"reason": message, **details},
        )
    if code.startswith("PT") and message in _SQL_ERRORS:
        return _SQL_ERRORS[message](human, details=details)
    if code in _MISCONFIGURED_CODES or _is_missing_role(code, message) or message in _KEY_REFUSALS:
        return errors.BackendMisconfigured(
            "the database rejected the call", details={"upstream": code, "message": message}
        )
    if code.startswith("22"):  # data exception, e.g. invalid input syntax for a uuid
        # Postgres's own words (e.g. "time zone displacement out of range") stay out of the body
        return errors.ValidationFailed("the database refused a value", details={"sqlstate": code})
    if code.startswith(_UNAVAILABLE_PREFIXES):
        return errors.DatabaseUnavailable("the database is unavailable", details={"upstream": code})
    return errors.AppError(
        "unexpected database error", details={"upstream": code, "message": message}
    )


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing, for the store's ``httpx.Client`` (the client's
    ``cookies`` option, https://www.python-httpx.org/api/ "Client"; httpx 0.28's ``Cookies``
    uses a ``CookieJar`` given there as its jar and files every answer's ``Set-Cookie`` in it).

    The data API is called with the service key on every request: nothing it could set in a
    cookie is ever needed again (supabase-js, on a server, calls it with ``fetch``, which keeps
    no cookies either). Filing an answer's cookies costs httpx a copy of its headers as an
    ``email.message.Message`` and the jar's lock, on every call, found or not: about 100 us
    between the answer's arrival and the ``CreateTask`` of a new job, one job at a time
    (scripts/bench_pickup.py's hop), 7 us per call in a hot loop."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Keep none of the answer's cookies."""


class CreatedJob:
    """What ``create_job`` answered: the job's id, its dispatch number and whether it was
    created now (False: an Idempotency-Key replay returned the existing job) are read from the
    answer at once; the whole row is validated into ``job`` when first asked for.

    A task is named by the id and the dispatch number alone, so the create path enqueues it
    before the row is validated: the task's pickup does not wait for that (the client's answer,
    made from ``job`` after, is the same)."""

    __slots__ = ("_job", "_row", "created", "dispatch_count", "job_id")

    def __init__(self, job: Job | dict[str, Any], created: bool) -> None:
        self.created = created
        self._row: dict[str, Any] | None = None
        self._job: Job | None = None
        if isinstance(job, Job):
            self._job = job
            self.job_id, self.dispatch_count = job.id, job.dispatch_count
        else:  # a row of ai_jobs as the database sent it
            self._row = job
            try:
                self.job_id = uuid.UUID(job["id"])
                dispatch = job["dispatch_count"]
                if type(dispatch) is not int:
                    raise TypeError(f"dispatch_count is {type(dispatch).__name__}")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # nothing to enqueue by: a schema this code does not know (a deployment error)
                raise _unreadable_row(None, exc) from None
            self.dispatch_count = dispatch

    @property
    def job(self) -> Job:
        if self._job is None:
            try:
                self._job = Job.model_validate(self._row)
            except ValueError as exc:  # pydantic's ValidationError is one
                # The job exists (and its task may be sent): the log names it, so the run
                # that follows is not a mystery; the client is told the service is broken.
                raise _unreadable_row(self.job_id, exc) from None
        return self._job


def _unreadable_row(job_id: uuid.UUID | None, exc: Exception) -> errors.BackendMisconfigured:
    return errors.BackendMisconfigured(
        "create_job answered a row this code cannot read",
        details={"jobId": str(job_id) if job_id else None, "error": str(exc)[:500]},
    )


@dataclass(frozen=True)
class ReapedJob:
    job_id: uuid.UUID
    action: str  #: "dispatch" (task may be lost), "redispatch" (lease expired) or "failed"
    dispatch_count: int  #: the job's current dispatch number (its task may still be pending)
    attempts: int


@dataclass(frozen=True)
class JobWithLogs:
    job: Job
    logs: list[JobLog]  #: the job's log lines after the id asked for, oldest first


@dataclass(frozen=True)
class Claim:
    """What a delivery's claim found (``claim_job_v3``)."""

    outcome: str  #: "claimed", "stale_dispatch", "nothing_to_do" or "not_found"
    job: Job | None  #: the claimed job, when claimed
    current_dispatch: int | None  #: the job's dispatch number now (None: no such job)


#: A progress step as the pipeline reports it: (percent, step message).
Step = tuple[int, str]


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    has_more: bool


class JobStore:
    """Calls the SQL functions through PostgREST (``supabase.rpc``)."""

    def __init__(self, url: str, service_key: str, *, timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        self._url = url
        self._key = service_key
        self._timeout_s = timeout_s
        self._client: Client | None = None
        self._lock = threading.Lock()
        #: time.monotonic() until which complete_job_v3 is taken to be missing
        self._v3_missing_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(settings.supabase_url, settings.supabase_service_key)

    @property
    def client(self) -> Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import httpx
                    from supabase import ClientOptions, create_client

                    from shared.transport import KeepAliveTransport

                    self._client = create_client(
                        self._url,
                        self._key,
                        options=ClientOptions(
                            # one pooled HTTP client per process, waiting longer than
                            # the server may work on a call (CLIENT_TIMEOUT_S); its requests
                            # go out through shared/transport.py's own HTTP/1.1 framing
                            # (less CPU per rpc() call than httpx's transport or http.client)
                            httpx_client=httpx.Client(
                                transport=KeepAliveTransport(),
                                cookies=NoCookies(),
                                timeout=httpx.Timeout(
                                    self._timeout_s,
                                    connect=min(CLIENT_CONNECT_TIMEOUT_S, self._timeout_s),
                                ),
                            ),
                            auto_refresh_token=False,
                            persist_session=False,
                        ),
                    )
        return self._client

    def rpc(self, function: str, params: dict[str, Any]) -> Any:
        # the client libraries' error classes are looked up only on a failure: an import
        # statement per call is a few microseconds before every request goes out (a claim's
        # among them, on the way from a task's delivery to its job's start)
        try:
            return self.client.rpc(function, params).execute().data
        except Exception as exc:
            mapped = _client_error(exc)
            if mapped is None:
                raise
            raise mapped from None

    # --- clients' operations -------------------------------------------------------------

    def create_job(
        self,
        *,
        user_id: str,
        job_type: str,
        query: str,
        priority: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        complexity: str | None = None,
        complexity_score: float | None = None,
        estimated_seconds: int | None = None,
        metadata: dict[str, Any] | None = None,
        max_attempts: int,
        max_per_minute: int,
        max_active: int,
    ) -> CreatedJob:
        """``max_*`` are settings (MAX_ATTEMPTS, MAX_JOBS_PER_MINUTE, MAX_ACTIVE_JOBS): the caller
        passes them from ``Settings``, their one declaration."""
        data = self.rpc(
            "create_job",
            {
                "p_user_id": user_id,
                "p_type": job_type,
                "p_query": query,
                "p_priority": priority,
                "p_idempotency_key": idempotency_key,
                "p_request_hash": request_hash,
                "p_complexity": complexity,
                "p_complexity_score": complexity_score,
                "p_estimated_seconds": estimated_seconds,
                "p_metadata": metadata or {},
                "p_max_attempts": max_attempts,
                "p_max_per_minute": max_per_minute,
                "p_max_active": max_active,
            },
        )
        return CreatedJob(job=data["job"], created=bool(data["created"]))

    def release_dispatch(self, job_id: uuid.UUID, dispatch: int | None = None) -> bool:
        """Undo dispatch ``dispatch`` (its enqueue failed) so the next sweep dispatches the job;
        False when the job has moved on (claimed, or dispatched again). Without a number, the
        v1 call undoes whatever dispatch is current (kept for callers not yet updated)."""
        if dispatch is None:
            return bool(self.rpc("release_dispatch", {"p_job_id": str(job_id)}))
        return bool(
            self.rpc("release_dispatch_v2", {"p_job_id": str(job_id), "p_dispatch": dispatch})
        )

    def next_dispatch(self, job_id: uuid.UUID, dispatch: int, delay_s: float = 0.0) -> int | None:
        """The job's next dispatch number after ``dispatch`` (never reused), for a task due in
        ``delay_s``; None when the job is not queued or someone else moved it on."""
        data = self.rpc(
            "next_dispatch",
            {"p_job_id": str(job_id), "p_dispatch": dispatch, "p_delay_seconds": delay_s},
        )
        return None if data is None else int(data)

    def get_job(self, job_id: uuid.UUID, user_id: str | None = None) -> Job:
        return Job.model_validate(
            self.rpc("get_job", {"p_job_id": str(job_id), "p_user_id": user_id})
        )

    def list_jobs(
        self,
        user_id: str,
        *,
        statuses: list[str] | None = None,
        types: list[str] | None = None,
        limit: int = 20,
        before: tuple[datetime, uuid.UUID] | None = None,
    ) -> JobPage:
        rows = self.rpc(
            "list_jobs",
            {
                "p_user_id": user_id,
                "p_statuses": statuses,
                "p_types": types,
                "p_limit": limit + 1,  # one more tells whether a next page exists
                "p_before_created_at": before[0].isoformat() if before else None,
                "p_before_id": str(before[1]) if before else None,
            },
        )
        jobs = jobs_from_rows(rows)
        return JobPage(jobs=jobs[:limit], has_more=len(jobs) > limit)

    def get_job_with_logs(
        self, job_id: uuid.UUID, user_id: str | None = None, *, after_id: int = 0, limit: int = 100
    ) -> JobWithLogs:
        """The job and its log lines after ``after_id`` in one round trip (a poll with
        ``?logs=true``)."""
        data = self.rpc(
            "get_job_with_logs",
            {
                "p_job_id": str(job_id),
                "p_user_id": user_id,
                "p_after_id": after_id,
                "p_limit": limit,
            },
        )
        return JobWithLogs(
            job=Job.model_validate(data["job"]),
            logs=[JobLog.model_validate(row) for row in data["logs"]],
        )

    def cancel_job(
        self, job_id: uuid.UUID, user_id: str | None = None, reason: str | None = None
    ) -> Job:
        return Job.model_validate(
            self.rpc(
                "cancel_job",
                {"p_job_id": str(job_id), "p_user_id": user_id, "p_reason": reason},
            )
        )

    # --- the worker's operations ---------------------------------------------------------

    def claim_delivery(self, job_id: uuid.UUID, dispatch: int | None, lease_seconds: int) -> Claim:
        """Claim the job for the delivery of its task ``dispatch``; a delivery of any other
        number (an older task delivered late) is refused as ``stale_dispatch``."""
        data = self.rpc(
            "claim_job_v3",
            {"p_job_id": str(job_id), "p_dispatch": dispatch, "p_lease_seconds": lease_seconds},
        )
        row = data.get("job") or {}
        return Claim(
            outcome=str(data["outcome"]),
            # a null composite comes back as null or as an object of nulls
            job=Job.model_validate(row) if row.get("id") is not None else None,
            current_dispatch=data.get("current_dispatch"),
        )

    def report_steps(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, steps: list[Step], lease_seconds: int
    ) -> bool:
        """Record the steps reached since the last write (one log row each) and extend the
        lease; False means the job was cancelled and the worker must stop."""
        return bool(
            self.rpc(
                "report_progress_v2",
                {
                    "p_job_id": str(job_id),
                    "p_lease_token": str(lease_token),
                    "p_steps": _steps_json(steps),
                    "p_lease_seconds": lease_seconds,
                },
            )
        )

    def extend_lease(self, job_id: uuid.UUID, lease_token: uuid.UUID, lease_seconds: int) -> bool:
        """Heartbeat; False means the caller no longer holds the lease."""
        return bool(
            self.rpc(
                "extend_lease",
                {
                    "p_job_id": str(job_id),
                    "p_lease_token": str(lease_token),
                    "p_lease_seconds": lease_seconds,
                },
            )
        )

    def complete_job(
        self,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        result_json: str,
        steps: list[Step],
    ) -> Job:
        """Complete the job with its result as JSON text (serialized once, by the caller's
        model; complete_job_v3 casts it to jsonb); ``steps`` not yet written are logged in the
        same call, first. The returned job leaves the stored result out."""
        if time.monotonic() >= self._v3_missing_until:
            try:
                return Job.model_validate(
                    self.rpc(
                        "complete_job_v3",
                        {
                            "p_job_id": str(job_id),
                            "p_lease_token": str(lease_token),
                            "p_result_json": result_json,
                            "p_steps": _steps_json(steps),
                        },
                    )
                )
            except errors.BackendMisconfigured as exc:
                if exc.details.get("upstream") not in _NO_SUCH_FUNCTION:
                    raise
                # code deployed before the migration adding v3 was pushed (deploy.sh pushes
                # them first, unless --skip-migrations): v2 (the result as jsonb) completes the
                # job. Nothing ran in the refused call. Remembered for a while, so that each
                # completion of that window does not pay a refused round trip first.
                self._v3_missing_until = time.monotonic() + V3_RETRY_AFTER_S
                logs.warning(
                    "complete_job_v3 is missing: completing with complete_job_v2",
                    retryAfterS=V3_RETRY_AFTER_S,
                    upstream=exc.details.get("upstream"),
                )
        data = self.rpc(
            "complete_job_v2",
            {
                "p_job_id": str(job_id),
                "p_lease_token": str(lease_token),
                "p_result": json.loads(result_json),
                "p_steps": _steps_json(steps),
            },
        )
        return Job.model_validate(data)

    def fail_job(
        self,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        error: str,
        *,
        error_code: str = "internal",
        retryable: bool = False,
    ) -> Job:
        return Job.model_validate(
            self.rpc(
                "fail_job",
                {
                    "p_job_id": str(job_id),
                    "p_lease_token": str(lease_token),
                    "p_error": error,
                    "p_error_code": error_code,
                    "p_retryable": retryable,
                },
            )
        )

    # --- the reaper ----------------------------------------------------------------------

    def reap_jobs(self, queued_grace_s: int, limit: int = REAP_BATCH) -> list[ReapedJob]:
        """One sweep: every job it changed (at most ``limit``, below the API's row cap); a full
        batch means the caller should sweep again."""
        rows = self.rpc(
            "reap_jobs_v2", {"p_queued_grace_seconds": queued_grace_s, "p_limit": limit}
        )
        return [
            ReapedJob(
                job_id=uuid.UUID(row["job_id"]),
                action=row["action"],
                dispatch_count=row["dispatch_count"],
                attempts=row["attempts"],
            )
            for row in rows
        ]

    def purge_jobs(self, retention_days: int, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` old finished jobs; returns how many (== limit: purge again)."""
        return int(self.rpc("purge_jobs", {"p_retention_days": retention_days, "p_limit": limit}))


def _steps_json(steps: list[Step]) -> list[dict[str, Any]]:
    return [{"progress": progress, "step": step} for progress, step in steps]


@functools.lru_cache(maxsize=1)
def get_store(settings: Settings) -> JobStore:
    """The process-wide store (lazy global, reused across invocations)."""
    return JobStore.from_settings(settings)
