"""Fixtures for the gateway tests: one embedded Postgres, a scratch database bootstrapped like
a Supabase project (infra/local/bootstrap.sql) with a catalogue of test functions (one per
response shape and error path), for the session; ``gateway`` (tests/conftest.py) serves it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from supabase import Client

from infra.local.gateway import GatewayHandle, start_gateway
from infra.local.migrate import bootstrap
from infra.local.postgres import Postgres
from tests.support import JWT_SECRET

DATABASE = "gateway_test"

FUNCTIONS_SQL = """
-- Test functions for the gateway: one per response shape, argument type and error path.

create type public.mood as enum ('happy', 'sad');

create table public.items (
  id uuid primary key default gen_random_uuid(),
  name text not null unique,
  qty int not null check (qty >= 0),
  tags text[] not null default '{}',
  created_at timestamptz not null default '2026-01-02 03:04:05.678+00'
);
grant all on table public.items to anon, authenticated, service_role;

-- scalars
create function public.add(a int, b int) returns int
language sql as $$ select a + b $$;

create function public.shout(t text) returns text
language sql as $$ select upper(t) $$;

create function public.is_positive(n int) returns boolean
language sql as $$ select n > 0 $$;

create function public.nothing() returns int
language sql as $$ select null::int $$;

create function public.with_default(a int, b int default 10) returns int
language sql as $$ select a + b $$;

create function public.echo_doc(doc jsonb) returns jsonb
language sql as $$ select doc $$;

create function public.echo_json_text(doc json) returns json
language sql as $$ select doc $$;

create function public.single_unnamed(jsonb) returns jsonb
language sql as $$ select jsonb_build_object('got', $1) $$;

-- every argument type the project uses; reports what arrived and as which type
create function public.describe(
  id uuid, n int, label text, doc jsonb, at timestamptz, moods public.mood[], tags text[]
) returns jsonb
language sql as $$
  select jsonb_build_object(
    'id', id, 'n', n, 'label', label, 'doc', doc, 'epoch', extract(epoch from at),
    'moods', moods, 'tags', tags, 'tagCount', cardinality(tags),
    'types', jsonb_build_array(pg_typeof(id)::text, pg_typeof(at)::text,
                               pg_typeof(moods)::text))
$$;

-- a json value with JSON whitespace around it
create function public.spaced_json() returns json
language sql as $$ select E' \n {"b" : [1, 2],  "a" : "x"} \t'::json $$;

create domain public.spaced_doc as json;
create function public.spaced_domain() returns public.spaced_doc
language sql as $$ select E'\r [1, {"x" : null}]\n'::public.spaced_doc $$;

create function public.stamp(at timestamptz) returns timestamptz
language sql as $$ select at $$;

-- single composite rows
create function public.add_item(p_name text, p_qty int, p_tags text[] default '{}')
returns public.items
language sql as $$
  insert into public.items (name, qty, tags) values (p_name, p_qty, p_tags) returning *
$$;

create function public.find_item(p_name text) returns public.items
language sql stable as $$ select * from public.items where name = p_name $$;

create function public.item_stats(p_prefix text, out total int, out names text[])
returns record
language sql stable as $$
  select count(*)::int, coalesce(array_agg(name order by name), '{}')
  from public.items where name like p_prefix || '%'
$$;

-- sets
create function public.list_items(p_prefix text, p_min int default 0)
returns setof public.items
language sql stable as $$
  select * from public.items where name like p_prefix || '%' and qty >= p_min order by name
$$;

create function public.item_table(p_prefix text) returns table(name text, qty int)
language sql stable as $$
  select name, qty from public.items where name like p_prefix || '%' order by name
$$;

create function public.series(n int) returns setof int
language sql immutable as $$ select generate_series(1, n) $$;

-- void
create function public.bump(p_name text) returns void
language sql as $$ update public.items set qty = qty + 1 where name = p_name $$;

-- errors
create function public.fail(kind text) returns void
language plpgsql as $$
begin
  if kind = 'conflict' then
    raise sqlstate 'PT409' using message = 'job already finished',
      detail = 'status is completed', hint = 'poll the job instead';
  elsif kind = 'teapot' then
    raise sqlstate 'PT418' using message = 'short and stout';
  elsif kind = 'plain' then
    raise exception 'plain failure';
  elsif kind = 'internal' then
    raise sqlstate 'XX000' using message = 'broken';
  elsif kind = 'custom' then
    raise sqlstate 'PGRST' using
      message = '{"code":"X1","message":"custom body","details":"d","hint":"h"}',
      detail = '{"status":402,"headers":{"X-Powered-By":"tests"}}';
  end if;
end
$$;

-- overloads
create function public.pick(a int) returns text language sql as $$ select 'a' $$;
create function public.pick(a int, b int) returns text language sql as $$ select 'a,b' $$;
create function public.pick(x text) returns text language sql as $$ select 'x' $$;

create function public.twin(a int, b int default 0) returns text
language sql as $$ select 'b' $$;
create function public.twin(a int, c text default '') returns text
language sql as $$ select 'c' $$;

-- who is calling
create function public.whoami() returns jsonb
language sql stable as $$
  select jsonb_build_object(
    'sub', current_setting('request.jwt.claims', true)::json ->> 'sub',
    'role', current_user,
    'method', current_setting('request.method', true),
    'path', current_setting('request.path', true),
    'probe', current_setting('request.headers', true)::json ->> 'x-probe')
$$;

-- only the service role may call this one
create function public.admin_only() returns text
language sql as $$ select 'secret' $$;
revoke execute on function public.admin_only() from public, anon, authenticated;
grant execute on function public.admin_only() to service_role;

create function public.show_setting(p_name text) returns text
language sql stable as $$ select current_setting(p_name) $$;

create function public.count_items() returns bigint
language sql stable as $$ select count(*) from public.items $$;

-- PostgREST treats OUT / INOUT / TABLE parameters as a composite result, even just one
create function public.one_out(p_a int, out doubled int)
language sql immutable as $$ select p_a * 2 $$;

create function public.one_column_table(n int) returns table(k int)
language sql immutable as $$ select generate_series(1, n) $$;

-- a STABLE function that writes (nextval) fails in PostgREST's READ ONLY transaction
create sequence public.tickets;
create function public.stable_ticket() returns bigint
language sql stable as $$ select nextval('public.tickets') $$;

-- a row-changing function returning more rows than db-max-rows
create table public.marks (id int primary key);
grant all on table public.marks to anon, authenticated, service_role;
create function public.mark_many(n int) returns setof public.marks
language sql as $$
  insert into public.marks select g from generate_series(1, n) g
  on conflict (id) do nothing returning *
$$;

create function public.count_marks() returns bigint
language sql stable as $$ select count(*) from public.marks $$;

-- function-level settings PostgREST hoists to the whole transaction
create function public.hasty_nap(seconds float) returns void
language sql set statement_timeout = '100ms' as $$ select pg_sleep(seconds) $$;

create function public.serial_isolation() returns text
language sql set default_transaction_isolation = 'serializable'
as $$ select current_setting('transaction_isolation') $$;

-- sleeps past the anon role's 3 s statement timeout
create function public.nap(seconds float) returns void
language sql as $$ select pg_sleep(seconds) $$;
"""


@pytest.fixture(scope="session")
def gateway_db(pg: Postgres) -> Iterator[str]:
    """Overrides tests/conftest.py's: one database for the session, bootstrapped like a
    Supabase project by the bootstrap itself (roles, timeouts, grants), with the catalogue."""
    uri = pg.create_database(DATABASE)
    bootstrap(uri)
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(FUNCTIONS_SQL)
    yield uri
    pg.drop_database(DATABASE)


@pytest.fixture(scope="session", params=["wsgi", "asgi"])
def gateway(gateway_db: str, request: pytest.FixtureRequest) -> Iterator[GatewayHandle]:
    """Overrides tests/conftest.py's: the gateway as the project URL serves it (Supabase's API
    key check in front of PostgREST), one for the session over the tier's catalogue, served
    both ways: as a WSGI application (a thread per request) and as the local Supabase server
    serves it (``RestApp`` under uvicorn, the call on the event loop), so that every test of
    the tier holds for both."""
    asgi = request.param == "asgi"
    with start_gateway(gateway_db, JWT_SECRET, require_api_key=True, asgi=asgi) as handle:
        yield handle


@pytest.fixture
def http(gateway: GatewayHandle, anon_key: str) -> Iterator[httpx.Client]:
    """Raw HTTP carrying the project's anon key, as every Supabase client sends an ``apikey``
    (the API gateway refuses a request without one); a test sets ``Authorization``."""
    with httpx.Client(base_url=gateway.url, timeout=10, headers={"apikey": anon_key}) as client:
        yield client


@pytest.fixture
def supabase_for(
    gateway: GatewayHandle, supabase_client: Callable[..., Client]
) -> Callable[..., Client]:
    """``supabase_for(api_key, access_token=None)`` → a real supabase client on the gateway."""
    return functools.partial(supabase_client, gateway.url)


@pytest.fixture
def service(supabase_for: Callable[..., Client], service_key: str) -> Client:
    return supabase_for(service_key)
