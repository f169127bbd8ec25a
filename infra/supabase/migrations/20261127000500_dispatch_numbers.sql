-- Dispatch numbers that are never reused, and a reaper that asks Cloud Tasks before it adds a
-- task. Cloud Tasks answers ALREADY_EXISTS for a task name executed or deleted in about the
-- last hour (CreateTaskRequest, "Task De-duplication"), so every new task of a job gets a new
-- number (next_dispatch), and undoing a dispatch names the number it undoes
-- (release_dispatch_v2). The reaper no longer bumps the number itself: it returns what it
-- looked at with the current number; the caller checks with GetTask whether that task is
-- still pending and calls next_dispatch only when it is not.
--
-- Supabase caps every RPC result at db-max-rows (1000): reap_jobs_v2 returns every row it
-- changed, at most p_limit (1..500) in total, and the caller sweeps again while a sweep comes
-- back full. The v1 functions stay for instances still running the previous code.

-- Undo the dispatch `p_dispatch` (its enqueue failed): the job stays queued and the next
-- sweep dispatches it at once. Does nothing if the job moved on (claimed, or dispatched again).
create function public.release_dispatch_v2(p_job_id uuid, p_dispatch integer)
returns boolean
language sql
set search_path = ''
as $$
  with released as (
    update public.ai_jobs set dispatched_at = null
      where id = p_job_id and status = 'queued' and dispatch_count = p_dispatch
      returning id)
  select exists (select 1 from released)
$$;

-- Take the next dispatch number of a queued job whose current dispatch is `p_dispatch`, for a
-- task that runs `p_delay_seconds` from now (the reaper looks again only after that delay plus
-- its grace). Returns the new number, or null when the job is not queued or another caller
-- already moved it on: then there is nothing to enqueue.
create function public.next_dispatch(
  p_job_id uuid, p_dispatch integer, p_delay_seconds double precision default 0)
returns integer
language sql
set search_path = ''
as $$
  update public.ai_jobs j
    set dispatch_count = j.dispatch_count + 1,
        dispatched_at = now() + make_interval(secs => greatest(coalesce(p_delay_seconds, 0), 0))
    where j.id = p_job_id and j.status = 'queued' and j.dispatch_count = p_dispatch
    returning j.dispatch_count
$$;

-- The reaper's sweep, v2. Expired leases (the worker died): back to queued, or failed when
-- attempts are used up. Queued jobs whose task may be lost (never dispatched, released, or
-- dispatched longer ago than the grace): stamped dispatched_at = now() so a concurrent sweep
-- skips them. Neither bumps dispatch_count. Returns one row per changed job with its current
-- dispatch number: 'redispatch' / 'dispatch' (the caller checks that task, then maybe calls
-- next_dispatch) or 'failed'. SKIP LOCKED lets two reapers run at once.
create function public.reap_jobs_v2(
  p_queued_grace_seconds integer default 600, p_limit integer default 100)
returns table (job_id uuid, action text, dispatch_count integer, attempts integer)
language plpgsql
set search_path = ''
as $$
declare
  v_swept integer;
begin
  if p_limit is null or p_limit not between 1 and 500 then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'limit must be between 1 and 500 (below the API''s 1000-row cap)';
  end if;
  if p_queued_grace_seconds is null or p_queued_grace_seconds < 0 then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'the grace period must be a number of seconds >= 0';
  end if;

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
          dispatched_at = case when j.attempts >= j.max_attempts then j.dispatched_at
                               else now() end
      from expired e where j.id = e.id
      returning j.id, case when j.status = 'failed' then 'failed' else 'redispatch' end,
                j.dispatch_count, j.attempts
  ), logged as (
    insert into public.ai_job_logs (job_id, attempt, level, step, message)
      select s.id, s.attempts, case when s.action = 'failed' then 'error' else 'warning' end,
             s.action, format('reaper: %s (lease expired; task %s)', s.action, s.dispatch_count)
      from swept s(id, action, dispatch_count, attempts)
  )
  select * from swept;
  get diagnostics v_swept = row_count;

  if v_swept < p_limit then
    return query
    with lost as (
      select j.id from public.ai_jobs j
      where j.status = 'queued'
        and (j.dispatched_at is null
             or j.dispatched_at < now() - make_interval(secs => p_queued_grace_seconds))
      order by j.created_at
      limit p_limit - v_swept
      for update skip locked
    ), nudged as (
      update public.ai_jobs j
        set dispatched_at = now()
        from lost l where j.id = l.id
        returning j.id, 'dispatch'::text, j.dispatch_count, j.attempts
    )
    select * from nudged;
  end if;
end
$$;

do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public'
      and p.proname = any (array['release_dispatch_v2', 'next_dispatch', 'reap_jobs_v2'])
  loop
    execute format('revoke execute on function %s from public, anon, authenticated', f);
    execute format('grant execute on function %s to service_role', f);
  end loop;
end
$$;
