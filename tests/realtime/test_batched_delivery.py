"""The Realtime stand-in asks the database once per poll (one statement for the records, one
message per distinct claims set), as the real server's one ``realtime.list_changes`` call per
poll does. These tests put many changes and several subscribers into one poll — one
transaction is always drained by one poll — and check that each still sees exactly what RLS,
its filters and its bindings let it see, in commit order, without the stand-in falling back to
deciding one change at a time.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.realtime.listen import Listener, listen, until
from tests.support import LocalSupabase

JOBS = [("INSERT", "ai_jobs", None), ("UPDATE", "ai_jobs", None)]
ONE_BY_ONE = "fell back to one change at a time"


def data(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(payload["data"])


def test_several_users_in_one_poll_each_see_only_their_own_rows(
    supabase_server: LocalSupabase,
) -> None:
    users = [str(uuid.uuid4()) for _ in range(3)]
    watched = str(uuid.uuid4())

    async def scenario() -> tuple[dict[str, Listener], list[str]]:
        listeners = {
            user: await listen(supabase_server, "mine", JOBS, as_user=user) for user in users
        }
        # same user, a filter on another column: only the rows whose query matches
        listeners["filtered"] = await listen(
            supabase_server, "filtered", [("*", "ai_jobs", "query=eq.watched")], as_user=users[0]
        )
        listeners["anon"] = await listen(supabase_server, "anon", JOBS)
        listeners["service"] = await listen(
            supabase_server, "service", JOBS, token=supabase_server.service_key
        )
        # one transaction: two jobs per user, then an update of each, all in one poll
        rows = supabase_server.sql(
            "with made as (insert into ai_jobs (user_id, type, query) "
            "select u, 'analysis', q from unnest(%s::uuid[]) with ordinality as t(u, n), "
            "unnest(array['watched', 'other']) as q order by n, q desc returning id, user_id) "
            "select id::text from made",
            users,
        )
        ids = [str(r[0]) for r in rows]
        supabase_server.sql("update ai_jobs set progress = 10 where id = any(%s::uuid[])", ids)
        await until(lambda: len(listeners["service"].payloads()) == 12)
        await until(lambda: all(len(listeners[u].payloads()) == 4 for u in users))
        await until(lambda: len(listeners["filtered"].payloads()) == 2)
        # a job of nobody listening, then a marker the anon channel cannot see either: the
        # service channel receiving the marker means every earlier change was decided
        supabase_server.new_job(watched, query="marker")
        await until(lambda: len(listeners["service"].payloads()) == 13)
        for listener in listeners.values():
            await listener.close()
        return listeners, ids

    listeners, ids = asyncio.run(scenario())

    for user in users:
        owners = {data(p)["record"]["user_id"] for p in listeners[user].payloads()}
        assert owners == {user}
        types = [data(p)["type"] for p in listeners[user].payloads()]
        assert types == ["INSERT", "INSERT", "UPDATE", "UPDATE"]
    filtered = [data(p) for p in listeners["filtered"].payloads()]
    assert [(d["type"], d["record"]["query"]) for d in filtered] == [
        ("INSERT", "watched"),
        ("UPDATE", "watched"),
    ]
    assert all(d["record"]["user_id"] == users[0] for d in filtered)
    assert listeners["anon"].payloads() == []
    service = [data(p) for p in listeners["service"].payloads()]
    assert [d["record"]["id"] for d in service[:12]] == ids + ids  # commit, then statement order
    assert ONE_BY_ONE not in supabase_server.log_text()


def test_a_poll_with_hundreds_of_changes_delivers_each_once_in_statement_order(
    supabase_server: LocalSupabase,
) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    job_id = supabase_server.new_job(user)
    other_job = supabase_server.new_job(other)
    count = 300

    async def scenario() -> Listener:
        listener = await listen(
            supabase_server,
            "many",
            [("INSERT", "ai_job_logs", f"job_id=eq.{job_id}"), ("INSERT", "ai_jobs", None)],
            as_user=user,
        )
        # the other user's job's logs interleaved with this one's, all in one transaction
        supabase_server.sql(
            "insert into ai_job_logs (job_id, attempt, message, progress, data) "
            "select j, 1, 'step ' || n, mod(n, 101), jsonb_build_object('n', n) "
            "from generate_series(1, %s) as n, unnest(array[%s::uuid, %s::uuid]) as j "
            "order by n, j",
            count,
            job_id,
            other_job,
        )
        await until(lambda: len(listener.payloads(0)) == count, timeout_s=30)
        marker = supabase_server.new_job(user, query="marker")
        await until(lambda: any(data(p)["record"]["id"] == marker for p in listener.payloads(1)))
        await listener.close()
        return listener

    listener = asyncio.run(scenario())

    logs = [data(p)["record"] for p in listener.payloads(0)]
    assert [r["message"] for r in logs] == [f"step {n}" for n in range(1, count + 1)]
    assert {r["job_id"] for r in logs} == {job_id}
    assert [r["data"] for r in logs] == [{"n": n} for n in range(1, count + 1)]
    assert all(isinstance(r["progress"], int) for r in logs)
    assert ONE_BY_ONE not in supabase_server.log_text()
