"""The Cloud Tasks emulator, driven by the real `google-cloud-tasks` client.

Each test starts its own emulator and HTTP target on free ports; timings use backoffs and
deadlines far below Cloud Tasks' minimums so the whole file runs in seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import google.auth.transport.requests
import jwt
import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.oauth2 import id_token

from infra.local.tasks_emulator import EmulatorHandle, QueueConfig, RetryPolicy, start_emulator
from infra.local.tasks_emulator.oidc import REFRESH_MARGIN_S, TOKEN_LIFETIME_S, OidcSigner
from tests.emulator.target import (
    LOCATION,
    TEST_MIN_DEADLINE_S,
    Received,
    Reply,
    Target,
    gone,
    http_task,
    make_client,
    new_queue,
    seconds,
)
from tests.support import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
RPC_INTERNAL = 13
RPC_DEADLINE_EXCEEDED = 4
SERVICE_ACCOUNT = "ai-jobs-invoker@test-project.iam.gserviceaccount.com"


# -- pure rules -----------------------------------------------------------------------------


def test_backoff_follows_the_documented_example() -> None:
    policy = RetryPolicy(
        max_attempts=-1,
        min_backoff_s=10,
        max_backoff_s=300,
        max_doublings=3,
        max_retry_duration_s=0,
    )

    intervals = [policy.backoff_s(failures) for failures in range(1, 9)]

    assert intervals == [10, 20, 40, 80, 160, 240, 300, 300]


def test_retries_stop_only_when_attempts_and_duration_are_both_spent() -> None:
    both = RetryPolicy(3, 0.1, 1, 16, max_retry_duration_s=60)
    attempts_only = RetryPolicy(3, 0.1, 1, 16, max_retry_duration_s=0)
    unlimited = RetryPolicy(-1, 0.1, 1, 16, max_retry_duration_s=0)

    assert not both.gives_up(3, since_first_attempt_s=10)
    assert both.gives_up(3, since_first_attempt_s=61)
    assert not attempts_only.gives_up(2, since_first_attempt_s=1e6)
    assert attempts_only.gives_up(3, since_first_attempt_s=0)
    assert not unlimited.gives_up(10_000, since_first_attempt_s=1e6)


# -- queues ---------------------------------------------------------------------------------


def test_queues_are_created_read_listed_paused_and_deleted(
    client: tasks_v2.CloudTasksClient,
) -> None:
    name = new_queue(client, "jobs", max_concurrent=7)
    new_queue(client, "other")

    fetched = client.get_queue(name=name)
    listed = [q.name for q in client.list_queues(parent=LOCATION)]
    paused = client.pause_queue(name=name)
    only_paused = [
        q.name for q in client.list_queues(request={"parent": LOCATION, "filter": "state: PAUSED"})
    ]
    resumed = client.resume_queue(name=name)
    updated = client.update_queue(
        queue=tasks_v2.Queue(
            name=name, rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=9)
        ),
        update_mask={"paths": ["rate_limits.max_concurrent_dispatches"]},
    )

    assert fetched.name == name
    assert fetched.rate_limits.max_concurrent_dispatches == 7
    assert fetched.rate_limits.max_dispatches_per_second == 500  # Cloud Tasks' defaults
    assert fetched.retry_config.max_attempts == 100
    assert fetched.state == tasks_v2.Queue.State.RUNNING
    assert listed == [name, f"{LOCATION}/queues/other"]
    assert paused.state == tasks_v2.Queue.State.PAUSED
    assert only_paused == [name]
    assert resumed.state == tasks_v2.Queue.State.RUNNING
    assert updated.rate_limits.max_concurrent_dispatches == 9
    assert updated.retry_config == fetched.retry_config
    with pytest.raises(exceptions.AlreadyExists):
        new_queue(client, "jobs")
    client.delete_queue(name=name)
    with pytest.raises(exceptions.NotFound):
        client.get_queue(name=name)


def test_queue_names_are_validated(client: tasks_v2.CloudTasksClient) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.get_queue(name="queues/jobs")
    with pytest.raises(exceptions.InvalidArgument):
        client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=f"{LOCATION}/queues/a_b"))
    with pytest.raises(exceptions.InvalidArgument):
        client.create_queue(
            parent="projects/other/locations/x", queue=tasks_v2.Queue(name=f"{LOCATION}/queues/a")
        )


def test_queues_can_be_created_from_python(emulator: EmulatorHandle) -> None:
    emulator.create_queue(
        QueueConfig(f"{LOCATION}/queues/pre", max_concurrent_dispatches=3, max_attempts=5)
    )

    with make_client(emulator.address) as client:
        fetched = client.get_queue(name=f"{LOCATION}/queues/pre")

    assert fetched.rate_limits.max_concurrent_dispatches == 3
    assert fetched.retry_config.max_attempts == 5


# -- tasks ----------------------------------------------------------------------------------


def test_tasks_are_created_read_listed_and_deleted(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    later = time.time() + 60
    named = client.create_task(
        parent=queue_name,
        task=http_task(
            target.url, name=f"{queue_name}/tasks/job-1-a1", body=b"{}", schedule_at=later
        ),
    )
    unnamed = client.create_task(parent=queue_name, task=http_task(target.url, schedule_at=later))

    basic = client.get_task(name=named.name)
    full = client.get_task(request={"name": named.name, "response_view": tasks_v2.Task.View.FULL})
    listed = [t.name for t in client.list_tasks(parent=queue_name)]

    assert named.name == f"{queue_name}/tasks/job-1-a1"
    assert re.fullmatch(rf"{queue_name}/tasks/[A-Za-z0-9_-]+", unnamed.name)
    assert basic.dispatch_count == 0
    assert basic.http_request.body == b""  # BASIC leaves the payload out
    assert full.http_request.body == b"{}"
    assert full.dispatch_deadline == dt.timedelta(
        seconds=600
    )  # the default deadline for HTTP tasks
    assert abs(full.schedule_time.timestamp() - later) < 0.01
    assert sorted(listed) == sorted([named.name, unnamed.name])

    client.delete_task(name=named.name)

    assert gone(client, named.name)
    assert [t.name for t in client.list_tasks(parent=queue_name)] == [unnamed.name]
    with pytest.raises(exceptions.NotFound):
        client.delete_task(name=named.name)
    with pytest.raises(exceptions.AlreadyExists):  # a deleted name stays taken
        client.create_task(parent=queue_name, task=http_task(target.url, name=named.name))
    assert target.received == []


def test_duplicate_task_name_is_already_exists(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    task = http_task(target.url, name=f"{queue_name}/tasks/job-7-attempt-1")

    client.create_task(parent=queue_name, task=task)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue_name, task=task)
    target.wait_for(1)
    wait_until(lambda: gone(client, task.name), "the completed task to be removed")

    with pytest.raises(exceptions.AlreadyExists):  # also once it has completed
        client.create_task(parent=queue_name, task=task)
    time.sleep(0.2)
    assert len(target.received) == 1


def test_bad_task_requests_are_rejected(client: tasks_v2.CloudTasksClient, target: Target) -> None:
    queue_name = new_queue(client, "jobs")
    missing = f"{LOCATION}/queues/missing"
    cases: list[tuple[str, tasks_v2.Task, type[Exception]]] = [
        (missing, http_task(target.url), exceptions.NotFound),
        (queue_name, http_task(target.url, name="job-1"), exceptions.InvalidArgument),
        (queue_name, http_task(target.url, name=f"{missing}/tasks/a"), exceptions.InvalidArgument),
        (queue_name, http_task("ftp://example.com/x"), exceptions.InvalidArgument),
        (
            queue_name,
            http_task(target.url, deadline_s=TEST_MIN_DEADLINE_S / 2),
            exceptions.InvalidArgument,
        ),
        (queue_name, http_task(target.url, deadline_s=1801), exceptions.InvalidArgument),
    ]
    get_with_body = http_task(target.url, body=b"x", method=tasks_v2.HttpMethod.GET)
    cases.append((queue_name, get_with_body, exceptions.InvalidArgument))

    for parent, task, error in cases:
        with pytest.raises(error):
            client.create_task(parent=parent, task=task)
    assert list(client.list_tasks(parent=queue_name)) == []


# -- dispatch -------------------------------------------------------------------------------


def test_dispatch_sends_the_request_with_cloud_tasks_headers(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    task = client.create_task(
        parent=queue_name,
        task=http_task(
            f"{target.url}/ai-jobs-process?x=1",
            name=f"{queue_name}/tasks/job-42",
            body=b'{"jobId": "42"}',
            headers={"X-Job-Id": "42", "User-Agent": "mine", "Host": "evil.example"},
        ),
    )
    json_task = http_task(target.url, body=b"{}", headers={"Content-Type": "application/json"})

    client.create_task(parent=queue_name, task=json_task)
    first, second = sorted(target.wait_for(2), key=lambda r: r.path != "/ai-jobs-process?x=1")

    assert first.method == "POST"
    assert first.path == "/ai-jobs-process?x=1"
    assert first.body == b'{"jobId": "42"}'
    assert first.headers["x-job-id"] == "42"
    assert first.headers["user-agent"] == "Google-Cloud-Tasks"
    assert first.headers["host"] == target.url.removeprefix("http://")
    assert "content-type" not in first.headers, "Cloud Tasks does not set it for HTTP targets"
    assert first.headers["x-cloudtasks-queuename"] == "jobs"
    assert first.headers["x-cloudtasks-taskname"] == "job-42"
    assert first.headers["x-cloudtasks-taskretrycount"] == "0"
    assert first.headers["x-cloudtasks-taskexecutioncount"] == "0"
    assert abs(float(first.headers["x-cloudtasks-tasketa"]) - task.schedule_time.timestamp()) < 1e-3
    assert "x-cloudtasks-taskpreviousresponse" not in first.headers
    assert "x-cloudtasks-taskretryreason" not in first.headers
    assert "authorization" not in first.headers
    assert second.headers["content-type"] == "application/json"
    wait_until(lambda: gone(client, task.name), "the succeeded task to be removed")


def test_dispatches_to_a_worker_that_keeps_connections_alive_share_one_connection(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    target.keep_alive_s = 30.0
    queue_name = new_queue(client, "kept-alive")
    first = client.create_task(parent=queue_name, task=http_task(target.url))
    target.wait_for(1)
    wait_until(lambda: gone(client, first.name), "the first task to be removed")

    second = client.create_task(parent=queue_name, task=http_task(target.url))
    one, two = target.wait_for(2)

    assert two.client_port == one.client_port
    assert target.closed_connections == 0
    wait_until(lambda: gone(client, second.name), "the second task to be removed")


def test_a_connection_the_worker_closed_while_idle_is_not_used_again(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    target.keep_alive_s = 0.2
    queue_name = new_queue(client, "closed-idle")
    client.create_task(parent=queue_name, task=http_task(target.url))
    target.wait_for(1)
    wait_until(lambda: target.closed_connections == 1, "the target to close the idle connection")

    second = client.create_task(parent=queue_name, task=http_task(target.url))
    one, two = target.wait_for(2)

    assert two.client_port != one.client_port
    assert two.headers["x-cloudtasks-taskretrycount"] == "0", "the first attempt went through"
    wait_until(lambda: gone(client, second.name), "the second task to be removed")


def test_a_request_the_worker_read_and_dropped_on_a_reused_connection_is_a_failed_attempt(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    # The worker read the whole request, then closed the kept-alive connection without an
    # answer: it may have run it, so this is a failed attempt, retried with backoff and counted
    # (X-CloudTasks-TaskRetryCount 1), as Cloud Tasks counts it - never sent again at once.
    target.keep_alive_s = 30.0
    target.behaviour = lambda received, index: Reply(drop=index == 1)
    queue_name = new_queue(client, "dropped")
    first = client.create_task(parent=queue_name, task=http_task(target.url))
    target.wait_for(1)
    wait_until(lambda: gone(client, first.name), "the first task to be removed")

    second = client.create_task(parent=queue_name, task=http_task(target.url))
    received = target.wait_for(3)

    assert [r.headers["x-cloudtasks-taskretrycount"] for r in received[1:]] == ["0", "1"]
    assert received[1].client_port == received[0].client_port
    assert received[2].client_port != received[1].client_port
    wait_until(lambda: gone(client, second.name), "the second task to be removed")


def test_dispatches_run_concurrently_up_to_max_concurrent_dispatches(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs", max_concurrent=4)
    # Every request is held until the test releases it: a fixed delay let a starved machine
    # answer the first before the fourth arrived, and the peak was 3.
    target.behaviour = lambda received, index: Reply(200, delay_s=60)

    for _ in range(10):
        client.create_task(parent=queue_name, task=http_task(target.url))
    wait_until(lambda: target.in_flight == 4, "four requests held at once")
    launched = sum(task.dispatch_count for task in client.list_tasks(parent=queue_name))
    target.release.set()
    target.wait_for(10, timeout_s=30)
    wait_until(lambda: not list(client.list_tasks(parent=queue_name)), "an empty queue")

    assert launched == 4, "four attempts in flight hold back the other six"
    assert target.peak_in_flight == 4


def test_dispatch_rate_follows_max_dispatches_per_second(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = tasks_v2.Queue(
        name=f"{LOCATION}/queues/slow",
        rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=5),
    )
    queue_name = client.create_queue(parent=LOCATION, queue=queue).name

    before = time.time()  # no task can be dispatched earlier
    for _ in range(10):
        client.create_task(parent=queue_name, task=http_task(target.url))
    arrivals = sorted(r.arrived_at for r in target.wait_for(10, timeout_s=30))

    # A burst of max_burst_size (5 at this rate), then one every 1/5 s: the last five wait
    # for 5 tokens, 1 s, from the first dispatch. Measured from before the first create, as
    # the first arrival itself can be late on a loaded machine (which would shorten the span).
    assert client.get_queue(name=queue_name).rate_limits.max_burst_size == 5
    assert arrivals[4] - arrivals[0] < 0.4, "a burst, not one every 0.2 s (0.8 s)"
    assert 0.98 <= arrivals[9] - before < 2.5


def test_failed_attempts_are_retried_with_growing_backoff(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    retry = tasks_v2.RetryConfig(
        max_attempts=-1, min_backoff=seconds(0.1), max_backoff=seconds(2), max_doublings=2
    )
    queue_name = new_queue(client, "jobs", retry=retry)
    statuses = [500, 500, 404, 429, 204]
    target.behaviour = lambda received, index: Reply(statuses[index])

    task = client.create_task(
        parent=queue_name, task=http_task(target.url, name=f"{queue_name}/tasks/r")
    )
    attempts = target.wait_for(5)
    wait_until(lambda: gone(client, task.name), "the task to be removed after its 2xx")

    # An attempt goes no sooner than the backoff after the previous one arrived; its ETA (the
    # emulator's response time plus the backoff) bounds it from above without counting how
    # late a loaded machine woke the dispatcher and the target.
    gaps = [
        later.arrived_at - earlier.arrived_at for earlier, later in itertools.pairwise(attempts)
    ]
    etas = [
        float(later.headers["x-cloudtasks-tasketa"]) - earlier.arrived_at
        for earlier, later in itertools.pairwise(attempts)
    ]
    expected = [0.1, 0.2, 0.4, 0.8]  # doubles twice, then grows linearly by 0.4
    for gap, eta, want in zip(gaps, etas, expected, strict=True):
        assert want - 0.02 <= gap, (gaps, expected)
        assert want <= eta <= want + 0.5, (etas, expected)
    assert [a.headers["x-cloudtasks-taskretrycount"] for a in attempts] == ["0", "1", "2", "3", "4"]
    # "This number does not include failures due to 5XX error codes."
    executions = [a.headers["x-cloudtasks-taskexecutioncount"] for a in attempts]
    assert executions == ["0", "0", "0", "1", "2"]
    previous = [a.headers.get("x-cloudtasks-taskpreviousresponse") for a in attempts]
    assert previous == [None, "500", "500", "404", "429"]
    assert not any(a.headers.get("x-cloudtasks-taskretryreason") for a in attempts), (
        "empty for HTTP targets"
    )
    assert len(target.received) == 5


def test_task_shows_its_attempts_while_waiting_to_retry(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    retry = tasks_v2.RetryConfig(min_backoff=seconds(30), max_backoff=seconds(60))
    queue_name = new_queue(client, "jobs", retry=retry)
    target.behaviour = lambda received, index: Reply(500)
    task = client.create_task(parent=queue_name, task=http_task(target.url))
    target.wait_for(1)

    wait_until(
        lambda: client.get_task(name=task.name).response_count == 1,
        "the response to be recorded",
    )
    state = client.get_task(name=task.name)

    assert state.dispatch_count == 1
    assert state.first_attempt.dispatch_time.timestamp() > 0
    assert state.last_attempt.response_status.code == RPC_INTERNAL
    assert state.last_attempt.response_time.timestamp() > 0
    # the emulator's own instants, not the test's clock (which lags behind on a loaded machine)
    backoff = state.schedule_time.timestamp() - state.last_attempt.response_time.timestamp()
    assert backoff == pytest.approx(30, abs=1e-3)
    client.delete_task(name=task.name)  # a pending retry is cancelled with its task
    assert gone(client, task.name)


def test_max_attempts_ends_the_retries(client: tasks_v2.CloudTasksClient, target: Target) -> None:
    retry = tasks_v2.RetryConfig(
        max_attempts=3, min_backoff=seconds(0.05), max_backoff=seconds(0.1)
    )
    queue_name = new_queue(client, "jobs", retry=retry)
    target.behaviour = lambda received, index: Reply(503)

    task = client.create_task(parent=queue_name, task=http_task(target.url))
    target.wait_for(3)
    wait_until(lambda: gone(client, task.name), "the exhausted task to be removed")
    time.sleep(0.4)  # several backoffs: a fourth attempt would have arrived

    assert len(target.received) == 3


@pytest.mark.parametrize(
    "slow_reply",
    [Reply(200, delay_s=10), Reply(200, trickle_s=0.1)],
    ids=["silent", "trickling"],  # the deadline bounds the whole attempt, not each read
)
def test_dispatch_deadline_aborts_a_slow_attempt(
    client: tasks_v2.CloudTasksClient, target: Target, slow_reply: Reply
) -> None:
    retry = tasks_v2.RetryConfig(min_backoff=seconds(2), max_backoff=seconds(2))
    queue_name = new_queue(client, "jobs", retry=retry)
    target.behaviour = lambda received, index: slow_reply if index == 0 else Reply(200)
    task = client.create_task(
        parent=queue_name, task=http_task(target.url, deadline_s=TEST_MIN_DEADLINE_S)
    )
    polled: list[tasks_v2.Task] = []

    def failed_by_deadline() -> bool:
        # Kept as polled: a second read could already show the retry (and its attempt).
        polled.append(client.get_task(name=task.name))
        code: int = polled[-1].last_attempt.response_status.code
        return code == RPC_DEADLINE_EXCEEDED

    target.wait_for(1)
    wait_until(failed_by_deadline, "the attempt to fail with DEADLINE_EXCEEDED")
    state = polled[-1]
    # Measured on the emulator's own clock readings, not by the test polling after the fact.
    attempt = state.last_attempt
    aborted_after = attempt.response_time.timestamp() - attempt.dispatch_time.timestamp()
    retried = target.wait_for(2, timeout_s=30)[1]
    wait_until(lambda: gone(client, task.name), "the retried task to succeed")

    # The target would have taken 10 s (silent) or 100 s (trickling) to answer.
    assert TEST_MIN_DEADLINE_S - 0.05 <= aborted_after < TEST_MIN_DEADLINE_S + 1.0
    assert state.dispatch_count == 1
    assert state.response_count == 0
    assert retried.headers["x-cloudtasks-taskretrycount"] == "1"
    assert retried.headers["x-cloudtasks-taskexecutioncount"] == "0"
    assert "x-cloudtasks-taskretryreason" not in retried.headers
    assert "x-cloudtasks-taskpreviousresponse" not in retried.headers


def test_schedule_time_in_the_future_delays_dispatch(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    target.behaviour = lambda received, index: Reply(200, delay_s=60)  # held: the task stays
    eta = time.time() + 3.0

    task = client.create_task(parent=queue_name, task=http_task(target.url, schedule_at=eta))
    pending = client.get_task(name=task.name)
    arrived = target.wait_for(1, timeout_s=30)[0]
    dispatched_at = client.get_task(name=task.name).first_attempt.dispatch_time.timestamp()
    target.release.set()

    assert pending.dispatch_count == 0
    assert pending.schedule_time.timestamp() == pytest.approx(eta, abs=1e-3)
    assert arrived.arrived_at >= eta
    # Launched when due, not at the emulator's next idle wake (up to 1 s later); read on the
    # emulator's clock, as the target's lags behind on a loaded machine.
    assert eta <= dispatched_at < eta + 0.5
    assert abs(float(arrived.headers["x-cloudtasks-tasketa"]) - eta) < 1e-3


def test_run_task_dispatches_at_once(client: tasks_v2.CloudTasksClient, target: Target) -> None:
    queue_name = new_queue(client, "jobs")
    task = client.create_task(
        parent=queue_name, task=http_task(target.url, schedule_at=time.time() + 3600)
    )

    started = time.time()
    client.run_task(name=task.name)
    arrived = target.wait_for(1, timeout_s=30)[0]

    assert arrived.arrived_at - started < 30, "now, not at its schedule an hour from now"


def test_paused_queue_holds_tasks_and_purge_drops_them(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    client.pause_queue(name=queue_name)
    held = client.create_task(parent=queue_name, task=http_task(target.url))
    time.sleep(0.3)
    assert target.received == []

    client.resume_queue(name=queue_name)
    target.wait_for(1)
    client.pause_queue(name=queue_name)
    dropped = client.create_task(parent=queue_name, task=http_task(target.url))
    client.purge_queue(name=queue_name)
    client.resume_queue(name=queue_name)
    time.sleep(0.3)

    assert target.received[0].headers["x-cloudtasks-taskname"] == held.name.rsplit("/", 1)[1]
    assert len(target.received) == 1
    assert gone(client, dropped.name)


# -- OIDC -----------------------------------------------------------------------------------


def _bearer(received: Received) -> str:
    scheme, _, token = received.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def test_oidc_token_verifies_with_google_auth(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    audience = f"{target.url}/ai-jobs-process"
    explicit = tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT, audience=audience)
    implicit = tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT)
    client.create_task(parent=queue_name, task=http_task(f"{target.url}/a", oidc=explicit))
    client.create_task(
        parent=queue_name,
        task=http_task(f"{target.url}/b", oidc=implicit, headers={"Authorization": "Bearer x"}),
    )
    target.wait_for(2)
    token_a = _bearer(next(r for r in target.received if r.path == "/a"))
    token_b = _bearer(next(r for r in target.received if r.path == "/b"))

    claims = id_token.verify_token(
        token_a,
        google.auth.transport.requests.Request(),
        audience=audience,
        certs_url=emulator.certs_url,
    )
    claims_b = id_token.verify_token(
        token_b,
        google.auth.transport.requests.Request(),
        audience=f"{target.url}/b",  # no audience given: the task's URL
        certs_url=emulator.certs_url,
    )

    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == audience
    assert claims["sub"].isdigit()
    assert claims["exp"] > claims["iat"] >= int(time.time()) - 60
    assert claims_b["aud"] == f"{target.url}/b"
    with pytest.raises(ValueError, match="audience"):
        id_token.verify_token(
            token_a,
            google.auth.transport.requests.Request(),
            audience="https://someone-else.example/",
            certs_url=emulator.certs_url,
        )


def test_dispatches_for_one_account_and_audience_carry_one_cached_token(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    oidc = tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT, audience="https://fn")
    client.create_task(parent=queue_name, task=http_task(f"{target.url}/a", oidc=oidc))
    issued_at = jwt.decode(_bearer(target.wait_for(1)[0]), options={"verify_signature": False})
    # A token minted anew now would differ: its iat would be a later second.
    wait_until(lambda: time.time() >= issued_at["iat"] + 1, "the next second")
    client.create_task(parent=queue_name, task=http_task(f"{target.url}/b", oidc=oidc))
    client.create_task(parent=queue_name, task=http_task(f"{target.url}/c", oidc=None))
    other = tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT, audience="https://other")
    client.create_task(parent=queue_name, task=http_task(f"{target.url}/d", oidc=other))
    target.wait_for(4)
    by_path = {r.path: r for r in target.received}

    assert _bearer(by_path["/a"]) == _bearer(by_path["/b"])
    assert "authorization" not in by_path["/c"].headers
    assert _bearer(by_path["/d"]) != _bearer(by_path["/a"])


def test_a_cached_token_is_replaced_before_it_expires() -> None:
    signer = OidcSigner()
    issued = 1_700_000_000.0
    first = signer.token(service_account_email=SERVICE_ACCOUNT, audience="https://fn", now=issued)
    last_use = issued + TOKEN_LIFETIME_S - REFRESH_MARGIN_S - 1

    still = signer.token(service_account_email=SERVICE_ACCOUNT, audience="https://fn", now=last_use)
    renewed = signer.token(
        service_account_email=SERVICE_ACCOUNT, audience="https://fn", now=last_use + 1
    )

    assert still == first
    assert renewed != first
    claims = jwt.decode(renewed, options={"verify_signature": False})
    assert claims["iat"] == int(last_use + 1)


def test_token_from_another_emulator_is_rejected(
    emulator: EmulatorHandle, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(client, "jobs")
    oidc = tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT)
    client.create_task(parent=queue_name, task=http_task(target.url, oidc=oidc))
    token = _bearer(target.wait_for(1)[0])

    with start_emulator() as other, pytest.raises(ValueError):
        id_token.verify_token(
            token, google.auth.transport.requests.Request(), certs_url=other.certs_url
        )


# -- process --------------------------------------------------------------------------------


def test_stop_joins_every_thread() -> None:
    before = set(threading.enumerate())
    handle = start_emulator()

    started = set(threading.enumerate()) - before
    handle.stop()
    handle.stop()  # idempotent

    assert started
    assert not [t for t in started if t.is_alive()]


def test_port_in_use_is_an_error(emulator: EmulatorHandle) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        start_emulator(port=emulator.port)


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def _next_line_matching(lines: queue.Queue[str], pattern: str, timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line matching {pattern!r}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        match = re.search(pattern, line)
        if match:
            return match


def test_command_line_serves_dispatches_logs_and_stops_on_sigterm(target: Target) -> None:
    queue_name = f"{LOCATION}/queues/cli"
    command = [
        sys.executable, "-m", "infra.local.tasks_emulator",
        "--port", "0", "--queue", queue_name, "--max-concurrent", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stderr, lines))
        reader.start()
        try:
            address = _next_line_matching(lines, r"listening on (\S+)", 20)[1]
            with make_client(address) as client:
                fetched = client.get_queue(name=queue_name)
                task = client.create_task(parent=queue_name, task=http_task(target.url))
            target.wait_for(1)
            logged = _next_line_matching(lines, r"dispatch task=(\S+) .*status=(.+)$", 30)
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=20)
            reader.join()

    assert fetched.rate_limits.max_concurrent_dispatches == 2
    assert logged[1] == task.name
    assert logged[2] == "HTTP 200"
    assert returncode == 0


def test_a_generated_task_name_already_taken_is_drawn_again(
    client: tasks_v2.CloudTasksClient, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_name = new_queue(client, "jobs")
    taken = client.create_task(
        parent=queue_name, task=http_task(target.url, name=f"{queue_name}/tasks/{7:019d}")
    )
    draws = iter([7, 7, 8])  # the taken name twice, then a free one
    # the emulator draws from the random module (patched for this test only)
    monkeypatch.setattr(random, "randrange", lambda _stop: next(draws))

    created = client.create_task(parent=queue_name, task=http_task(target.url))

    assert taken.name.endswith("/tasks/0000000000000000007")
    assert created.name == f"{queue_name}/tasks/0000000000000000008"
    target.wait_for(2)
