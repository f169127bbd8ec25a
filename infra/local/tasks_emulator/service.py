"""The `google.cloud.tasks.v2.CloudTasks` gRPC service, wired to the engine.

`google-cloud-tasks` ships only the client, so the server side is a table of the same method
paths and protobuf messages the client's transport uses (`transports/grpc.py`), served by
`grpc_server.UnaryGrpcServer`. Methods the emulator does not offer (IAM, batch, CMEK) are
answered UNIMPLEMENTED as gRPC answers a method it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import tasks_v2
from google.protobuf import empty_pb2

from infra.local.tasks_emulator.engine import Engine
from infra.local.tasks_emulator.grpc_server import UnaryMethod
from infra.local.tasks_emulator.model import (
    QUEUE_STATE_PAUSED,
    QUEUE_STATE_RUNNING,
    VIEW_BASIC,
    VIEW_FULL,
    invalid,
)

SERVICE_NAME = "google.cloud.tasks.v2.CloudTasks"
_MAX_QUEUE_PAGE = 9800
_MAX_TASK_PAGE = 1000
# ListQueues filters the emulator understands: "state: PAUSED", "state=RUNNING".
_STATE_FILTER = re.compile(r"^\s*state\s*[:=]\s*(?P<state>[A-Z_]+)\s*$")

Handler = Callable[[Any], Any]


def _pb(message_type: Any) -> Any:
    """The raw protobuf class behind a proto-plus message class."""
    return message_type.pb()


def _page(items: Sequence[Any], page_size: int, page_token: str, max_page: int) -> tuple[Any, str]:
    """Slice a listing; the token is the offset of the next page, as opaque to clients."""
    if page_size < 0:
        raise invalid("page_size must not be negative")
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise invalid(f"page_token {page_token!r} is not one this server issued") from None
    size = min(page_size or max_page, max_page)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")


def _view(task: Any, requested: int) -> Any:
    """Apply a response_view: BASIC (the default) leaves out the request body."""
    view = requested or VIEW_BASIC
    task.view = view
    if view != VIEW_FULL:
        task.http_request.ClearField("body")
    return task


def _state_filter(text: str) -> int | None:
    if not text.strip():
        return None
    match = _STATE_FILTER.match(text)
    states = {"RUNNING": QUEUE_STATE_RUNNING, "PAUSED": QUEUE_STATE_PAUSED}
    if not match or match["state"] not in states:
        raise invalid(f"filter {text!r} is not supported by the emulator (only 'state: STATE')")
    return states[match["state"]]


class CloudTasksService:
    """One method per RPC, each taking and returning raw protobuf messages."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_queue(self, request: Any) -> Any:
        return self._engine.create_queue(request.parent, request.queue)

    def update_queue(self, request: Any) -> Any:
        return self._engine.update_queue(request.queue, list(request.update_mask.paths))

    def get_queue(self, request: Any) -> Any:
        return self._engine.get_queue(request.name)

    def list_queues(self, request: Any) -> Any:
        queues = self._engine.list_queues(request.parent, _state_filter(request.filter))
        page, token = _page(queues, request.page_size, request.page_token, _MAX_QUEUE_PAGE)
        return _pb(tasks_v2.ListQueuesResponse)(queues=page, next_page_token=token)

    def delete_queue(self, request: Any) -> Any:
        self._engine.delete_queue(request.name)
        return empty_pb2.Empty()

    def purge_queue(self, request: Any) -> Any:
        return self._engine.purge_queue(request.name)

    def pause_queue(self, request: Any) -> Any:
        return self._engine.set_queue_state(request.name, QUEUE_STATE_PAUSED)

    def resume_queue(self, request: Any) -> Any:
        return self._engine.set_queue_state(request.name, QUEUE_STATE_RUNNING)

    def create_task(self, request: Any) -> Any:
        task = self._engine.create_task(request.parent, request.task)
        return _view(task, request.response_view)

    def get_task(self, request: Any) -> Any:
        return _view(self._engine.get_task(request.name), request.response_view)

    def list_tasks(self, request: Any) -> Any:
        tasks = self._engine.list_tasks(request.parent)
        page, token = _page(tasks, request.page_size, request.page_token, _MAX_TASK_PAGE)
        shown = [_view(task, request.response_view) for task in page]
        return _pb(tasks_v2.ListTasksResponse)(tasks=shown, next_page_token=token)

    def delete_task(self, request: Any) -> Any:
        self._engine.delete_task(request.name)
        return empty_pb2.Empty()

    def run_task(self, request: Any) -> Any:
        return _view(self._engine.run_task(request.name), request.response_view)

    def methods(self) -> dict[str, tuple[Handler, Any]]:
        """RPC method name → (implementation, request protobuf class)."""
        return {
            "CreateQueue": (self.create_queue, _pb(tasks_v2.CreateQueueRequest)),
            "UpdateQueue": (self.update_queue, _pb(tasks_v2.UpdateQueueRequest)),
            "GetQueue": (self.get_queue, _pb(tasks_v2.GetQueueRequest)),
            "ListQueues": (self.list_queues, _pb(tasks_v2.ListQueuesRequest)),
            "DeleteQueue": (self.delete_queue, _pb(tasks_v2.DeleteQueueRequest)),
            "PurgeQueue": (self.purge_queue, _pb(tasks_v2.PurgeQueueRequest)),
            "PauseQueue": (self.pause_queue, _pb(tasks_v2.PauseQueueRequest)),
            "ResumeQueue": (self.resume_queue, _pb(tasks_v2.ResumeQueueRequest)),
            "CreateTask": (self.create_task, _pb(tasks_v2.CreateTaskRequest)),
            "GetTask": (self.get_task, _pb(tasks_v2.GetTaskRequest)),
            "ListTasks": (self.list_tasks, _pb(tasks_v2.ListTasksRequest)),
            "DeleteTask": (self.delete_task, _pb(tasks_v2.DeleteTaskRequest)),
            "RunTask": (self.run_task, _pb(tasks_v2.RunTaskRequest)),
        }


def grpc_methods(engine: Engine) -> dict[str, UnaryMethod]:
    """The service's methods by gRPC path, for `grpc_server.UnaryGrpcServer`; a method's
    `EmulatorError` ends its call with the error's status."""
    service = CloudTasksService(engine)
    return {
        f"/{SERVICE_NAME}/{name}": UnaryMethod(implementation, request_class)
        for name, (implementation, request_class) in service.methods().items()
    }
