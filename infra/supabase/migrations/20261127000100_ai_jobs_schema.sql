-- Tables of the AI job queue: ai_jobs (one row per job, the source of truth) and
-- ai_job_logs (progress and log lines). Seed §7.1 plus what the state machine needs.

create table public.ai_jobs (
  id uuid primary key default gen_random_uuid(),
  user_id text not null default 'anonymous',

  type text not null,
  query text not null,
  priority text not null default 'normal',

  status text not null default 'queued',
  progress integer not null default 0,
  current_step text,

  result jsonb,
  error text,
  error_code text,

  -- complexity routing (seed §10 Phase 3)
  complexity text,
  complexity_score real,
  estimated_seconds integer,

  -- idempotent create: same key + same request hash -> same job
  idempotency_key text,
  request_hash text,

  -- at-least-once delivery: every attempt claims a lease; later writes must carry its token
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  lease_token uuid,
  lease_expires_at timestamptz,

  -- the Cloud Tasks nudge: how many tasks were created for the job and when the last was
  dispatch_count integer not null default 0,
  dispatched_at timestamptz,

  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,

  metadata jsonb not null default '{}'::jsonb,

  constraint ai_jobs_valid_status check (
    status in ('queued', 'processing', 'completed', 'failed', 'cancelled')),
  constraint ai_jobs_valid_priority check (priority in ('low', 'normal', 'high')),
  constraint ai_jobs_valid_type check (
    type in ('analysis', 'report', 'optimization', 'prediction')),
  constraint ai_jobs_valid_complexity check (
    complexity is null or complexity in ('simple', 'medium', 'complex')),
  constraint ai_jobs_progress_range check (progress between 0 and 100),
  constraint ai_jobs_query_length check (char_length(query) between 1 and 4000),
  constraint ai_jobs_attempts_range check (attempts >= 0 and max_attempts between 1 and 20),
  constraint ai_jobs_lease_only_while_processing check (
    (status = 'processing') = (lease_token is not null and lease_expires_at is not null)),
  constraint ai_jobs_result_only_when_completed check (
    result is null or status = 'completed'),
  constraint ai_jobs_metadata_object check (jsonb_typeof(metadata) = 'object'),
  constraint ai_jobs_idempotency_pair check ((idempotency_key is null) = (request_hash is null)),
  constraint ai_jobs_idempotency_key_unique unique (user_id, idempotency_key)
);

comment on table public.ai_jobs is
  'AI jobs. Written only through the SQL functions (service_role); users read their own rows.';

-- listing a user's jobs newest first (keyset on created_at, id); also serves the rate caps
create index ai_jobs_user_created_idx on public.ai_jobs (user_id, created_at desc, id desc);
-- the per-user cap on unfinished jobs
create index ai_jobs_user_unfinished_idx on public.ai_jobs (user_id)
  where status in ('queued', 'processing');
-- the reaper scans only unfinished jobs
create index ai_jobs_unfinished_idx on public.ai_jobs (status, updated_at)
  where status in ('queued', 'processing');
-- retention
create index ai_jobs_finished_idx on public.ai_jobs (completed_at)
  where status in ('completed', 'failed', 'cancelled');

create table public.ai_job_logs (
  id bigint generated always as identity primary key,
  job_id uuid not null references public.ai_jobs (id) on delete cascade,
  attempt integer not null,
  level text not null default 'info',
  progress integer,
  step text,
  message text not null,
  data jsonb,
  created_at timestamptz not null default now(),
  constraint ai_job_logs_valid_level check (level in ('debug', 'info', 'warning', 'error')),
  constraint ai_job_logs_progress_range check (progress is null or progress between 0 and 100)
);

create index ai_job_logs_job_idx on public.ai_job_logs (job_id, id);

create function public.ai_jobs_touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create trigger ai_jobs_touch_updated_at
  before update on public.ai_jobs
  for each row execute function public.ai_jobs_touch_updated_at();

-- Row level security. The seed's "FOR UPDATE USING (true)" let anyone change any job; here
-- a signed-in user may only READ their own rows (what Supabase Realtime delivers), and no
-- policy allows anon or authenticated to insert, update or delete: every write goes through
-- the functions below with the service role (which bypasses RLS).
alter table public.ai_jobs enable row level security;
alter table public.ai_job_logs enable row level security;

create policy "users read their own jobs" on public.ai_jobs
  for select to authenticated
  using (user_id = (select auth.uid())::text);

create policy "users read the logs of their own jobs" on public.ai_job_logs
  for select to authenticated
  using (exists (
    select 1 from public.ai_jobs j
    where j.id = ai_job_logs.job_id and j.user_id = (select auth.uid())::text));

-- Belt and braces against Supabase's default grants: browsers never write, anon never reads.
revoke all on public.ai_jobs, public.ai_job_logs from anon, authenticated, public;
grant select on public.ai_jobs, public.ai_job_logs to authenticated;
grant all on public.ai_jobs, public.ai_job_logs to service_role;
revoke execute on function public.ai_jobs_touch_updated_at() from public, anon, authenticated;

alter publication supabase_realtime add table public.ai_jobs, public.ai_job_logs;
