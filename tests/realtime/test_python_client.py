"""REALTIME.md's cases through the official Python client (realtime-py 2.34.1, vsn 1.0.0)
against the Realtime stand-in, with changes written to the real database by SQL.

A check that a subscriber received *nothing* never sleeps and hopes: a later change it must
receive is written after the one it must not, and Realtime delivers in commit order.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from tests.realtime.listen import Listener, listen, until
from tests.support import JWT_SECRET, LocalSupabase

JOB_BINDINGS = [
    ("INSERT", "ai_jobs", None),
    ("UPDATE", "ai_jobs", None),
    ("INSERT", "ai_job_logs", None),
]
COMMIT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def data(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(payload["data"])


async def marker(server: LocalSupabase, listener: Listener, user_id: str) -> None:
    """Write a job ``listener`` must see, and wait for it: everything before has arrived."""
    job_id = server.new_job(user_id, query="marker")
    await until(lambda: any(data(p)["record"].get("id") == job_id for p in listener.payloads()))


# --- 1. connecting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apikey", "message"),
    [
        ("", "API key is missing"),
        ("not-a-jwt", "The token provided is not a valid JWT"),
        ("expired", "Token has expired"),
        ("wrong-secret", "Failed to validate JWT signature"),
        # signed with the project's secret, of role anon, but not one of the project's keys
        ("project-signed", "Invalid API key"),
    ],
)
def test_a_bad_api_key_is_refused_at_the_upgrade_with_401_json(
    supabase_server: LocalSupabase, apikey: str, message: str
) -> None:
    import jwt as pyjwt

    if apikey == "expired":
        apikey = supabase_server.user_token(str(uuid.uuid4()), expires_in_s=-60)
    elif apikey == "wrong-secret":
        apikey = pyjwt.encode({"role": "anon", "exp": 2**31}, "x" * 40, algorithm="HS256")
    elif apikey == "project-signed":
        apikey = pyjwt.encode({"role": "anon", "exp": 2**31}, JWT_SECRET, algorithm="HS256")

    async def connect() -> websockets.InvalidStatus:
        url = f"{supabase_server.ws_url}?apikey={apikey}&vsn=1.0.0"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        return refused.value

    refused = run(connect())

    assert refused.response.status_code == 401
    assert json.loads(refused.response.body)["error"].startswith(message)


def test_heartbeats_are_answered_in_both_serializers(supabase_server: LocalSupabase) -> None:
    async def beat(vsn: str, frame: Any) -> Any:
        url = f"{supabase_server.ws_url}?apikey={supabase_server.anon_key}&vsn={vsn}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(frame))
            return json.loads(await ws.recv())

    v1 = run(beat("1.0.0", {"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"}))
    v2 = run(beat("2.0.0", [None, "8", "phoenix", "heartbeat", {}]))

    assert v1 == {
        "topic": "phoenix",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": "7",
    }
    assert v2 == [None, "8", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


def test_the_socket_declines_per_message_compression_as_phoenix_does(
    supabase_server: LocalSupabase,
) -> None:
    async def extensions() -> str | None:
        url = f"{supabase_server.ws_url}?apikey={supabase_server.anon_key}&vsn=1.0.0"
        # the websockets client offers permessage-deflate by default, as browsers and ws do
        async with websockets.connect(url) as ws:
            assert ws.request is not None and ws.response is not None
            assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert run(extensions()) is None


# --- 3. join ---------------------------------------------------------------------------------


def test_the_join_reply_echoes_the_bindings_in_order_with_distinct_ids(
    supabase_server: LocalSupabase,
) -> None:
    bindings = [
        {"event": "INSERT", "schema": "public", "table": "ai_jobs"},
        {
            "event": "UPDATE",
            "schema": "public",
            "table": "ai_jobs",
            "filter": f"id=eq.{uuid.uuid4()}",
        },
        {"event": "INSERT", "schema": "public", "table": "ai_job_logs"},
    ]

    async def join() -> list[Any]:
        url = f"{supabase_server.ws_url}?apikey={supabase_server.anon_key}&vsn=1.0.0"
        async with websockets.connect(url) as ws:
            join = {
                "config": {"postgres_changes": bindings},
                "access_token": supabase_server.anon_key,
            }
            await ws.send(
                json.dumps(
                    {
                        "topic": "realtime:job-1",
                        "event": "phx_join",
                        "payload": join,
                        "ref": "1",
                        "join_ref": "1",
                    }
                )
            )
            return [json.loads(await ws.recv()), json.loads(await ws.recv())]

    reply, system = run(join())

    assert reply["event"] == "phx_reply" and reply["ref"] == "1"
    echoed = reply["payload"]["response"]["postgres_changes"]
    assert [{k: v for k, v in b.items() if k != "id"} for b in echoed] == bindings
    ids = [b["id"] for b in echoed]
    assert all(isinstance(i, int) and i > 0 for i in ids) and len(set(ids)) == 3
    assert "join_ref" not in reply
    assert system == {
        "topic": "realtime:job-1",
        "event": "system",
        "payload": {
            "channel": "job-1",
            "extension": "postgres_changes",
            "message": "Subscribed to PostgreSQL",
            "status": "ok",
        },
        "ref": None,
    }


def test_the_python_client_reaches_subscribed_with_job_and_log_bindings(
    supabase_server: LocalSupabase,
) -> None:
    async def scenario() -> Listener:
        listener = await listen(supabase_server, "job-3", JOB_BINDINGS)
        await listener.close()
        return listener

    listener = run(scenario())

    assert listener.states[0] == ("SUBSCRIBED", None)


# --- 4, 5, 13. payloads -------------------------------------------------------------------


def test_a_matching_log_insert_gives_one_complete_event_and_a_non_matching_one_nothing(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)
    other_job = supabase_server.new_job(user)

    async def scenario() -> Listener:
        listener = await listen(
            supabase_server,
            "logs",
            [("INSERT", "ai_job_logs", f"job_id=eq.{job_id}"), ("INSERT", "ai_jobs", None)],
            as_user=user,
        )
        supabase_server.sql(
            "insert into ai_job_logs (job_id, attempt, message, progress, data) values "
            "(%s, 1, 'other', 5, null), (%s, 1, 'collecting data', 20, '{\"n\": 15}')",
            other_job,
            job_id,
        )
        await marker(supabase_server, listener, user)
        await listener.close()
        return listener

    listener = run(scenario())

    [event] = listener.payloads(0)
    assert set(event) == {"data", "ids"} and len(event["ids"]) == 1
    body = data(event)
    assert (
        body["type"] == "INSERT" and body["table"] == "ai_job_logs" and body["schema"] == "public"
    )
    assert body["errors"] is None and "old_record" not in body
    assert COMMIT_TIMESTAMP.match(body["commit_timestamp"])
    names = [c["name"] for c in body["columns"]]
    assert names == [
        "id",
        "job_id",
        "attempt",
        "level",
        "progress",
        "step",
        "message",
        "data",
        "created_at",
    ]
    assert body["columns"][0] == {"name": "id", "type": "int8"}
    record = body["record"]
    assert record["job_id"] == job_id and record["progress"] == 20 and record["data"] == {"n": 15}
    assert isinstance(record["id"], int) and record["created_at"].endswith("+00:00")


def test_an_update_fires_only_the_update_binding_with_the_key_as_old_record(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())

    async def scenario() -> tuple[Listener, str]:
        listener = await listen(
            supabase_server,
            "job-5",
            [("INSERT", "ai_jobs", None), ("UPDATE", "ai_jobs", None), ("*", "ai_jobs", None)],
            as_user=user,
        )
        job_id = supabase_server.new_job(user)
        supabase_server.sql(
            "update ai_jobs set progress = 50, current_step = 'AI analysis' where id = %s", job_id
        )
        await until(lambda: len(listener.payloads(1)) == 1)
        await listener.close()
        return listener, job_id

    listener, job_id = run(scenario())

    binding_ids = [c.id for c in listener.channel.postgres_changes_callbacks]
    inserted, updated = listener.payloads(2)
    assert listener.payloads(0) == [inserted] and listener.payloads(1) == [updated]
    body = data(updated)
    assert body["type"] == "UPDATE" and body["old_record"] == {"id": job_id}
    assert body["record"]["progress"] == 50 and body["record"]["current_step"] == "AI analysis"
    assert sorted(updated["ids"]) == sorted([binding_ids[1], binding_ids[2]])
    assert sorted(inserted["ids"]) == sorted([binding_ids[0], binding_ids[2]])


def test_a_delete_gives_the_key_as_old_record_and_no_record(supabase_server: LocalSupabase) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)

    async def scenario() -> Listener:
        listener = await listen(
            supabase_server,
            "job-del",
            [("DELETE", "ai_jobs", None)],
            token=supabase_server.service_key,
        )
        supabase_server.sql("delete from ai_jobs where id = %s", job_id)
        await until(lambda: len(listener.payloads()) == 1)
        await listener.close()
        return listener

    [event] = run(scenario()).payloads()

    body = data(event)
    assert (
        body["type"] == "DELETE" and body["old_record"] == {"id": job_id} and "record" not in body
    )


# --- 6. RLS ---------------------------------------------------------------------------------


def test_rls_decides_per_subscriber_after_commit(supabase_server: LocalSupabase) -> None:
    owner, stranger = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario() -> dict[str, Listener]:
        listeners = {
            "owner": await listen(supabase_server, "rls", JOB_BINDINGS, as_user=owner),
            "stranger": await listen(supabase_server, "rls", JOB_BINDINGS, as_user=stranger),
            "anon": await listen(supabase_server, "rls", JOB_BINDINGS),
            "service": await listen(
                supabase_server, "rls", JOB_BINDINGS, token=supabase_server.service_key
            ),
        }
        job_id = supabase_server.new_job(owner)
        supabase_server.sql("update ai_jobs set progress = 20 where id = %s", job_id)
        await until(lambda: len(listeners["owner"].payloads(1)) == 1)
        await marker(supabase_server, listeners["stranger"], stranger)
        await until(lambda: len(listeners["service"].payloads(0)) == 2)  # the job and the marker
        for listener in listeners.values():
            await listener.close()
        return listeners

    listeners = run(scenario())

    assert [data(p)["type"] for p in listeners["owner"].payloads()] == ["INSERT", "UPDATE"]
    assert [data(p)["record"]["user_id"] for p in listeners["stranger"].payloads()] == [stranger]
    assert listeners["anon"].payloads() == []
    assert {data(p)["record"]["user_id"] for p in listeners["service"].payloads()} == {
        owner,
        stranger,
    }


def test_an_expired_token_at_join_gets_an_invalid_jwt_error_and_the_client_retries(
    supabase_server: LocalSupabase,
) -> None:
    expired = supabase_server.user_token(str(uuid.uuid4()), expires_in_s=-5)

    async def scenario() -> Listener:
        listener = await listen(
            supabase_server, "expired", JOB_BINDINGS, token=expired, wait_for_subscribed=False
        )
        await until(lambda: len(listener.states) >= 2, timeout_s=20)
        await listener.close()
        return listener

    listener = run(scenario())

    state, error = listener.states[0]
    assert state == "CHANNEL_ERROR"
    assert error is not None and re.search(
        r"InvalidJWTToken: Token has expired \d+ seconds ago", error
    )
    assert listener.states[1][0] == "CHANNEL_ERROR"  # the client rejoined, and was refused again


def test_a_token_expiring_while_joined_closes_the_channel_with_a_system_error(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    # exp is whole seconds (int(now) + 5): 4 to 5 s to join, which 2 s (1 to 2) did not
    # always leave a loaded machine
    short = supabase_server.user_token(user, expires_in_s=5)

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "short", JOB_BINDINGS, token=short)
        await until(lambda: listener.channel.is_closed, timeout_s=30)
        supabase_server.new_job(user)
        await asyncio.sleep(0.5)  # the stand-in polls every 100 ms: a delivered event would be here
        await listener.close()
        return listener

    listener = run(scenario())

    # realtime-py hands a system error to the subscribe callback as CHANNEL_ERROR
    errors = [error for state, error in listener.states if state == "CHANNEL_ERROR"]
    [error] = [json.loads(str(e)) for e in errors]
    assert error["extension"] == "system" and error["status"] == "error"
    assert error["channel"] == "short" and error["message"].startswith("Token has expired")
    assert listener.payloads() == []


def test_an_access_token_push_switches_to_the_users_rows_and_resubscribes(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    token = supabase_server.user_token(user)

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "switch", JOB_BINDINGS)
        probe = await listen(
            supabase_server, "probe", JOB_BINDINGS, token=supabase_server.service_key
        )
        before = supabase_server.new_job(user, query="before")
        # once the service role has it, the stand-in has dealt with "before" for everyone
        await until(lambda: any(data(p)["record"]["id"] == before for p in probe.payloads()))
        await probe.close()
        await listener.client.set_auth(token)
        await until(
            lambda: sum(s["message"] == "Subscribed to PostgreSQL" for s in listener.systems) == 2
        )
        await listener.client.set_auth(token)  # the same token again: nothing
        supabase_server.new_job(user, query="after")
        await until(lambda: len(listener.payloads()) >= 1)
        await marker(supabase_server, listener, user)
        await listener.close()
        return listener

    listener = run(scenario())

    assert [data(p)["record"]["query"] for p in listener.payloads(0)] == ["after", "marker"]
    assert sum(s["message"] == "Subscribed to PostgreSQL" for s in listener.systems) == 2


# --- 10. bad bindings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        ("INSERT", "not_published", None),
        ("INSERT", "ai_jobs", "no_such_column=eq.1"),
        ("INSERT", "ai_jobs", "id=eq.not-a-uuid"),
        ("INSERT", "ai_jobs", "progress=like.5"),
    ],
)
def test_a_binding_that_cannot_be_subscribed_gets_a_system_error_but_the_join_stays_ok(
    supabase_server: LocalSupabase, spec: tuple[str, str, str | None]
) -> None:
    async def scenario() -> Listener:
        listener = await listen(supabase_server, "bad", [spec], wait_for_subscribed=False)
        await until(lambda: len(listener.states) == 2)
        await listener.close()
        return listener

    listener = run(scenario())

    [subscribed, (state, error)] = listener.states
    assert subscribed == ("SUBSCRIBED", None) and state == "CHANNEL_ERROR"
    system = json.loads(str(error))
    assert system["extension"] == "postgres_changes" and system["status"] == "error"
    assert system["message"].startswith("Unable to subscribe to changes with given parameters")
    # worded as the real server's (realtime_channel_test.exs)
    assert f"[event: INSERT, schema: public, table: {spec[1]}, filters: [" in system["message"]
    assert system["message"].endswith("], select: nil]")


# --- 11, 14. leave and copies -----------------------------------------------------------------


def test_each_channel_gets_its_own_copy_and_an_unsubscribed_one_nothing(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    token = supabase_server.user_token(user)

    async def scenario() -> list[Listener]:
        first = await listen(supabase_server, "copy-a", JOB_BINDINGS, token=token)
        second = await listen(supabase_server, "copy-b", JOB_BINDINGS, token=token)
        left = await listen(supabase_server, "copy-c", JOB_BINDINGS, token=token)
        await left.channel.unsubscribe()
        await until(lambda: left.channel.is_closed)
        job_id = supabase_server.new_job(user)
        await until(lambda: len(first.payloads()) == 1 and len(second.payloads()) == 1)
        await marker(supabase_server, first, user)
        for listener in (first, second, left):
            await listener.close()
        assert data(first.payloads()[0])["record"]["id"] == job_id
        return [first, second, left]

    first, second, left = run(scenario())

    assert data(first.payloads()[0]) == data(second.payloads()[0])
    assert left.payloads() == []


def test_phx_leave_is_answered_ok_then_phx_close(supabase_server: LocalSupabase) -> None:
    async def leave() -> list[Any]:
        url = f"{supabase_server.ws_url}?apikey={supabase_server.anon_key}&vsn=2.0.0"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(["1", "1", "realtime:x", "phx_join", {"config": {}}]))
            await ws.recv()
            await ws.send(json.dumps(["1", "2", "realtime:x", "phx_leave", {}]))
            return [json.loads(await ws.recv()), json.loads(await ws.recv())]

    reply, close = run(leave())

    assert reply == ["1", "2", "realtime:x", "phx_reply", {"status": "ok", "response": {}}]
    assert close == ["1", "1", "realtime:x", "phx_close", {}]


# --- 12. transactions ---------------------------------------------------------------------------


def test_a_transaction_gives_one_event_per_row_in_order_with_one_commit_time_and_a_rollback_none(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "tx", JOB_BINDINGS, as_user=user)
        with psycopg.connect(supabase_server.db_uri) as conn:
            for step in (1, 2, 3):
                conn.execute(
                    "insert into ai_job_logs (job_id, attempt, message, progress) "
                    "values (%s, 1, %s, %s)",
                    (job_id, f"step {step}", step),
                )
            conn.commit()
            conn.execute(
                "insert into ai_job_logs (job_id, attempt, message) values (%s, 1, 'gone')",
                (job_id,),
            )
            conn.rollback()
        await marker(supabase_server, listener, user)
        await listener.close()
        return listener

    logs = [data(p) for p in run(scenario()).payloads(2)]

    assert [log["record"]["message"] for log in logs] == ["step 1", "step 2", "step 3"]
    assert len({log["commit_timestamp"] for log in logs}) == 1


def test_concurrent_transactions_arrive_in_commit_order(supabase_server: LocalSupabase) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "order", JOB_BINDINGS, as_user=user)
        with (
            psycopg.connect(supabase_server.db_uri) as early,
            psycopg.connect(supabase_server.db_uri) as late,
        ):
            early.execute(
                "insert into ai_job_logs (job_id, attempt, message) values (%s, 1, 'began first')",
                (job_id,),
            )
            late.execute(
                "insert into ai_job_logs (job_id, attempt, message) values (%s, 1, 'began second')",
                (job_id,),
            )
            late.commit()
            early.commit()
        await until(lambda: len(listener.payloads(2)) == 2)
        await listener.close()
        return listener

    logs = [data(p)["record"]["message"] for p in run(scenario()).payloads(2)]

    assert logs == ["began second", "began first"]


# --- the rest of the protocol and the one base URL ------------------------------------------


def test_unknown_topics_get_an_error_reply(supabase_server: LocalSupabase) -> None:
    async def push() -> Any:
        url = f"{supabase_server.ws_url}?apikey={supabase_server.anon_key}&vsn=1.0.0"
        async with websockets.connect(url) as ws:
            await ws.send(
                json.dumps(
                    {"topic": "realtime:none", "event": "access_token", "payload": {}, "ref": "3"}
                )
            )
            return json.loads(await ws.recv())

    reply = run(push())

    assert reply["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}


def test_the_rest_api_answers_on_the_same_base_url(supabase_server: LocalSupabase) -> None:
    response = httpx.get(
        f"{supabase_server.url}/rest/v1/", headers={"apikey": supabase_server.anon_key}
    )

    assert response.status_code == 200


def test_a_payload_over_one_mebibyte_keeps_only_small_values_and_says_413(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "big", JOB_BINDINGS, as_user=user)
        supabase_server.sql(
            "insert into ai_job_logs (job_id, attempt, message, data) "
            "values (%s, 1, 'big', jsonb_build_object('blob', repeat('x', 1100000)))",
            job_id,
        )
        await until(lambda: len(listener.payloads(2)) == 1)
        await listener.close()
        return listener

    [event] = run(scenario()).payloads(2)

    body = data(event)
    assert body["errors"] == ["Error 413: Payload Too Large"]
    assert "data" not in body["record"] and body["record"]["message"] == "big"


def test_filters_compare_the_new_row_with_the_value_cast_to_the_column_type(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())
    job_id = supabase_server.new_job(user)
    specs: list[tuple[str, str, str | None]] = [
        ("UPDATE", "ai_jobs", "progress=gt.50"),  # 60 > 50, but 9 < 50 (an int, not text)
        ("UPDATE", "ai_jobs", "progress=lte.20"),
        ("UPDATE", "ai_jobs", "progress=gte.60"),
        ("UPDATE", "ai_jobs", "progress=lt.10"),
        ("UPDATE", "ai_jobs", "status=in.(completed,failed)"),
        ("UPDATE", "ai_jobs", "current_step=neq.step 9"),
    ]

    async def scenario() -> Listener:
        listener = await listen(supabase_server, "filters", specs, as_user=user)
        for progress in (9, 60):
            supabase_server.sql(
                "update ai_jobs set progress = %s, current_step = %s where id = %s",
                progress,
                f"step {progress}",
                job_id,
            )
        await until(lambda: len(listener.payloads(5)) == 1)  # the last update (step 60)
        await listener.close()
        return listener

    listener = run(scenario())

    def progress_seen(binding: int) -> list[int]:
        return [data(p)["record"]["progress"] for p in listener.payloads(binding)]

    assert progress_seen(0) == [60]
    assert progress_seen(1) == [9]
    assert progress_seen(2) == [60]
    assert progress_seen(3) == [9]
    assert progress_seen(4) == []
    assert progress_seen(5) == [60]
