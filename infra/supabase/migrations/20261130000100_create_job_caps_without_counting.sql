-- create_job decides its two caps without counting them. Same signature, same answers, same
-- errors (CREATE OR REPLACE keeps the owner and the grants: service_role only, from migration
-- 20261127000800).
--
-- * A cap is reached when the user has at least `cap` rows in it, that is when the cap-th row
--   exists: `exists (select ... offset cap - 1 limit 1)` stops at the cap-th index entry where
--   `count(*)` read every one (the caps are tested with `>=`, so the answers are the same: a cap
--   below 1 is always reached, as `count(*) >= 0` was; a null cap never is, as `count >= null`
--   was not true). The rate's probe walks ai_jobs_user_created_idx in its order (`order by
--   created_at desc`: without it a planner that expects few rows of the user takes a bitmap
--   scan, which reads all of them before the limit applies); the unfinished jobs' probe reads
--   the partial index ai_jobs_user_unfinished_idx, which holds only unfinished jobs, so either
--   plan reads at most the user's unfinished jobs (at most the cap while it holds). Both probes
--   run in one statement without an aggregate: the two count(*) statements set up an Agg node
--   each on every call (ExecInitAgg/ExecAgg were ~6% of the call's backend samples in a perf
--   profile of create_job as the gateway runs it; in interleaved A/B rounds the whole change
--   stayed within ~0.01 ms of backend CPU per create, under this shared machine's noise: what
--   it buys is the bound on what a refused create reads).
-- * The oldest job of the last minute, which only the rate_limited answer needs (its
--   retryAfter), is read only when that answer is given: the first of the same rows as before
--   in created_at order (the value min(created_at) gave, at the same now(), so retryAfter is
--   unchanged), one entry at the end of ai_jobs_user_created_idx; min() itself was planned as
--   an aggregate over all of them.
-- * The job row and its 'job created' log row stay two statements: one data-modifying WITH
--   saved no measurable CPU per create in interleaved A/B rounds.
--
-- Unchanged: the per-user advisory lock first (so the caps and the idempotency check are exact
-- under concurrent creates), the idempotency lookup and its conflict, the order of the checks
-- (an idempotent replay is answered before any cap; rate_limited before too_many_active_jobs).
-- tests/db/test_create_caps.py: the boundaries, the bound on what a refused create reads,
-- retryAfter, null and zero caps, the rows written.
create or replace function public.create_job(
  p_type text,
  p_query text,
  p_user_id text,
  p_priority text,
  p_idempotency_key text,
  p_request_hash text,
  p_complexity text,
  p_complexity_score real,
  p_estimated_seconds integer,
  p_metadata jsonb,
  p_max_attempts integer,
  p_max_per_minute integer,
  p_max_active integer,
  out job public.ai_jobs,
  out created boolean)
language plpgsql
set search_path = ''
as $$
declare
  v_rate_reached boolean;
  v_active_reached boolean;
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

  select p_max_per_minute is not null and (p_max_per_minute < 1 or exists (
           select from public.ai_jobs j
           where j.user_id = p_user_id and j.created_at > now() - interval '1 minute'
           order by j.created_at desc offset p_max_per_minute - 1 limit 1)),
         p_max_active is not null and (p_max_active < 1 or exists (
           select from public.ai_jobs j
           where j.user_id = p_user_id and j.status in ('queued', 'processing')
           offset p_max_active - 1 limit 1))
    into v_rate_reached, v_active_reached;

  if v_rate_reached then
    select j.created_at into v_oldest from public.ai_jobs j
      where j.user_id = p_user_id and j.created_at > now() - interval '1 minute'
      order by j.created_at limit 1;
    raise exception using errcode = 'PT429', message = 'rate_limited',
      detail = json_build_object(
        'limit', p_max_per_minute, 'windowSeconds', 60,
        'retryAfter', greatest(1, ceil(extract(epoch from v_oldest + interval '1 minute' - now())))
      )::text,
      hint = format('at most %s jobs per minute', p_max_per_minute);
  end if;

  if v_active_reached then
    raise exception using errcode = 'PT429', message = 'too_many_active_jobs',
      detail = json_build_object('limit', p_max_active, 'retryAfter', 10)::text,
      hint = format('at most %s unfinished jobs at a time', p_max_active);
  end if;

  -- dispatch_count/dispatched_at presume the enqueue that follows; if it fails the caller
  -- calls release_dispatch_v2 and the reaper dispatches the job.
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
