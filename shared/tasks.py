"""Dispatch to the processor through Cloud Tasks (``google-cloud-tasks``).

One queue (``TASKS_QUEUE``): priority is stored on the job and shown to clients, but at this
volume a queue per priority would only split the concurrency budget; the queue's retry
configuration (deploy.sh) is what matters. Each task is named from the job id and its
dispatch number, so enqueueing the same dispatch twice is harmless (ALREADY_EXISTS), and a
re-dispatch by the reaper gets a fresh name (Cloud Tasks keeps tombstones of used names).

With ``CLOUD_TASKS_EMULATOR_HOST`` set, the same client talks to the local emulator over an
insecure gRPC channel; nothing else changes.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from typing import TYPE_CHECKING, Any

from shared import errors, logs

if TYPE_CHECKING:
    from shared.settings import Settings

#: Header carrying PROCESSOR_SHARED_SECRET inside each task (checked by the processor).
SECRET_HEADER = "X-AI-Jobs-Secret"
_RPC_TIMEOUT_S = 5.0


def task_id(job_id: uuid.UUID, dispatch: int) -> str:
    return f"job-{job_id}-d{dispatch}"


class TaskQueue:
    """Creates and deletes the processor's tasks; the client is created lazily, once."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def queue_path(self) -> str:
        s = self._settings
        return f"projects/{s.project_id}/locations/{s.tasks_location}/queues/{s.tasks_queue}"

    def task_path(self, job_id: uuid.UUID, dispatch: int) -> str:
        return f"{self.queue_path}/tasks/{task_id(job_id, dispatch)}"

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        host = self._settings.tasks_emulator_host
        if host:
            return emulator_client(host)
        from google.cloud import tasks_v2

        return tasks_v2.CloudTasksClient()

    def _reset_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    def enqueue(self, job_id: uuid.UUID, dispatch: int, *, budget_s: float = 2.0) -> str:
        """Create the task for this dispatch of the job; returns the task name.

        Retrying is safe because the task is named: a retry after a lost reply gets
        ALREADY_EXISTS, which counts as success. ``budget_s`` bounds the whole call (short on
        the create path, where the reaper is the fallback)."""
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry
        from google.cloud import tasks_v2
        from google.protobuf import duration_pb2

        s = self._settings
        headers = {"Content-Type": "application/json"}
        if s.processor_secret:
            headers[SECRET_HEADER] = s.processor_secret
        http_request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=s.processor_url,
            headers=headers,
            body=json.dumps({"jobId": str(job_id), "dispatch": dispatch}).encode(),
        )
        if s.tasks_invoker_sa:
            http_request.oidc_token = tasks_v2.OidcToken(
                service_account_email=s.tasks_invoker_sa,
                audience=s.oidc_audience or s.processor_url,
            )
        task = tasks_v2.Task(
            name=self.task_path(job_id, dispatch),
            http_request=http_request,
            dispatch_deadline=duration_pb2.Duration(seconds=s.dispatch_deadline_s),
        )
        try:
            created = self.client.create_task(
                parent=self.queue_path,
                task=task,
                timeout=min(_RPC_TIMEOUT_S, budget_s),
                retry=gretry.Retry(
                    initial=0.1,
                    maximum=1.0,
                    timeout=budget_s,
                    predicate=gretry.if_exception_type(
                        gexc.ServiceUnavailable, gexc.DeadlineExceeded
                    ),
                ),
            )
        except gexc.AlreadyExists:
            return task.name  # this dispatch was enqueued before: nothing to do
        except gexc.GoogleAPIError as exc:
            self._reset_client()  # a fresh channel next time, not one stuck in backoff
            raise errors.QueueUnavailable(
                "the task queue is unavailable", details={"upstream": type(exc).__name__}
            ) from None
        return str(created.name)

    def delete(self, job_id: uuid.UUID, dispatch: int) -> bool:
        """Delete a pending task (on cancel); best effort, False if it was not there."""
        from google.api_core import exceptions as gexc

        try:
            self.client.delete_task(
                name=self.task_path(job_id, dispatch), timeout=_RPC_TIMEOUT_S, retry=None
            )
        except gexc.NotFound:
            return False
        except gexc.GoogleAPIError as exc:
            logs.warning("could not delete task", jobId=str(job_id), error=type(exc).__name__)
            return False
        return True


def emulator_client(host: str) -> Any:
    """The real Cloud Tasks client on an insecure channel to the emulator at ``host``."""
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    # Reconnect quickly after the emulator restarts (gRPC's default backoff reaches 120 s).
    channel = grpc.insecure_channel(
        host,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@functools.lru_cache(maxsize=1)
def get_queue(settings: Settings) -> TaskQueue:
    """The process-wide queue client (lazy global, reused across invocations)."""
    return TaskQueue(settings)
