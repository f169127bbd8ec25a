-- What a Supabase project provides before any migration runs, recreated for the local
-- stand-in. Reference: supabase/postgres, migrations/db/init-scripts/00000000000000-initial-schema.sql
-- and 00000000000003-post-setup.sql, then its migrations/db/migrations (file names cited below),
-- and supabase/realtime's dev setup. Runs as the cluster's superuser (supabase_admin, as on
-- Supabase); idempotent: safe to run on every start.
--
-- Mind the default privileges: like Supabase, every new table, sequence and FUNCTION in
-- public is granted to anon and authenticated. Our migrations must revoke what they do not
-- want exposed, and the tests run against these same defaults.

-- On Supabase `postgres` is not a superuser (10000000000000_demote-postgres.sql). A server
-- whose `postgres` is its superuser cannot be made to match, so say so instead of pretending.
do $$
begin
  if exists (select from pg_roles where rolname = 'postgres' and rolsuper) then
    raise exception 'role "postgres" is a superuser on this server; on Supabase it is not'
      using hint = 'Create the server with another superuser (initdb -U supabase_admin, or'
        ' POSTGRES_USER=supabase_admin for the postgres image) and connect as that one.';
  end if;
end
$$;

do $$
begin
  if not exists (select from pg_roles where rolname = 'postgres') then
    create role postgres;
  end if;
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator noinherit login;
  end if;
end
$$;

-- The migrating role: 10000000000000_demote-postgres.sql.
alter role postgres nosuperuser createdb createrole login replication bypassrls;
-- 20230529180330_alter_api_roles_for_inherit.sql: the API roles inherit.
alter role anon inherit;
alter role authenticated inherit;
alter role service_role inherit;

grant anon, authenticated, service_role to authenticator;
-- 20230201083204_grant_auth_roles_to_postgres.sql and the predefined roles granted later.
grant anon, authenticated, service_role to postgres;
grant pg_monitor, pg_read_all_data, pg_signal_backend to postgres;

-- Timeouts. PostgREST logs in as authenticator, so its settings are the session's for every
-- API role (20221028101028_set_authenticator_timeout.sql, 20231130133139_set_lock_timeout_to_
-- authenticator_role.sql); PostgREST then applies the switched role's own settings per
-- transaction (anon 3 s, authenticated 8 s: the initial schema). service_role has none of its
-- own, so it runs under authenticator's 8 s.
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
-- 00000000000003-post-setup.sql
alter role postgres set search_path to "$user", public, extensions;

-- Supabase databases run in UTC (timestamps then serialise as +00:00 as in production) and
-- belong to postgres, so postgres may create in public (owned by pg_database_owner).
do $$
begin
  execute format('alter database %I set timezone to %L', current_database(), 'UTC');
  execute format('alter database %I owner to postgres', current_database());
  execute format('grant all on database %I to postgres', current_database());
end
$$;

grant usage on schema public to postgres, anon, authenticated, service_role;

-- The initial schema sets these for postgres (then a superuser) and for supabase_admin (the
-- superuser running this file): objects either creates are granted to the API roles.
alter default privileges for role postgres in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to postgres, anon, authenticated, service_role;

create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
grant all on schema extensions to postgres;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;
grant all on schema auth to postgres;

-- As Supabase defines them: the JWT claims PostgREST puts in request.jwt.claims.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to postgres, anon, authenticated, service_role;

-- Created by postgres in the initial schema, so postgres owns it and its migrations may add
-- their tables to it.
do $$
begin
  if not exists (select from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;
alter publication supabase_realtime owner to postgres;

-- The migration history is created by the migrating role (infra/local/migrate.py), as the
-- Supabase CLI does; a database bootstrapped before that owns it here.
do $$
begin
  if exists (select from pg_namespace where nspname = 'supabase_migrations') then
    alter schema supabase_migrations owner to postgres;
  end if;
  if to_regclass('supabase_migrations.schema_migrations') is not null then
    alter table supabase_migrations.schema_migrations owner to postgres;
  end if;
end
$$;
