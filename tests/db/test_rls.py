"""Row level security and grants, as Supabase applies them to browser roles."""

from __future__ import annotations

import uuid

import pytest

from tests.support import Db, SqlError, store_calls

ALICE = str(uuid.uuid4())
BOB = str(uuid.uuid4())


@pytest.fixture
def jobs(db_uri: str) -> dict[str, str]:
    with Db(db_uri) as service:
        alice_job = service.new_job(user=ALICE)
        bob_job = service.new_job(user=BOB)
        claimed = service.one("claim_job", job_id=bob_job["id"])
        service.report(claimed, 20, "collecting")
    return {"alice": alice_job["id"], "bob": bob_job["id"]}


def _claims(user: str) -> dict[str, str]:
    return {"sub": user, "role": "authenticated"}


def test_signed_in_user_reads_only_their_own_jobs_and_logs(
    db_uri: str, jobs: dict[str, str]
) -> None:
    with Db(db_uri, role="authenticated", claims=_claims(ALICE)) as alice:
        ids = [row[0] for row in alice.execute("select id::text from public.ai_jobs")]
        log_jobs = {row[0] for row in alice.execute("select job_id::text from public.ai_job_logs")}
    assert ids == [jobs["alice"]]
    assert log_jobs == {jobs["alice"]}
    with Db(db_uri, role="authenticated", claims=_claims(BOB)) as bob:
        assert [r[0] for r in bob.execute("select id::text from public.ai_jobs")] == [jobs["bob"]]


def test_anon_reads_nothing(db_uri: str, jobs: dict[str, str]) -> None:
    with Db(db_uri, role="anon", claims={"role": "anon"}) as anon, pytest.raises(SqlError) as err:
        anon.execute("select * from public.ai_jobs")
    assert err.value.sqlstate == "42501"


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "statement",
    [
        "insert into public.ai_jobs (type, query, user_id) values ('report', 'x', %s)",
        "update public.ai_jobs set status = 'completed' where user_id = %s",
        "delete from public.ai_jobs where user_id = %s",
        "insert into public.ai_job_logs (job_id, attempt, message)"
        " select id, 0, 'forged' from public.ai_jobs where user_id = %s",
    ],
)
def test_browser_roles_cannot_write(
    db_uri: str, jobs: dict[str, str], role: str, statement: str
) -> None:
    with Db(db_uri, role=role, claims=_claims(ALICE)) as browser, pytest.raises(SqlError) as err:
        browser.execute(statement, (ALICE,))
    assert err.value.sqlstate == "42501"
    with Db(db_uri) as service:
        assert service.job(jobs["alice"])["status"] == "queued"


#: every function in the public schema (what Supabase exposes over /rest/v1/rpc), by signature
PUBLIC_FUNCTIONS = (
    "select p.oid::regprocedure::text, p.proname, p.prorettype = 'trigger'::regtype,"
    " has_function_privilege(current_user, p.oid, 'EXECUTE')"
    " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
    " where n.nspname = 'public' order by 1"
)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_browser_roles_cannot_execute_any_public_function(db_uri: str, role: str) -> None:
    # Supabase's default privileges grant EXECUTE on new public functions to anon and
    # authenticated; every migration must revoke it. Walks pg_proc, so a new function that
    # forgets the revoke fails here. INHERIT (as on Supabase) counts what the role inherits.
    with Db(db_uri, role=role) as browser:
        functions = browser.execute(PUBLIC_FUNCTIONS)
    assert [signature for signature, _, _, executable in functions if executable] == []
    walked = {name for _, name, _, _ in functions}
    assert set(store_calls()) <= walked, "the walk sees every function the store calls"


def test_the_service_role_can_execute_every_public_function_but_the_triggers(db_uri: str) -> None:
    # The other half of the grants: a function revoked from everyone is dead code, or a
    # migration that forgot its grant to service_role (the role the store calls with).
    with Db(db_uri) as service:
        functions = service.execute(PUBLIC_FUNCTIONS)
    refused = [sig for sig, _, trigger, executable in functions if not trigger and not executable]
    assert refused == []
    assert set(store_calls()) <= {name for _, name, _, _ in functions}


def test_tables_are_in_the_realtime_publication(db_uri: str) -> None:
    with Db(db_uri) as service:
        rows = service.execute(
            "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
            " order by tablename"
        )
    assert rows == [("ai_job_logs",), ("ai_jobs",)]


def test_default_privileges_are_supabase_like(db_uri: str) -> None:
    # A function created after the bootstrap is executable by anon, as on Supabase: the
    # revocation in our migration is what closes it, so this must stay true locally.
    with Db(db_uri, role="postgres") as owner:
        owner.execute("create function public.probe() returns int language sql as 'select 1'")
    with Db(db_uri, role="anon") as anon:
        assert anon.execute("select public.probe()") == [(1,)]
