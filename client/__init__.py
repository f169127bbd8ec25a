"""A small Python client for the job queue: one base URL, the function names appended.

    from client import AIJobsClient
    with AIJobsClient("https://asia-northeast1-PROJECT.cloudfunctions.net") as jobs:
        created = jobs.create("모든 서버 분석하고 최적화 리포트 만들어줘")
        job = jobs.wait(created["jobId"], on_update=print)

It speaks the public HTTP API (README "The API") and raises ``APIError`` with the error
``code`` for any 4xx or 5xx. ``watch`` follows a job: through Supabase Realtime when the
client has a Supabase session (``AIJobsClient.signed_in``: an anonymous sign-in, so the jobs
are the visitor's own and RLS lets Realtime show them), else by polling with
``If-None-Match``; the same job documents and log lines either way. ``python -m client`` is
the same as a command line.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from shared.functions import CANCEL, CREATE, GET, LIST

FINAL = frozenset({"completed", "failed", "cancelled"})
#: with Realtime, read anyway after this long without an event (a socket that died quietly)
REALTIME_SAFETY_READ_S = 15.0

Pause = Callable[[float], object]


class APIError(Exception):
    """An error answer: ``status``, the machine-readable ``code``, ``message`` and ``details``."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class AIJobsClient:
    def __init__(
        self,
        base_url: str,
        *,
        user_id: str | None = None,
        bearer_token: str | None = None,
        supabase_url: str | None = None,
        supabase_anon_key: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.bearer_token = bearer_token
        self.supabase_url = supabase_url
        self.supabase_anon_key = supabase_anon_key
        #: the Realtime signal of the last ``watch`` (the benchmark reads its receive times)
        self.last_signal: Any = None
        headers = {}
        if user_id:
            headers["X-User-Id"] = user_id
        if bearer_token:
            headers["Authorization"] = f"Bearer {bearer_token}"
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    @classmethod
    def signed_in(
        cls,
        base_url: str,
        supabase_url: str,
        supabase_anon_key: str,
        *,
        session_file: Path | None = None,
        **options: Any,
    ) -> AIJobsClient:
        """A client acting as an anonymous Supabase user (``signInAnonymously``), whose access
        token identifies it to the functions and to Realtime.

        With ``session_file`` the same visitor comes back on the next run, as a browser's
        stored session does: a saved access token still valid for a minute is used as is, an
        older one is refreshed (``grant_type=refresh_token``), and only when neither works is
        there a new sign-in; the session in use is written back."""
        from supabase import ClientOptions, create_client

        with httpx.Client(timeout=30) as session:
            auth = create_client(
                supabase_url, supabase_anon_key, ClientOptions(httpx_client=session)
            ).auth
            token = _resume(auth, session_file) if session_file else None
            if token is None:
                signed = auth.sign_in_anonymously().session
                if signed is None:
                    raise APIError(401, "no_session", "anonymous sign-in gave no session", {})
                token = signed.access_token
                if session_file:
                    _save(session_file, signed.access_token, signed.refresh_token)
        return cls(
            base_url,
            bearer_token=token,
            supabase_url=supabase_url,
            supabase_anon_key=supabase_anon_key,
            **options,
        )

    def __enter__(self) -> AIJobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200], "details": {}}
            raise APIError(
                response.status_code, error["code"], error["message"], error.get("details") or {}
            )
        return dict(response.json())

    def create(
        self,
        query: str,
        *,
        job_type: str | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """202 body (``jobId``, ``pollUrl``, …) for a job, or the 200 synchronous answer."""
        body: dict[str, Any] = {"query": query}
        if job_type:
            body["type"] = job_type
        if priority:
            body["options"] = {"priority": priority}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self._http.post(CREATE.path(), json=body, headers=headers))

    def get(self, job_id: str, *, logs_after: int | None = None) -> dict[str, Any]:
        params: dict[str, str | int] = {}
        if logs_after is not None:
            params = {"logs": "true", "logsAfter": logs_after}
        return self._json(self._http.get(GET.path(job_id), params=params))

    def list(
        self, *, status: str | None = None, job_type: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every job of the caller, newest first, following the cursor page by page."""
        params: dict[str, Any] = {"limit": 100}
        if status:
            params["status"] = status
        if job_type:
            params["type"] = job_type
        while True:
            page = self._json(self._http.get(LIST.path(), params=params))
            yield from page["jobs"]
            if not page["nextCursor"]:
                return
            params["cursor"] = page["nextCursor"]

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"jobId": job_id}
        if reason:
            body["reason"] = reason
        return self._json(self._http.post(CANCEL.path(), json=body))

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        poll_interval_s: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is final (every ``poll_interval_s``, else the server's
        suggestion); ``on_update`` sees each change, ``on_log`` each new log line."""
        return self._follow(
            job_id,
            timeout_s,
            pushed=None,
            poll_interval_s=poll_interval_s,
            on_update=on_update,
            on_log=on_log,
        )

    def watch(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the job to its final state: pushed by Realtime when this client has a
        Supabase session, else polled. Subscribe first, then read, then follow, so the final
        state can never fall between the read and the subscription."""
        if not (self.bearer_token and self.supabase_url and self.supabase_anon_key):
            return self.wait(job_id, timeout_s=timeout_s, on_update=on_update, on_log=on_log)
        from client.realtime import JobSignal

        signal = JobSignal(self.supabase_url, self.supabase_anon_key, self.bearer_token, job_id)
        try:
            signal.__enter__()
        except ConnectionError:
            return self.wait(job_id, timeout_s=timeout_s, on_update=on_update, on_log=on_log)
        self.last_signal = signal
        try:
            return self._follow(
                job_id,
                timeout_s,
                pushed=signal.wait,
                poll_interval_s=None,
                on_update=on_update,
                on_log=on_log,
            )
        finally:
            signal.close()

    def _follow(
        self,
        job_id: str,
        timeout_s: float,
        *,
        pushed: Pause | None,
        poll_interval_s: float | None,
        on_update: Callable[[dict[str, Any]], None] | None,
        on_log: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        etag: str | None = None
        last_log = 0
        while time.monotonic() < deadline:
            headers = {"If-None-Match": etag} if etag else {}
            response = self._http.get(
                GET.path(job_id),
                params={"logs": "true", "logsAfter": last_log},
                headers=headers,
            )
            if response.status_code != 304:
                job = self._json(response)
                etag = response.headers.get("ETag")
                for line in job.pop("logs", []):
                    last_log = max(last_log, int(line["id"]))
                    if on_log:
                        on_log(line)
                if on_update:
                    on_update(job)
                if job["status"] in FINAL:
                    return job
            left = max(deadline - time.monotonic(), 0)
            if pushed is not None:
                pushed(min(REALTIME_SAFETY_READ_S, left))
            else:
                interval = poll_interval_s or float(response.headers.get("X-Poll-Interval", "3"))
                time.sleep(min(interval, left))
        raise TimeoutError(f"job {job_id} did not finish in {timeout_s:.0f}s")


def format_log_line(line: dict[str, Any]) -> str:
    progress = "" if line.get("progress") is None else f"{line['progress']:3d}% "
    step, message = line.get("step") or "", line.get("message") or ""
    text = step if message == step else f"{step}: {message}"
    return f"  [{line['createdAt'][11:23]}] {progress}{text}"


def print_log_line(line: dict[str, Any]) -> None:
    print(format_log_line(line), flush=True)


def follow(jobs: AIJobsClient, job_id: str, poll_interval_s: float | None = None) -> int:
    """Show the job live (a progress bar with the step name, and each log line), then the
    result (exit code 0) or the error (1). Realtime when ``jobs`` has a Supabase session and
    no poll interval is forced, else polling."""
    from client.progress import live_progress

    with live_progress() as (on_update, on_log):
        if poll_interval_s is None:
            job = jobs.watch(job_id, on_update=on_update, on_log=on_log)
        else:
            job = jobs.wait(
                job_id, poll_interval_s=poll_interval_s, on_update=on_update, on_log=on_log
            )
    print(f"\njob {job_id}: {job['status']} after {job['attempts']} attempt(s)\n")
    if job["status"] == "completed":
        print(job["result"]["markdown"])
        return 0
    print(f"{job.get('errorCode')}: {job.get('error')}", file=sys.stderr)
    return 1


def _save(path: Path, access_token: str, refresh_token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"access_token": access_token, "refresh_token": refresh_token}))
    path.chmod(0o600)  # a bearer token: for this user only


def _resume(auth: Any, path: Path) -> str | None:
    """The saved visitor's access token (refreshed when near expiry), or None."""
    try:
        saved = json.loads(path.read_text())
        access, refresh = str(saved["access_token"]), str(saved["refresh_token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _expires_at(access) > time.time() + 60:
        return access
    try:
        renewed = auth.refresh_session(refresh).session
    except Exception:  # a spent refresh token, a restarted stack: sign in anew
        return None
    if renewed is None:
        return None
    _save(path, renewed.access_token, renewed.refresh_token)
    return str(renewed.access_token)


def _expires_at(token: str) -> float:
    """The token's ``exp`` (unverified: the server checks it; this only avoids a stale one)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0
