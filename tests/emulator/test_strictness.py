"""Where Cloud Tasks is stricter than a plain dispatcher, the emulator is too.

System throttling and ramp-up are checked on the queue's flow with a given clock (pure
logic: the numbers are the emulator's own, Cloud Tasks publishes none) and once end to end;
the CreateTask limits and expiring tombstones through the real client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from infra.local.tasks_emulator import OFF, ThrottlePolicy, dispatch, start_emulator
from infra.local.tasks_emulator.dispatch import retry_after_seconds
from infra.local.tasks_emulator.throttle import QueueFlow
from tests.emulator.target import (
    TEST_MIN_DEADLINE_S,
    Reply,
    Target,
    gone,
    http_task,
    make_client,
    new_queue,
    seconds,
)
from tests.support import wait_until

THROTTLE_ONLY = ThrottlePolicy(ramp_up=False)
# Long enough for a delete and a create to answer on a loaded machine (0.5 s was not always)
TOMBSTONE_S = 3.0


def _dispatches(flow: QueueFlow, start: float, until: float, step: float = 0.001) -> int:
    """How many tokens the flow hands out between two instants of a fake clock."""
    count, now = 0, start
    while now < until:
        if flow.take(now) == 0:
            count += 1
        else:
            now += step
    return count


# -- system throttling (HttpRequest reference, "System throttling") ------------------------


@pytest.mark.parametrize("status", [429, 503, 500, 502])
def test_a_backoff_error_halves_the_enforced_rate_and_holds_the_queue(status: int) -> None:
    flow = QueueFlow.start(THROTTLE_ONLY, max_rate=10, max_burst=10, now=0.0)
    assert flow.enforced_rate(0.0) == 10

    flow.record(0.0, status, retry_after_s=None)

    assert flow.enforced_rate(0.0) == 5
    assert flow.take(0.0) == pytest.approx(1 / 5), "held one interval at the new rate"


def test_retry_after_holds_the_whole_queue_that_long() -> None:
    flow = QueueFlow.start(THROTTLE_ONLY, max_rate=100, max_burst=100, now=0.0)
    flow.record(0.0, 503, retry_after_s=7)
    assert flow.take(6.9) > 0
    assert flow.take(7.0) == 0


def test_successes_bring_the_rate_back_and_the_floor_keeps_it_moving() -> None:
    flow = QueueFlow.start(THROTTLE_ONLY, max_rate=8, max_burst=8, now=0.0)
    for _ in range(20):
        flow.record(0.0, 503, None)
    assert flow.enforced_rate(0.0) == THROTTLE_ONLY.floor_rate
    for _ in range(20):
        flow.record(0.0, 200, None)
    assert flow.enforced_rate(0.0) == 8, "user settings are not changed, only the enforced rate"


def test_a_high_error_rate_throttles_even_without_429_or_5xx() -> None:
    policy = ThrottlePolicy(ramp_up=False, error_window=4)
    flow = QueueFlow.start(policy, max_rate=10, max_burst=10, now=0.0)
    for _ in range(3):
        flow.record(0.0, 404, None)
    assert flow.enforced_rate(0.0) == 10, "a few client errors are the worker's business"
    flow.record(0.0, 404, None)
    assert flow.enforced_rate(0.0) == 5, "a full window of errors is a high error rate"


def test_without_throttling_errors_change_nothing() -> None:
    flow = QueueFlow.start(OFF, max_rate=10, max_burst=10, now=0.0)
    flow.record(0.0, 503, retry_after_s=60)
    assert flow.take(0.0) == 0


# -- ramp-up of a new or idle queue -------------------------------------------------------


def test_a_new_queue_ramps_up_and_an_idle_one_ramps_up_again() -> None:
    policy = ThrottlePolicy(throttle=False, ramp_start_rate=10, ramp_step_s=1, idle_after_s=60)
    flow = QueueFlow.start(policy, max_rate=500, max_burst=100, now=0.0)

    first_second = _dispatches(flow, 0.0, 1.0)
    second_second = _dispatches(flow, 1.0, 2.0)
    assert 10 <= first_second <= 25, "starts near the ramp's first rate, not 500/s"
    assert second_second > first_second
    _dispatches(flow, 2.0, 12.0)
    assert flow.enforced_rate(12.0) == 500, "the configured rate once ramped up"

    assert flow.enforced_rate(100.0) == 10, "idle for a minute: ramps up again"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds("Fri, 27 Nov 2026 17:00:10 GMT", now=1795798800.0) == 10
    assert retry_after_seconds("²") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_a_503_with_retry_after_holds_every_task_of_the_queue(target: Target) -> None:
    # End to end, with throttling as the service does it: one task's 503 delays the others.
    with (
        start_emulator(min_dispatch_deadline_s=TEST_MIN_DEADLINE_S, throttle=THROTTLE_ONLY) as em,
        make_client(em.address) as client,
    ):
        queue_name = new_queue(client, "jobs")
        target.behaviour = lambda received, index: (
            Reply(503, retry_after="1") if index == 0 else Reply(200)
        )
        refused = client.create_task(parent=queue_name, task=http_task(target.url)).name
        refused_at = target.wait_for(1)[0].arrived_at
        # The others are created once the emulator has the 503 (the target has it first):
        # created in between, they would rightly go before the queue learnt of the hold.
        give_up = time.monotonic() + 10
        while client.get_task(name=refused).response_count == 0 and time.monotonic() < give_up:
            time.sleep(0.01)
        for _ in range(3):
            client.create_task(parent=queue_name, task=http_task(target.url))
        later = target.wait_for(5, timeout_s=30)[1:]
    assert all(r.arrived_at - refused_at >= 0.95 for r in later), "nothing before Retry-After"
    assert later[-1].headers["x-cloudtasks-taskretrycount"] in {"0", "1"}


# -- CreateTask limits and de-duplication ----------------------------------------------------


@pytest.fixture
def quick_client() -> Iterator[tasks_v2.CloudTasksClient]:
    with (
        start_emulator(
            min_dispatch_deadline_s=TEST_MIN_DEADLINE_S, throttle=OFF, tombstone_ttl_s=TOMBSTONE_S
        ) as em,
        make_client(em.address) as client,
    ):
        yield client


def test_url_header_and_size_limits_are_enforced(
    quick_client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(quick_client, "jobs")
    base = f"{target.url}/"
    at_limit = base + "a" * (2083 - len(base))
    later = time.time() + 60
    quick_client.create_task(parent=queue_name, task=http_task(at_limit, schedule_at=later))
    too_long = [
        http_task(at_limit + "a"),
        http_task(base + "é" * 400),  # 400 characters, 2400 once encoded ("%C3%A9" each)
        http_task(target.url, headers={"X-Big": "x" * (80 * 1024)}),
        http_task(target.url, body=b"x" * (1024 * 1024 + 1)),
    ]
    for task in too_long:
        with pytest.raises(exceptions.InvalidArgument):
            quick_client.create_task(parent=queue_name, task=task)
    assert len(list(quick_client.list_tasks(parent=queue_name))) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\r\nX-Injected: yes"},
        {"X-Note": "a\nb"},
        {"X-Note": "a\x00b"},
        {"Bad Name": "v"},
        {"X-Note:": "v"},
    ],
)
def test_a_header_that_cannot_go_on_the_wire_is_refused_and_holds_no_slot(
    quick_client: tasks_v2.CloudTasksClient, target: Target, headers: dict[str, str]
) -> None:
    queue_name = new_queue(quick_client, "jobs", max_concurrent=1)

    with pytest.raises(exceptions.InvalidArgument, match=r"http_request\.headers"):
        quick_client.create_task(parent=queue_name, task=http_task(target.url, headers=headers))
    quick_client.create_task(
        parent=queue_name, task=http_task(target.url, headers={"X-Note": "fine\tand café"})
    )

    received = target.wait_for(1)  # the queue's only slot was free for it
    assert received[0].headers["x-note"] == "fine\tand café"
    wait_until(lambda: not list(quick_client.list_tasks(parent=queue_name)), "its completion")


def test_a_header_beyond_latin_1_arrives_utf_8_encoded(
    quick_client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    # Cloud Tasks documents no character rule for header values; the emulator sends what
    # Latin-1 cannot carry as UTF-8 rather than refusing the task.
    queue_name = new_queue(quick_client, "jobs")
    note = "모든 서버 분석"
    task = http_task(target.url, headers={"X-Note": note})

    quick_client.create_task(parent=queue_name, task=task)

    received = target.wait_for(1)
    # the target (http.server) reads header bytes as Latin-1: undo that to see the bytes
    assert received[0].headers["x-note"].encode("latin-1") == note.encode("utf-8")


@pytest.mark.parametrize("name", ["User-Agent", "X-CloudTasks-QueueName", "X-Google-Note", "Host"])
def test_a_reserved_header_is_dropped_not_refused_whatever_its_value(
    quick_client: tasks_v2.CloudTasksClient, target: Target, name: str
) -> None:
    queue_name = new_queue(quick_client, "jobs")

    quick_client.create_task(parent=queue_name, task=http_task(target.url, headers={name: "서버"}))

    received = target.wait_for(1)
    assert "서버".encode().decode("latin-1") not in received[0].headers.values()


@pytest.mark.parametrize(
    "url", ["http://a b/x", "http://[::1/x", "http://a\x01b/x", "http:///x", "http://h:port/x"]
)
def test_a_url_that_cannot_be_sent_is_refused_and_holds_no_slot(
    quick_client: tasks_v2.CloudTasksClient, target: Target, url: str
) -> None:
    queue_name = new_queue(quick_client, "jobs", max_concurrent=1)

    for _ in range(2):  # the second time from the checked URLs' cache: refused all the same
        with pytest.raises(exceptions.InvalidArgument, match=r"http_request\.url"):
            quick_client.create_task(parent=queue_name, task=http_task(url))
    quick_client.create_task(parent=queue_name, task=http_task(target.url))

    target.wait_for(1)  # the queue's only slot was free for it
    wait_until(lambda: not list(quick_client.list_tasks(parent=queue_name)), "its completion")


def test_an_attempt_that_raises_is_a_failed_attempt_retried_and_frees_its_slot(
    quick_client: tasks_v2.CloudTasksClient, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever escapes the HTTP code (a bug, or an error nobody foresaw) must not leave the
    # task in flight for good, holding its queue's only slot.
    real_send = dispatch.send
    calls: list[str] = []

    def send_raising_once(*args: Any, **kwargs: Any) -> dispatch.AttemptOutcome:
        calls.append("send")
        if len(calls) == 1:
            raise RuntimeError("unforeseen")
        return real_send(*args, **kwargs)

    monkeypatch.setattr(dispatch, "send", send_raising_once)
    retry = tasks_v2.RetryConfig(min_backoff=seconds(0.05), max_backoff=seconds(0.1))
    queue_name = new_queue(quick_client, "jobs", max_concurrent=1, retry=retry)

    task = quick_client.create_task(parent=queue_name, task=http_task(target.url))

    received = target.wait_for(1)
    assert received[0].headers["x-cloudtasks-taskretrycount"] == "1"
    assert received[0].headers["x-cloudtasks-taskname"] == task.name.rsplit("/", 1)[-1]
    wait_until(lambda: gone(quick_client, task.name), "its completion")


def test_a_used_task_name_is_refused_until_its_tombstone_expires(
    quick_client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue_name = new_queue(quick_client, "jobs")
    task = http_task(target.url, name=f"{queue_name}/tasks/job-1-d1", schedule_at=time.time() + 60)
    quick_client.create_task(parent=queue_name, task=task)
    quick_client.delete_task(name=task.name)
    with pytest.raises(exceptions.AlreadyExists):
        quick_client.create_task(parent=queue_name, task=task)

    def created() -> bool:
        try:
            quick_client.create_task(parent=queue_name, task=task)
        except exceptions.AlreadyExists:
            return False
        return True

    wait_until(created, "the tombstone to expire")
    assert not gone(quick_client, task.name)
    quick_client.delete_task(name=task.name)  # used again: refused again
    with pytest.raises(exceptions.AlreadyExists):
        quick_client.create_task(parent=queue_name, task=task)
