-- The job state machine, one SQL function per operation, called with supabase.rpc() by the
-- functions (service_role). Every transition is one guarded UPDATE ... WHERE status IN (...)
-- RETURNING; an illegal one changes nothing and raises a stable error:
--
--   errcode PT400  message invalid_argument       (HTTP 400 through PostgREST)
--   errcode PT404  message job_not_found          (404)
--   errcode PT409  message illegal_state          (409; detail {"status": <current>})
--   errcode PT409  message lease_lost             (409; detail {"status": <current>})
--   errcode PT409  message idempotency_conflict   (409; detail {"jobId": <existing>})
--   errcode PT429  message rate_limited           (429; detail {"limit", "retryAfter"})
--   errcode PT429  message too_many_active_jobs   (429; detail {"limit", "retryAfter"})
--
-- shared/store.py maps them to the project's exceptions. The hint carries a human sentence.

-- Explain why a worker write (progress, complete, fail) matched nothing, and raise.
create function public.ai_jobs_refuse_write(p_job_id uuid, p_lease_token uuid)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_status text;
  v_token uuid;
begin
  select status, lease_token into v_status, v_token from public.ai_jobs where id = p_job_id;
  if not found then
    raise exception using errcode = 'PT404', message = 'job_not_found',
      detail = json_build_object('jobId', p_job_id)::text, hint = 'no job with this id';
  end if;
  if v_status in ('completed', 'failed', 'cancelled') then
    raise exception using errcode = 'PT409', message = 'illegal_state',
      detail = json_build_object('status', v_status)::text,
      hint = format('job is already %s', v_status);
  end if;
  raise exception using errcode = 'PT409', message = 'lease_lost',
    detail = json_build_object('status', v_status)::text,
    hint = 'the lease token does not match the current attempt';
end
$$;

create function public.create_job(
  p_type text,
  p_query text,
  p_user_id text default 'anonymous',
  p_priority text default 'normal',
  p_idempotency_key text default null,
  p_request_hash text default null,
  p_complexity text default null,
  p_complexity_score real default null,
  p_estimated_seconds integer default null,
  p_metadata jsonb default '{}'::jsonb,
  p_max_attempts integer default 3,
  p_max_per_minute integer default 30,
  p_max_active integer default 10,
  out job public.ai_jobs,
  out created boolean)
language plpgsql
set search_path = ''
as $$
declare
  v_recent integer;
  v_active integer;
  v_oldest timestamptz;
begin
  if (p_idempotency_key is null) <> (p_request_hash is null) then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'an idempotency key needs a request hash';
  end if;

  -- One creator per user at a time, so the caps and the idempotency check are exact.
  perform pg_advisory_xact_lock(hashtextextended('ai_jobs.create:' || p_user_id, 0));

  if p_idempotency_key is not null then
    select * into job from public.ai_jobs j
      where j.user_id = p_user_id and j.idempotency_key = p_idempotency_key;
    if found then
      if job.request_hash is distinct from p_request_hash then
        raise exception using errcode = 'PT409', message = 'idempotency_conflict',
          detail = json_build_object('jobId', job.id)::text,
          hint = 'this Idempotency-Key was used with a different request';
      end if;
      created := false;
      return;
    end if;
  end if;

  select count(*), min(j.created_at) into v_recent, v_oldest from public.ai_jobs j
    where j.user_id = p_user_id and j.created_at > now() - interval '1 minute';
  if v_recent >= p_max_per_minute then
    raise exception using errcode = 'PT429', message = 'rate_limited',
      detail = json_build_object(
        'limit', p_max_per_minute, 'windowSeconds', 60,
        'retryAfter', greatest(1, ceil(extract(epoch from v_oldest + interval '1 minute' - now())))
      )::text,
      hint = format('at most %s jobs per minute', p_max_per_minute);
  end if;

  select count(*) into v_active from public.ai_jobs j
    where j.user_id = p_user_id and j.status in ('queued', 'processing');
  if v_active >= p_max_active then
    raise exception using errcode = 'PT429', message = 'too_many_active_jobs',
      detail = json_build_object('limit', p_max_active, 'retryAfter', 10)::text,
      hint = format('at most %s unfinished jobs at a time', p_max_active);
  end if;

  -- dispatch_count/dispatched_at presume the enqueue that follows; if it fails the caller
  -- calls release_dispatch and the reaper dispatches the job.
  insert into public.ai_jobs (
    user_id, type, query, priority, idempotency_key, request_hash,
    complexity, complexity_score, estimated_seconds, metadata, max_attempts,
    dispatch_count, dispatched_at, current_step)
  values (
    p_user_id, p_type, p_query, p_priority, p_idempotency_key, p_request_hash,
    p_complexity, p_complexity_score, p_estimated_seconds, coalesce(p_metadata, '{}'::jsonb),
    p_max_attempts, 1, now(), 'queued')
  returning * into job;

  insert into public.ai_job_logs (job_id, attempt, progress, step, message)
    values (job.id, 0, 0, 'queued', 'job created');
  created := true;
end
$$;

create function public.release_dispatch(p_job_id uuid)
returns boolean
language sql
set search_path = ''
as $$
  with released as (
    update public.ai_jobs set dispatched_at = null
      where id = p_job_id and status = 'queued'
      returning id)
  select exists (select 1 from released)
$$;

create function public.get_job(p_job_id uuid, p_user_id text default null)
returns public.ai_jobs
language plpgsql
stable
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  select * into v_job from public.ai_jobs j
    where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id);
  if not found then
    raise exception using errcode = 'PT404', message = 'job_not_found',
      detail = json_build_object('jobId', p_job_id)::text, hint = 'no job with this id';
  end if;
  return v_job;
end
$$;

-- A page of the user's jobs, newest first, without `result` (it can be many kilobytes; the
-- list shows jobs, not results). jsonb_populate_record keeps the row type, so columns added
-- later still come through; it runs in a LATERAL join, once per listed row (`(f(x)).*` would
-- run it once per column).
create function public.list_jobs(
  p_user_id text,
  p_statuses text[] default null,
  p_types text[] default null,
  p_limit integer default 20,
  p_before_created_at timestamptz default null,
  p_before_id uuid default null)
returns setof public.ai_jobs
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_limit is null or p_limit not between 1 and 101 then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'limit must be between 1 and 100';
  end if;
  if (p_before_created_at is null) <> (p_before_id is null) then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'a cursor needs both created_at and id';
  end if;
  return query
    select r.* from (
      select * from public.ai_jobs j
      where j.user_id = p_user_id
        and (p_statuses is null or j.status = any (p_statuses))
        and (p_types is null or j.type = any (p_types))
        and (p_before_created_at is null
             or (j.created_at, j.id) < (p_before_created_at, p_before_id))
      order by j.created_at desc, j.id desc
      limit p_limit
    ) page
    cross join lateral jsonb_populate_record(null::public.ai_jobs, to_jsonb(page) - 'result') r
    order by r.created_at desc, r.id desc;
end
$$;

create function public.list_job_logs(
  p_job_id uuid,
  p_user_id text default null,
  p_after_id bigint default 0,
  p_limit integer default 100)
returns setof public.ai_job_logs
language plpgsql
stable
set search_path = ''
as $$
begin
  perform public.get_job(p_job_id, p_user_id);
  return query
    select * from public.ai_job_logs l
    where l.job_id = p_job_id and l.id > coalesce(p_after_id, 0)
    order by l.id
    limit least(greatest(coalesce(p_limit, 100), 1), 500);
end
$$;

create function public.cancel_job(
  p_job_id uuid, p_user_id text default null, p_reason text default null)
returns public.ai_jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
  v_status text;
begin
  update public.ai_jobs j
    set status = 'cancelled', completed_at = now(), lease_token = null,
        lease_expires_at = null, current_step = 'cancelled', error_code = 'cancelled',
        error = coalesce(p_reason, 'cancelled by the client')
    where j.id = p_job_id and j.status in ('queued', 'processing')
      and (p_user_id is null or j.user_id = p_user_id)
    returning * into v_job;
  if found then
    insert into public.ai_job_logs (job_id, attempt, progress, step, level, message)
      values (v_job.id, v_job.attempts, v_job.progress, 'cancelled', 'warning',
              coalesce(p_reason, 'cancelled by the client'));
    return v_job;
  end if;

  select j.status into v_status from public.ai_jobs j
    where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id);
  if not found then
    raise exception using errcode = 'PT404', message = 'job_not_found',
      detail = json_build_object('jobId', p_job_id)::text, hint = 'no job with this id';
  end if;
  raise exception using errcode = 'PT409', message = 'illegal_state',
    detail = json_build_object('status', v_status)::text,
    hint = format('job is already %s', v_status);
end
$$;

-- A worker's claim: queued, or processing whose lease expired (the worker died), becomes
-- processing under a fresh lease token. Returns null when there is nothing to do (another
-- worker holds a live lease, the job is finished, or attempts are used up).
create function public.claim_job(p_job_id uuid, p_lease_seconds integer default 600)
returns public.ai_jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  update public.ai_jobs j
    set status = 'processing', lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        attempts = j.attempts + 1, progress = 0, current_step = 'claimed',
        started_at = coalesce(j.started_at, now())
    where j.id = p_job_id and j.attempts < j.max_attempts
      and (j.status = 'queued' or (j.status = 'processing' and j.lease_expires_at < now()))
    returning * into v_job;
  if not found then
    return null;
  end if;
  insert into public.ai_job_logs (job_id, attempt, progress, step, message)
    values (v_job.id, v_job.attempts, 0, 'claimed',
            format('attempt %s of %s started', v_job.attempts, v_job.max_attempts));
  return v_job;
end
$$;

-- Progress from the lease holder. Never lowers progress; appends one log row; extends the
-- lease (a heartbeat). Returns false once the job was cancelled: the worker must stop.
create function public.report_progress(
  p_job_id uuid,
  p_lease_token uuid,
  p_progress integer,
  p_step text,
  p_message text default null,
  p_level text default 'info',
  p_data jsonb default null,
  p_lease_seconds integer default null)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  if p_progress is null or p_progress not between 0 and 100 then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'progress must be between 0 and 100';
  end if;
  select * into v_job from public.ai_jobs j where j.id = p_job_id for update;
  if not found then
    perform public.ai_jobs_refuse_write(p_job_id, p_lease_token);
  end if;
  if v_job.status = 'cancelled' then
    return false;
  end if;
  if v_job.status <> 'processing' or v_job.lease_token is distinct from p_lease_token then
    perform public.ai_jobs_refuse_write(p_job_id, p_lease_token);
  end if;

  update public.ai_jobs j
    set progress = greatest(j.progress, p_progress),
        current_step = case when p_progress >= j.progress then coalesce(p_step, j.current_step)
                            else j.current_step end,
        lease_expires_at = case when p_lease_seconds is null then j.lease_expires_at
          else greatest(j.lease_expires_at, now() + make_interval(secs => p_lease_seconds)) end
    where j.id = p_job_id;
  insert into public.ai_job_logs (job_id, attempt, level, progress, step, message, data)
    values (p_job_id, v_job.attempts, coalesce(p_level, 'info'), p_progress, p_step,
            coalesce(p_message, p_step, 'progress'), p_data);
  return true;
end
$$;

create function public.complete_job(p_job_id uuid, p_lease_token uuid, p_result jsonb)
returns public.ai_jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  update public.ai_jobs j
    set status = 'completed', progress = 100, current_step = 'completed', result = p_result,
        error = null, error_code = null, completed_at = now(),
        lease_token = null, lease_expires_at = null
    where j.id = p_job_id and j.status = 'processing' and j.lease_token = p_lease_token
    returning * into v_job;
  if not found then
    perform public.ai_jobs_refuse_write(p_job_id, p_lease_token);
  end if;
  insert into public.ai_job_logs (job_id, attempt, progress, step, message)
    values (v_job.id, v_job.attempts, 100, 'completed', 'job completed');
  return v_job;
end
$$;

-- A worker's failure. Retryable with attempts left -> back to queued (Cloud Tasks retries
-- the task); otherwise failed. The caller answers Cloud Tasks by the returned status.
create function public.fail_job(
  p_job_id uuid,
  p_lease_token uuid,
  p_error text,
  p_error_code text default 'internal',
  p_retryable boolean default false)
returns public.ai_jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  update public.ai_jobs j
    set status = case when p_retryable and j.attempts < j.max_attempts
                      then 'queued' else 'failed' end,
        error = left(p_error, 2000), error_code = p_error_code,
        lease_token = null, lease_expires_at = null
    where j.id = p_job_id and j.status = 'processing' and j.lease_token = p_lease_token
    returning * into v_job;
  if not found then
    perform public.ai_jobs_refuse_write(p_job_id, p_lease_token);
  end if;
  update public.ai_jobs j
    set completed_at = case when v_job.status = 'failed' then now() end,
        current_step = v_job.status,
        dispatched_at = case when v_job.status = 'queued' then now() else j.dispatched_at end
    where j.id = p_job_id
    returning * into v_job;
  insert into public.ai_job_logs (job_id, attempt, level, progress, step, message, data)
    values (v_job.id, v_job.attempts, 'error', v_job.progress, v_job.status, left(p_error, 2000),
            json_build_object('code', p_error_code, 'retryable', p_retryable)::jsonb);
  return v_job;
end
$$;

-- The reaper's sweep. Expired leases (the worker died): back to queued for a new task, or
-- failed when attempts are used up. Queued jobs whose task was lost (never dispatched, or
-- dispatched longer ago than the grace period): dispatch again. Returns what the caller
-- must enqueue ('dispatch' / 'redispatch', with the task's dispatch number) or what was
-- failed. SKIP LOCKED lets two reapers run at once without doing the same job twice.
create function public.reap_jobs(
  p_queued_grace_seconds integer default 600, p_limit integer default 100)
returns table (job_id uuid, action text, dispatch_count integer, attempts integer)
language plpgsql
set search_path = ''
as $$
begin
  return query
  with expired as (
    select j.id from public.ai_jobs j
    where j.status = 'processing' and j.lease_expires_at < now()
    order by j.lease_expires_at
    limit p_limit
    for update skip locked
  ), swept as (
    update public.ai_jobs j
      set status = case when j.attempts >= j.max_attempts then 'failed' else 'queued' end,
          lease_token = null, lease_expires_at = null,
          error = case when j.attempts >= j.max_attempts
                       then format('worker lost: lease expired on attempt %s of %s',
                                   j.attempts, j.max_attempts)
                       else j.error end,
          error_code = case when j.attempts >= j.max_attempts then 'lease_expired'
                            else j.error_code end,
          completed_at = case when j.attempts >= j.max_attempts then now() end,
          current_step = case when j.attempts >= j.max_attempts then 'failed' else 'queued' end,
          dispatch_count = case when j.attempts >= j.max_attempts then j.dispatch_count
                                else j.dispatch_count + 1 end,
          dispatched_at = case when j.attempts >= j.max_attempts then j.dispatched_at
                               else now() end
      from expired e where j.id = e.id
      returning j.id, case when j.status = 'failed' then 'failed' else 'redispatch' end,
                j.dispatch_count, j.attempts
  ), lost as (
    select j.id from public.ai_jobs j
    where j.status = 'queued'
      and (j.dispatched_at is null
           or j.dispatched_at < now() - make_interval(secs => p_queued_grace_seconds))
    order by j.created_at
    limit p_limit
    for update skip locked
  ), nudged as (
    update public.ai_jobs j
      set dispatch_count = j.dispatch_count + 1, dispatched_at = now()
      from lost l where j.id = l.id
      returning j.id, 'dispatch'::text, j.dispatch_count, j.attempts
  ), reaped as (
    select * from swept union all select * from nudged
  ), logged as (
    insert into public.ai_job_logs (job_id, attempt, level, step, message)
      select r.id, r.attempts, case when r.action = 'failed' then 'error' else 'warning' end,
             r.action, format('reaper: %s (task %s)', r.action, r.dispatch_count)
      from reaped r(id, action, dispatch_count, attempts)
  )
  select * from reaped;
end
$$;

-- Retention: delete finished jobs (and, by cascade, their logs) older than the period.
create function public.purge_jobs(p_retention_days integer, p_limit integer default 1000)
returns integer
language sql
set search_path = ''
as $$
  with doomed as (
    select j.id from public.ai_jobs j
    where j.status in ('completed', 'failed', 'cancelled')
      and j.completed_at < now() - make_interval(days => p_retention_days)
    order by j.completed_at
    limit p_limit
  ), deleted as (
    delete from public.ai_jobs j using doomed d where j.id = d.id returning 1
  )
  select count(*)::integer from deleted
$$;

-- Supabase grants EXECUTE on every new public function to anon and authenticated (and
-- Postgres to PUBLIC). These functions are for the service role only.
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.proname = any (array[
      'ai_jobs_refuse_write', 'create_job', 'release_dispatch', 'get_job', 'list_jobs',
      'list_job_logs', 'cancel_job', 'claim_job', 'report_progress', 'complete_job',
      'fail_job', 'reap_jobs', 'purge_jobs'])
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', f);
    execute format('grant execute on function %s to service_role', f);
  end loop;
end
$$;
