-- list_jobs, same signature, checks, order and answer, reading the page's columns by name
-- instead of turning each row into jsonb and back. The previous body
-- (jsonb_populate_record(null::public.ai_jobs, to_jsonb(page) - 'result'), from
-- 20261127000200_ai_jobs_functions.sql) built the jsonb of every listed row, its result
-- included, only to drop the result: a finished report's result (~80 kB of JSON) was read,
-- decompressed and converted on every list. Measured on the local server, one session, a
-- page of 21 rows: 0.20 ms of backend CPU per call with queued jobs, 4.4 ms with finished ones
-- (a 100 kB result each); by name, 0.04 ms either way (the result is never read).
--
-- The columns are the table's, in its order, with result as null: a column added to ai_jobs
-- later must be added here too, else every call fails ("structure of query does not match
-- function result type"); tests/db/test_list_columns.py compares them with the table's.
-- CREATE OR REPLACE keeps the function's owner and grants (service_role only).
create or replace function public.list_jobs(
  p_user_id text,
  p_statuses text[],
  p_types text[],
  p_limit integer,
  p_before_created_at timestamptz,
  p_before_id uuid)
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
    select j.id, j.user_id, j.type, j.query, j.priority, j.status, j.progress, j.current_step,
           null::jsonb as result, j.error, j.error_code, j.complexity, j.complexity_score,
           j.estimated_seconds, j.idempotency_key, j.request_hash, j.attempts, j.max_attempts,
           j.lease_token, j.lease_expires_at, j.dispatch_count, j.dispatched_at, j.created_at,
           j.updated_at, j.started_at, j.completed_at, j.metadata
    from public.ai_jobs j
    where j.user_id = p_user_id
      and (p_statuses is null or j.status = any (p_statuses))
      and (p_types is null or j.type = any (p_types))
      and (p_before_created_at is null
           or (j.created_at, j.id) < (p_before_created_at, p_before_id))
    order by j.created_at desc, j.id desc
    limit p_limit;
end
$$;
