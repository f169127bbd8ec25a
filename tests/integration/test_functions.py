"""The functions loaded as Cloud Functions loads them (functions_framework.create_app), driven
with Flask's test client, against the real gateway: feature flags, identity, OIDC, config."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import flask.testing
import pytest

import shared.identity
import shared.store
import shared.tasks
from infra.local.gateway import GatewayHandle, make_jwt
from infra.local.host import free_port
from infra.local.tasks_emulator.oidc import OidcSigner
from shared.errors import ConfigError
from shared.functions import CREATE, LIST, PROCESS, Function
from shared.settings import get_settings
from tests.support import JWT_SECRET, function_app, google_certs

REPO = Path(__file__).resolve().parents[2]
COMPLEX = "모든 서버 분석하고 최적화 리포트 만들어줘"
SIMPLE = "현재 서버 상태 알려줘"
INVOKER = "ai-jobs-invoker@my-project.iam.gserviceaccount.com"
PROCESSOR_URL = PROCESS.url("https://asia-northeast1-my-project.cloudfunctions.net")

Client = Callable[..., flask.testing.FlaskClient]


@pytest.fixture
def function(
    gateway: GatewayHandle, service_key: str
) -> Iterator[Callable[..., flask.testing.FlaskClient]]:
    """``function(CREATE, **env)``: a test client for that function's main.py with that env."""

    def load(function: Function, **env: str) -> flask.testing.FlaskClient:
        os.environ.update(
            {
                "SUPABASE_URL": gateway.url,
                "SUPABASE_SERVICE_ROLE_KEY": service_key,
                # nothing listens here: Cloud Tasks is "down" unless a test says otherwise
                "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
                "AI_WRITER": "local",
                **env,
            }
        )
        _reset()
        return function_app(function.entry_point, function.source(REPO)).test_client()

    yield load
    _reset()


def _reset() -> None:
    get_settings.cache_clear()
    shared.store.get_store.cache_clear()
    shared.tasks.get_queue.cache_clear()


def test_missing_setting_fails_at_cold_start_naming_it() -> None:
    os.environ.pop("SUPABASE_URL", None)
    _reset()
    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        function_app(CREATE.entry_point, CREATE.source(REPO))
    os.environ.update({"SUPABASE_URL": "http://x", "SUPABASE_SERVICE_ROLE_KEY": "k"})
    os.environ["MAX_ATTEMPTS"] = "many"
    _reset()
    with pytest.raises(ConfigError, match="MAX_ATTEMPTS"):
        function_app(CREATE.entry_point, CREATE.source(REPO))
    _reset()


def test_job_queue_disabled_answers_in_the_request(function: Client) -> None:
    create = function(CREATE, ENABLE_JOB_QUEUE="false")
    response = create.post("/", json={"query": COMPLEX})
    assert response.status_code == 200
    body = response.get_json()
    assert body["mode"] == "sync"
    assert body["result"]["type"] == "report"
    assert "db-01" in body["result"]["markdown"]


def test_routing_disabled_makes_every_query_a_job_even_with_the_queue_down(
    function: Client,
) -> None:
    create = function(CREATE, ENABLE_COMPLEXITY_ROUTING="false")
    response = create.post("/", json={"query": SIMPLE})
    assert response.status_code == 202, "the row is written even though enqueueing failed"
    listed = function(LIST).get("/").get_json()["jobs"]
    assert [job["jobId"] for job in listed] == [response.get_json()["jobId"]]
    assert listed[0]["status"] == "queued"


def test_identity_from_a_verified_supabase_jwt(
    function: Client,
) -> None:
    env = {"SUPABASE_JWT_SECRET": JWT_SECRET, "ENABLE_COMPLEXITY_ROUTING": "false"}
    alice_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())  # Supabase Auth subjects are uuids
    alice = {"Authorization": f"Bearer {make_jwt(JWT_SECRET, 'authenticated', sub=alice_id)}"}
    bob = {"Authorization": f"Bearer {make_jwt(JWT_SECRET, 'authenticated', sub=bob_id)}"}
    created = function(CREATE, **env).post("/", json={"query": COMPLEX}, headers=alice)
    assert created.status_code == 202
    lister = function(LIST, **env)
    assert len(lister.get("/", headers=alice).get_json()["jobs"]) == 1
    assert lister.get("/", headers=bob).get_json()["jobs"] == []
    other_secret = "another-secret-that-is-at-least-32-characters-long"
    forged = make_jwt(other_secret, "authenticated", sub=alice_id)
    refused = lister.get("/", headers={"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"


def test_user_header_is_trusted_only_from_the_bff(function: Client) -> None:
    jwt_mode = function(LIST, SUPABASE_JWT_SECRET=JWT_SECRET)
    spoofed = jwt_mode.get("/", headers={"X-User-Id": "alice"})
    assert spoofed.status_code == 401, "with JWTs configured, a bare user header is refused"
    bff = function(LIST, SUPABASE_JWT_SECRET=JWT_SECRET, BFF_SHARED_SECRET="bff-s3cret")
    assert bff.get("/", headers={"X-User-Id": "alice"}).status_code == 401
    wrong = {"X-User-Id": "alice", "X-BFF-Secret": "guess"}
    assert bff.get("/", headers=wrong).status_code == 401
    trusted = {"X-User-Id": "alice", "X-BFF-Secret": "bff-s3cret"}
    assert bff.get("/", headers=trusted).status_code == 200


def test_anonymous_callers_can_be_refused(function: Client) -> None:
    lister = function(LIST, ALLOW_ANONYMOUS="false")
    assert lister.get("/").status_code == 401
    assert lister.get("/", headers={"X-User-Id": "u1"}).status_code == 200


@pytest.fixture
def oidc() -> Iterator[tuple[OidcSigner, str]]:
    with google_certs() as signed:
        yield signed


def test_processor_verifies_the_cloud_tasks_oidc_token(
    function: Client, oidc: tuple[OidcSigner, str]
) -> None:
    signer, certs_url = oidc
    processor = function(
        PROCESS,
        PROCESSOR_VERIFY_OIDC="true",
        OIDC_CERTS_URL=certs_url,
        TASKS_INVOKER_SA=INVOKER,
        PROCESSOR_URL=PROCESSOR_URL,
    )
    body = {"jobId": "00000000-0000-0000-0000-000000000001"}
    task = {"X-CloudTasks-QueueName": "ai-jobs", "X-CloudTasks-TaskName": "t1"}

    def call(token: str | None) -> int:
        headers = dict(task)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return processor.post("/", json=body, headers=headers).status_code

    assert call(None) == 401
    assert call(signer.mint(service_account_email=INVOKER, audience=PROCESSOR_URL)) == 200
    assert call(signer.mint(service_account_email=INVOKER, audience="https://elsewhere")) == 401
    assert (
        call(
            signer.mint(
                service_account_email="intruder@x.iam.gserviceaccount.com", audience=PROCESSOR_URL
            )
        )
        == 403
    )
    assert call(OidcSigner().mint(service_account_email=INVOKER, audience=PROCESSOR_URL)) == 401


def test_the_processor_fetches_the_certificates_once_and_answers_503_when_it_cannot(
    function: Client, oidc: tuple[OidcSigner, str]
) -> None:
    signer, certs_url = oidc
    settings = {"PROCESSOR_VERIFY_OIDC": "true", "TASKS_INVOKER_SA": INVOKER}
    processor = function(PROCESS, OIDC_CERTS_URL=certs_url, PROCESSOR_URL=PROCESSOR_URL, **settings)
    body = {"jobId": "00000000-0000-0000-0000-000000000001"}
    task = {"X-CloudTasks-QueueName": "ai-jobs", "X-CloudTasks-TaskName": "t1"}
    fetched = shared.identity._google_transport().fetches
    for _ in range(5):
        token = signer.mint(service_account_email=INVOKER, audience=PROCESSOR_URL)
        headers = {**task, "Authorization": f"Bearer {token}"}
        assert processor.post("/", json=body, headers=headers).status_code == 200
    assert shared.identity._google_transport().fetches - fetched == 1

    nowhere = f"http://127.0.0.1:{free_port()}/oauth2/v1/certs"  # Google unreachable
    offline = function(PROCESS, OIDC_CERTS_URL=nowhere, PROCESSOR_URL=PROCESSOR_URL, **settings)
    token = signer.mint(service_account_email=INVOKER, audience=PROCESSOR_URL)
    answer = offline.post("/", json=body, headers={**task, "Authorization": f"Bearer {token}"})
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "dependency_unavailable"
