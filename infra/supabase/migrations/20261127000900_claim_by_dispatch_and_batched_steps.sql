-- The worker's round trips cut from seven per job to two, and a claim fenced by the dispatch
-- number. Versioned functions (claim_job_v3, report_progress_v2, complete_job_v2) sit beside
-- the old ones, so instances still running the previous code keep working during a deploy.
--
-- * claim_job_v3 claims only for the delivery of the job's current task: the task name is
--   job-<id>-d<n> (shared/tasks.py) and n must equal ai_jobs.dispatch_count. An old task
--   delivered late (its retry has been scheduled as task n+1 with a schedule_time) no longer
--   claims the job before the retry's time; the caller answers it 2xx, so Cloud Tasks drops it.
-- * report_progress_v2 and complete_job_v2 take a batch of steps: the worker sends the steps
--   it reached since its last write together, one log row per step, as before.
-- * Two helpers hold what was written out several times: the "job not found" raise and the
--   "attempts used up" test. The current functions that held copies are re-created to call
--   them; applied migrations keep their text.

create function public.ai_jobs_raise_not_found(p_job_id uuid)
returns void
language plpgsql set search_path = '' as $$
begin
  raise exception using errcode = 'PT404', message = 'job_not_found',
    detail = json_build_object('jobId', p_job_id)::text, hint = 'no job with this id';
end
$$;

-- Immutable and one expression, so the planner inlines it where it is called.
create function public.ai_jobs_attempts_used_up(p_attempts integer, p_max_attempts integer)
returns boolean
language sql
immutable
set search_path = ''
as $$ select p_attempts >= p_max_attempts $$;

-- Append one log row per step ([{"progress": int, "step": text}, ...], in the order reached)
-- and return the progress and current step they leave the job at: progress never goes back.
create function public.ai_jobs_log_steps(
  p_job public.ai_jobs, p_steps jsonb, out to_progress integer, out to_step text)
language plpgsql set search_path = '' as $$
declare
  v_step jsonb;
  v_progress numeric;
begin
  if jsonb_typeof(p_steps) is distinct from 'array' or jsonb_array_length(p_steps) > 20 then
    raise exception using errcode = 'PT400', message = 'invalid_argument',
      hint = 'steps must be an array of at most 20 {progress, step} objects';
  end if;
  to_progress := p_job.progress;
  to_step := p_job.current_step;
  for v_step in select s from jsonb_array_elements(p_steps) s loop
    v_progress := case when jsonb_typeof(v_step -> 'progress') = 'number'
                       then (v_step ->> 'progress')::numeric end;
    if v_progress is null or v_progress not between 0 and 100 or v_progress <> trunc(v_progress)
       or coalesce(v_step ->> 'step', '') = '' then
      raise exception using errcode = 'PT400', message = 'invalid_argument',
        hint = 'each step needs a progress between 0 and 100 and a step name';
    end if;
    insert into public.ai_job_logs (job_id, attempt, progress, step, message)
      values (p_job.id, p_job.attempts, v_progress, v_step ->> 'step', v_step ->> 'step');
    if v_progress >= to_progress then
      to_progress := v_progress;
      to_step := v_step ->> 'step';
    end if;
  end loop;
end
$$;

create or replace function public.ai_jobs_refuse_write(p_job_id uuid, p_lease_token uuid)
returns void
language plpgsql set search_path = '' as $$
declare
  v_status text;
  v_final boolean;
begin
  select j.status into v_status from public.ai_jobs j where j.id = p_job_id;
  if not found then
    perform public.ai_jobs_raise_not_found(p_job_id);
  end if;
  v_final := v_status in ('completed', 'failed', 'cancelled');
  raise exception using errcode = 'PT409',
    message = case when v_final then 'illegal_state' else 'lease_lost' end,
    detail = json_build_object('status', v_status)::text,
    hint = case when v_final then format('job is already %s', v_status)
                else 'the lease token does not match the current attempt' end;
end
$$;

-- The job's row, locked, when `p_lease_token` holds its lease; otherwise raises why not.
create function public.ai_jobs_held(p_job_id uuid, p_lease_token uuid)
returns public.ai_jobs
language plpgsql set search_path = '' as $$ declare
  v_job public.ai_jobs;
begin
  select * into v_job from public.ai_jobs j where j.id = p_job_id for update;
  if v_job.id is null or v_job.status <> 'processing'
     or v_job.lease_token is distinct from p_lease_token then
    perform public.ai_jobs_refuse_write(p_job_id, p_lease_token);
  end if;
  return v_job;
end
$$;

create or replace function public.get_job(p_job_id uuid, p_user_id text)
returns public.ai_jobs
language plpgsql stable set search_path = '' as $$ declare
  v_job public.ai_jobs;
begin
  select * into v_job from public.ai_jobs j
    where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id);
  if not found then perform public.ai_jobs_raise_not_found(p_job_id); end if;
  return v_job;
end
$$;

create or replace function public.cancel_job(p_job_id uuid, p_user_id text, p_reason text)
returns public.ai_jobs
language plpgsql set search_path = '' as $$ declare
  v_job public.ai_jobs;
  v_why constant text := coalesce(p_reason, 'cancelled by the client');
begin
  update public.ai_jobs j
    set status = 'cancelled', completed_at = now(), lease_token = null, lease_expires_at = null,
        current_step = 'cancelled', error_code = 'cancelled', error = v_why
    where j.id = p_job_id and j.status in ('queued', 'processing')
      and (p_user_id is null or j.user_id = p_user_id)
    returning * into v_job;
  if not found then
    -- no such job of this caller: get_job raises (404); else the job is finished
    v_job := public.get_job(p_job_id, p_user_id);
    raise exception using errcode = 'PT409', message = 'illegal_state',
      detail = json_build_object('status', v_job.status)::text,
      hint = format('job is already %s', v_job.status);
  end if;
  insert into public.ai_job_logs (job_id, attempt, progress, step, level, message)
    values (v_job.id, v_job.attempts, v_job.progress, 'cancelled', 'warning', v_why);
  return v_job;
end
$$;

-- A worker's claim for the delivery of task `p_dispatch`: queued, or processing whose lease
-- expired (the worker died), becomes processing under a fresh lease token, only when
-- `p_dispatch` is the job's current dispatch number. outcome says what happened:
--   claimed         job holds the claimed row
--   stale_dispatch  the delivery belongs to an older (or unknown) task: drop it
--   nothing_to_do   a live lease elsewhere, the job finished, or attempts used up
--   not_found       no such job
create function public.claim_job_v3(
  p_job_id uuid, p_dispatch integer, p_lease_seconds integer,
  out job public.ai_jobs, out outcome text, out current_dispatch integer)
language plpgsql set search_path = '' as $$
begin
  update public.ai_jobs j
    set status = 'processing', current_step = 'claimed', progress = 0,
        attempts = j.attempts + 1, started_at = coalesce(j.started_at, now()),
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    where j.id = p_job_id and j.dispatch_count = p_dispatch
      and not public.ai_jobs_attempts_used_up(j.attempts, j.max_attempts)
      and (j.status = 'queued' or (j.status = 'processing' and j.lease_expires_at < now()))
    returning * into job;
  if found then
    insert into public.ai_job_logs (job_id, attempt, progress, step, message)
      values (job.id, job.attempts, 0, 'claimed',
              format('attempt %s of %s started (task %s)', job.attempts, job.max_attempts,
                     job.dispatch_count));
    outcome := 'claimed';
    current_dispatch := job.dispatch_count;
    return;
  end if;
  job := null;
  select j.dispatch_count into current_dispatch from public.ai_jobs j where j.id = p_job_id;
  outcome := case when not found then 'not_found'
                  when p_dispatch is distinct from current_dispatch then 'stale_dispatch'
                  else 'nothing_to_do' end;
end
$$;

-- The lease holder's steps since its last write, in one call. Extends the lease (a
-- heartbeat). Returns false once the job was cancelled: the worker must stop.
create function public.report_progress_v2(
  p_job_id uuid, p_lease_token uuid, p_steps jsonb, p_lease_seconds integer)
returns boolean
language plpgsql set search_path = '' as $$ declare
  v_job public.ai_jobs;
  v_now record;
begin
  -- cancelled is final, so this answer cannot go stale before the row is locked below
  perform from public.ai_jobs j where j.id = p_job_id and j.status = 'cancelled';
  if found then
    return false;
  end if;
  v_job := public.ai_jobs_held(p_job_id, p_lease_token);
  select * into v_now from public.ai_jobs_log_steps(v_job, p_steps);
  update public.ai_jobs j
    set progress = v_now.to_progress, current_step = v_now.to_step,
        lease_expires_at = greatest(j.lease_expires_at,
                                    now() + make_interval(secs => p_lease_seconds))
    where j.id = p_job_id;
  return true;
end
$$;

-- Completion with the steps not yet written (the last ones, reached since the previous
-- write): their log rows first, then the completed row, in one transaction. Returns the
-- completed row without its result.
create function public.complete_job_v2(
  p_job_id uuid, p_lease_token uuid, p_result jsonb, p_steps jsonb)
returns public.ai_jobs
language plpgsql set search_path = '' as $$ declare
  v_job public.ai_jobs;
begin
  v_job := public.ai_jobs_held(p_job_id, p_lease_token);
  perform public.ai_jobs_log_steps(v_job, p_steps);
  update public.ai_jobs j
    set status = 'completed', progress = 100, current_step = 'completed', result = p_result,
        error = null, error_code = null, completed_at = now(),
        lease_token = null, lease_expires_at = null
    where j.id = p_job_id
    returning * into v_job;
  insert into public.ai_job_logs (job_id, attempt, progress, step, message)
    values (v_job.id, v_job.attempts, 100, 'completed', 'job completed');
  -- the caller has just sent the result (tens of kilobytes): not echoed back
  v_job.result := null;
  return v_job;
end
$$;

-- A worker's failure: retryable with attempts left -> queued (the caller schedules the job's
-- next task), else failed. Decided on the locked row, then one UPDATE.
create or replace function public.fail_job(
  p_job_id uuid, p_lease_token uuid, p_error text, p_error_code text, p_retryable boolean)
returns public.ai_jobs
language plpgsql set search_path = '' as $$ declare
  v_job public.ai_jobs;
  v_next text;
begin
  v_job := public.ai_jobs_held(p_job_id, p_lease_token);
  v_next := case when p_retryable
                      and not public.ai_jobs_attempts_used_up(v_job.attempts, v_job.max_attempts)
                 then 'queued' else 'failed' end;
  update public.ai_jobs j
    set status = v_next, current_step = v_next, error = left(p_error, 2000),
        error_code = p_error_code, lease_token = null, lease_expires_at = null,
        completed_at = case when v_next = 'failed' then now() end,
        dispatched_at = case when v_next = 'queued' then now() else j.dispatched_at end
    where j.id = p_job_id
    returning * into v_job;
  insert into public.ai_job_logs (job_id, attempt, level, progress, step, message, data)
    values (v_job.id, v_job.attempts, 'error', v_job.progress, v_next, left(p_error, 2000),
            json_build_object('code', p_error_code, 'retryable', p_retryable)::jsonb);
  return v_job;
end
$$;

-- The reaper's sweep as in migration 20261127000500, with "attempts used up" decided once per
-- expired job (the helper) instead of in each column.
create or replace function public.reap_jobs_v2(p_queued_grace_seconds integer, p_limit integer)
returns table (job_id uuid, action text, dispatch_count integer, attempts integer)
language plpgsql set search_path = '' as $$
declare
  v_swept integer;
begin
  if p_limit is null or p_limit not between 1 and 500
     or p_queued_grace_seconds is null or p_queued_grace_seconds < 0 then
    raise exception using errcode = 'PT400', message = 'invalid_argument', hint =
      'limit must be between 1 and 500 (below the API''s 1000-row cap), the grace >= 0 s';
  end if;

  return query
  with expired as (
    select j.id, public.ai_jobs_attempts_used_up(j.attempts, j.max_attempts) as done
    from public.ai_jobs j where j.status = 'processing' and j.lease_expires_at < now()
    order by j.lease_expires_at limit p_limit for update skip locked
  ), swept as (
    update public.ai_jobs j
      set status = case when e.done then 'failed' else 'queued' end,
          current_step = case when e.done then 'failed' else 'queued' end,
          lease_token = null, lease_expires_at = null,
          error = case when not e.done then j.error
                       else format('worker lost: lease expired on attempt %s of %s',
                                   j.attempts, j.max_attempts) end,
          error_code = case when e.done then 'lease_expired' else j.error_code end,
          completed_at = case when e.done then now() end,
          dispatched_at = case when e.done then j.dispatched_at else now() end
      from expired e where j.id = e.id
      -- r_ names: the function's output columns would be ambiguous in plpgsql
      returning j.id as r_id, case when e.done then 'failed' else 'redispatch' end as r_action,
                j.dispatch_count as r_dispatch, j.attempts as r_attempts,
                case when e.done then 'error' else 'warning' end as r_level
  ), logged as (
    insert into public.ai_job_logs (job_id, attempt, level, step, message)
      select r_id, r_attempts, r_level, r_action,
             format('reaper: %s (lease expired; task %s)', r_action, r_dispatch)
      from swept
  )
  select r_id, r_action, r_dispatch, r_attempts from swept;
  get diagnostics v_swept = row_count;

  -- then queued jobs whose task may be lost, in the room the expired ones left
  return query
  update public.ai_jobs j set dispatched_at = now()
    where j.id in (
      select q.id from public.ai_jobs q
      where q.status = 'queued' and v_swept < p_limit
        and (q.dispatched_at is null
             or q.dispatched_at < now() - make_interval(secs => p_queued_grace_seconds))
      order by q.created_at limit greatest(p_limit - v_swept, 0)
      for update skip locked)
    returning j.id, 'dispatch'::text, j.dispatch_count, j.attempts;
end
$$;

-- Supabase grants EXECUTE on every new public function to anon and authenticated (and
-- Postgres to PUBLIC); these are for the service role only. CREATE OR REPLACE keeps the
-- grants of the functions it replaces; the loop sets them again all the same.
do $$ declare f regprocedure; begin
  for f in select p.oid::regprocedure from pg_proc p
           where p.pronamespace = 'public'::regnamespace and p.proname = any (array[
             'ai_jobs_raise_not_found', 'ai_jobs_attempts_used_up', 'ai_jobs_log_steps',
             'ai_jobs_held', 'ai_jobs_refuse_write', 'get_job', 'cancel_job', 'claim_job_v3',
             'report_progress_v2', 'complete_job_v2', 'fail_job', 'reap_jobs_v2'])
  loop
    execute format('revoke execute on function %1$s from public, anon, authenticated;'
                   ' grant execute on function %1$s to service_role', f);
  end loop;
end
$$;
