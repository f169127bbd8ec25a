"""REALTIME.md's cases through supabase-js 2.119.1 (npm, run by node, vsn 2.0.0): anonymous
sign-in through the Auth stand-in, then ``channel().on('postgres_changes')`` as a browser uses
it. Rows are written to the real database by SQL, as the worker's SQL functions write them.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.js.driver import SupabaseJs
from tests.support import LocalSupabase

JOB_BINDINGS = [
    {"event": "INSERT", "schema": "public", "table": "ai_jobs"},
    {"event": "UPDATE", "schema": "public", "table": "ai_jobs"},
    {"event": "INSERT", "schema": "public", "table": "ai_job_logs"},
]


def subscribed(js: SupabaseJs, name: str, times: int = 1, timeout_s: float = 15) -> None:
    def count() -> int:
        return sum(s.get("message") == "Subscribed to PostgreSQL" for s in js.systems(name))

    js.until(lambda: ("SUBSCRIBED", None) in js.statuses(name), timeout_s)
    js.until(lambda: count() >= times, timeout_s)


def signed_in_on(js: SupabaseJs, name: str) -> str:
    """Sign supabase-js in anonymously, join ``name`` on the job tables; the user's id."""
    user = str(js.sign_in()["userId"])
    js.subscribe(name, JOB_BINDINGS)
    subscribed(js, name)
    return user


def test_an_anonymous_visitor_receives_its_own_rows_and_not_anothers(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    with SupabaseJs(js_installed, supabase_server) as js:
        user = signed_in_on(js, "mine")

        job_id = supabase_server.new_job(user)
        supabase_server.new_job(str(uuid.uuid4()), query="someone else's")
        supabase_server.sql("update ai_jobs set progress = 20 where id = %s", job_id)
        supabase_server.sql(
            "insert into ai_job_logs (job_id, attempt, message, progress, data) "
            "values (%s, 1, 'collecting data', 20, '{\"servers\": 15}')",
            job_id,
        )
        js.until(lambda: len(js.changes("mine", 2)) == 1)

    inserted, updated, logged = js.changes("mine", 0), js.changes("mine", 1), js.changes("mine", 2)
    assert [p["new"]["id"] for p in inserted] == [job_id]
    assert inserted[0]["eventType"] == "INSERT" and inserted[0]["old"] == {}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", inserted[0]["commit_timestamp"])
    assert inserted[0]["errors"] is None and inserted[0]["schema"] == "public"
    [update] = updated
    assert update["eventType"] == "UPDATE" and update["old"] == {"id": job_id}
    assert update["new"]["progress"] == 20  # typed: a number, not "20"
    assert logged[0]["new"]["data"] == {"servers": 15}


def test_an_expired_token_at_join_is_a_channel_error_and_supabase_js_retries(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    expired = supabase_server.user_token(str(uuid.uuid4()), expires_in_s=-30)
    with SupabaseJs(js_installed, supabase_server) as js:
        js.send(cmd="setAuth", token=expired)
        js.subscribe("expired", JOB_BINDINGS)
        js.until(lambda: len(js.statuses("expired")) >= 2, timeout_s=30)

    first, retried = js.statuses("expired")[:2]
    assert first[0] == "CHANNEL_ERROR"
    assert first[1] is not None and "InvalidJWTToken: Token has expired" in first[1]
    # supabase-js rejoined by itself (with the token its auth callback gives it then)
    assert retried[0] in ("CHANNEL_ERROR", "SUBSCRIBED")


def test_an_access_token_switch_from_the_anon_key_starts_the_users_rows(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    user = str(uuid.uuid4())
    with SupabaseJs(js_installed, supabase_server) as js:
        js.subscribe("switch", JOB_BINDINGS)
        subscribed(js, "switch")
        js.send(cmd="setAuth", token=supabase_server.user_token(user))
        subscribed(js, "switch", times=2)
        job_id = supabase_server.new_job(user)
        js.until(lambda: len(js.changes("switch", 0)) == 1)

    assert js.changes("switch", 0)[0]["new"]["id"] == job_id


def test_a_token_expiring_while_joined_ends_the_channel(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    user = str(uuid.uuid4())
    with SupabaseJs(js_installed, supabase_server) as js:
        # exp is whole seconds (int(now) + 5): 4 to 5 s to join, which 2 s (1 to 2) did not
        # always leave a loaded machine
        js.send(cmd="setAuth", token=supabase_server.user_token(user, expires_in_s=5))
        js.subscribe("short", JOB_BINDINGS)
        subscribed(js, "short")
        js.until(lambda: any(s[0] != "SUBSCRIBED" for s in js.statuses("short")), timeout_s=30)

    errors = [s for s in js.systems("short") if s.get("status") == "error"]
    assert errors and errors[0]["message"].startswith("Token has expired")
    assert js.statuses("short")[1][0] in ("CHANNEL_ERROR", "CLOSED")


def test_supabase_js_rejoins_after_the_socket_drops_and_receives_later_changes(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    with SupabaseJs(js_installed, supabase_server) as js:
        # signed in: every rejoin takes the session's token, as in a browser
        user = signed_in_on(js, "again")
        supabase_server.restart()
        subscribed(js, "again", times=2, timeout_s=40)
        job_id = supabase_server.new_job(user)
        js.until(lambda: len(js.changes("again", 0)) == 1, timeout_s=30)

    assert js.changes("again", 0)[0]["new"]["id"] == job_id


@pytest.mark.timeout(200)
def test_supabase_js_stays_connected_for_90_seconds_on_heartbeats(
    js_installed: Path, supabase_server: LocalSupabase
) -> None:
    import time

    with SupabaseJs(js_installed, supabase_server) as js:
        user = signed_in_on(js, "long")
        time.sleep(90)
        js.send(cmd="heartbeats")
        beats = js.expect(lambda e: e["type"] == "heartbeats")
        job_id = supabase_server.new_job(user)
        js.until(lambda: len(js.changes("long", 0)) == 1)

    assert beats["connected"] is True
    assert beats["counts"].get("ok", 0) >= 3  # every 25 s
    assert set(beats["counts"]) <= {"sent", "ok"}  # no timeout, error or disconnect
    assert js.statuses("long") == [("SUBSCRIBED", None)]  # never rejoined
    assert js.changes("long", 0)[0]["new"]["id"] == job_id
