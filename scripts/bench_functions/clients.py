"""A second floor: bare functions-framework functions making the calls DESIGN.md requires of a
create and a get, with the client libraries as their documentation shows them and nothing of
this project's code (no validation, identity, models, answer shaping, logging or own HTTP
transport):

- ``create_with_clients``: supabase-py ``create_client(url, key)`` then
  ``rpc("create_job", ...).execute()``, and google-cloud-tasks ``create_task`` of a named HTTP
  task for the processor (on an insecure channel to the emulator, as ``shared.tasks`` does);
- ``get_with_clients``: ``rpc("get_job", ...).execute()``;
- ``list_with_clients``: ``rpc("list_jobs", ...).execute()``, a page of 20 (21 asked for, as
  the list function asks one more to tell whether a next page exists);
- ``claim_with_clients``: a task's delivery claimed with ``rpc("claim_job_v3", ...)`` and
  nothing else (the benchmark points ``create_with_clients``'s tasks at it: the pickup path
  with the required clients and none of this project's code).

What these cost over the psycopg floor (``floor.py``) is the libraries' share, which no code
of ours can remove; what the project's functions cost over these is ours. Served by the
benchmark exactly as a project function is, with the local stack's settings in the
environment.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flask
import functions_framework
from google.cloud import tasks_v2
from supabase import create_client

from scripts.bench_inproc import create_args
from shared.tasks import emulator_client

USER = "bench-clients"
_supabase = create_client(os.environ["SUPABASE_URL"], os.environ["SUPABASE_SERVICE_ROLE_KEY"])
_tasks = emulator_client(os.environ["CLOUD_TASKS_EMULATOR_HOST"])
_queue = _tasks.queue_path(
    os.environ["GCP_PROJECT"], os.environ["TASKS_LOCATION"], os.environ["TASKS_QUEUE"]
)
_args = create_args(USER)


@functions_framework.http
def create_with_clients(request: flask.Request) -> flask.Response:
    body = request.get_json(silent=True) or {}
    answer: Any = _supabase.rpc("create_job", {**_args, "p_metadata": body}).execute().data
    job = answer["job"]  # create_job's OUT parameters: {"job": {...}, "created": true}
    _tasks.create_task(
        parent=_queue,
        task=tasks_v2.Task(
            name=f"{_queue}/tasks/job-{job['id']}-d1",
            http_request=tasks_v2.HttpRequest(
                http_method=tasks_v2.HttpMethod.POST,
                url=os.environ["PROCESSOR_URL"],
                headers={"Content-Type": "application/json"},
                body=json.dumps({"jobId": job["id"]}).encode(),
            ),
        ),
    )
    return flask.Response(json.dumps({"jobId": job["id"]}), 202, mimetype="application/json")


@functions_framework.http
def get_with_clients(request: flask.Request) -> flask.Response:
    data = (
        _supabase.rpc("get_job", {"p_job_id": request.path[1:], "p_user_id": USER}).execute().data
    )
    return flask.Response(json.dumps(data), 200, mimetype="application/json")


@functions_framework.http
def list_with_clients(request: flask.Request) -> flask.Response:
    data: Any = (
        _supabase.rpc(
            "list_jobs",
            {
                "p_user_id": USER,
                "p_statuses": None,
                "p_types": None,
                "p_limit": 21,
                "p_before_created_at": None,
                "p_before_id": None,
            },
        )
        .execute()
        .data
    )
    return flask.Response(json.dumps(data[:20]), 200, mimetype="application/json")


@functions_framework.http
def claim_with_clients(request: flask.Request) -> flask.Response:
    job_id = (request.get_json(silent=True) or {})["jobId"]
    params = {"p_job_id": job_id, "p_dispatch": 1, "p_lease_seconds": 600}
    data: Any = _supabase.rpc("claim_job_v3", params).execute().data
    return flask.Response(
        json.dumps({"outcome": data["outcome"]}), 200, mimetype="application/json"
    )
