"""The private functions (processor, reaper) fail closed: with no caller check configured they
refuse to start, and a processor built around such settings refuses every call."""

from __future__ import annotations

import os
from typing import Any

import flask
import functions_framework
import pytest

import shared.store
import shared.tasks
from shared import errors, identity, worker
from shared.settings import get_settings
from tests.support import MINIMAL_ENV, REPO_ROOT, minimal_settings

FUNCTIONS = REPO_ROOT / "functions"
CHECKS = ("PROCESSOR_SHARED_SECRET", "PROCESSOR_VERIFY_OIDC", "PROCESSOR_TRUST_CALLERS")


def _load(name: str, target: str, **env: str) -> flask.Flask:
    for variable in CHECKS:
        os.environ.pop(variable, None)
    os.environ.update({**MINIMAL_ENV, **env})
    get_settings.cache_clear()
    shared.store.get_store.cache_clear()
    shared.tasks.get_queue.cache_clear()
    try:
        return functions_framework.create_app(target, str(FUNCTIONS / name / "main.py"))  # type: ignore[no-untyped-call,no-any-return]
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("name", "target"), [("ai-jobs-process", "process_job"), ("ai-jobs-reap", "reap_jobs")]
)
def test_a_private_function_with_no_caller_check_refuses_to_start(name: str, target: str) -> None:
    with pytest.raises(errors.ConfigError) as err:
        _load(name, target)
    assert err.value.details == {"setting": "PROCESSOR_SHARED_SECRET"}


@pytest.mark.parametrize(
    "env",
    [
        {"PROCESSOR_SHARED_SECRET": "s3cret"},
        {"PROCESSOR_VERIFY_OIDC": "true"},
        {"PROCESSOR_TRUST_CALLERS": "true"},
    ],
)
def test_any_one_caller_check_lets_it_start(env: dict[str, str]) -> None:
    assert _load("ai-jobs-process", "process_job", **env) is not None


def test_unguarded_settings_refuse_every_call() -> None:
    app = flask.Flask(__name__)
    unguarded = minimal_settings()
    headers = {"X-CloudTasks-QueueName": "ai-jobs", "X-AI-Jobs-Secret": "anything"}
    with app.test_request_context("/", method="POST", json={"jobId": "x"}, headers=headers):
        with pytest.raises(errors.Forbidden):
            identity.verify_caller(flask.request, unguarded, audience="http://x")
        trusted = minimal_settings(trust_private_callers=True)
        identity.verify_caller(flask.request, trusted, audience="http://x")


def _processor(**settings: Any) -> worker.Processor:
    base = minimal_settings(**settings)
    return worker.Processor(shared.store.JobStore.from_settings(base), base)


def test_a_jobs_retry_waits_for_the_servers_hint_at_most_an_hour() -> None:
    processor = _processor()
    quota = errors.AIError("429", retryable=True, retry_after=42.0)
    daily = errors.AIError("429", retryable=True, retry_after=20 * 3600.0)
    assert processor.retry_delay(quota, attempts=1) == 42.0
    assert processor.retry_delay(daily, attempts=1) == worker.MAX_RETRY_DELAY_S


def test_without_a_hint_the_retry_backs_off_like_the_queue() -> None:
    processor = _processor(retry_min_backoff_s=10.0, retry_max_backoff_s=30.0)
    deadline = errors.DeadlineExceeded("the job's deadline passed")
    assert [processor.retry_delay(deadline, attempts=n) for n in (1, 2, 3, 4)] == [10, 20, 30, 30]


@pytest.mark.parametrize(("raw", "count"), [("3", 3), ("²", 0), ("-1", 0), ("1e3", 0), ("", 0)])
def test_delivery_counts_are_ascii_digits_only(raw: str, count: int) -> None:
    app = flask.Flask(__name__)
    with app.test_request_context("/", headers={"X-CloudTasks-TaskRetryCount": raw}):
        assert worker.Delivery.from_request(flask.request).retry_count == count
