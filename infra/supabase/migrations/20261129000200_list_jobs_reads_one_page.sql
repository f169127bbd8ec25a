-- list_jobs, same signature, checks, order and answer (20261128000200), planned so that a page
-- reads about a page of rows whatever the planner knows of the table.
--
-- The page is the user's newest jobs in the order of ai_jobs_user_created_idx (user_id,
-- created_at desc, id desc), so walking that index and stopping at the limit reads ~limit
-- rows. Without statistics (a table not yet analyzed: new, or grown since autovacuum last
-- looked; or a user whose share of the table the statistics underestimate) the planner
-- expects a handful of rows for the user and prefers a bitmap scan of all of them and a sort:
-- with 5 000 jobs of one user and no statistics, every page read all 5 000 (tests/db/
-- test_list_reads_one_page.py; measured by a helper at 0.49 -> 0.18 ms per call). Two changes:
--
-- * set enable_sort = off, on the page without a status filter only (the console's and the
--   API's default list; ai_jobs_list_newest): a sort then costs the planner more than any
--   plan without one, and the index gives the order, so the ordered index scan is chosen with
--   or without statistics (the setting does not forbid a sort where no other plan exists;
--   there is always this one). A status filter keeps the planner's own choice: a status few
--   of a user's jobs have (only 'queued', among thousands finished) is read best through the
--   status index and a sort of the few matches, which the setting would have turned into a
--   walk of the user's whole index (a reviewer measured 0.29 -> 2.25 ms per call, 20 000 jobs,
--   6 queued, analyzed); the same page may read all of the user's jobs on a table without
--   statistics, as before this migration.
-- * the cursor is a row comparison the index can seek to, (created_at, id) < (cursor), with
--   no cursor as (infinity, the largest uuid) instead of "cursor is null or ...": as a filter
--   under an OR, page n read the n-1 pages before it again. The first page is unchanged: no
--   job has created_at = infinity (it is now() at insert) and no v4 uuid is all ones.
--
-- CREATE OR REPLACE keeps list_jobs' owner and grants (service_role only); the previous
-- release's calls (same name, arguments and answer) work unchanged. ai_jobs_list_newest is
-- new: granted to service_role only, as every function here.
create or replace function public.ai_jobs_list_newest(
  p_user_id text,
  p_types text[],
  p_limit integer,
  p_before_created_at timestamptz,
  p_before_id uuid)
returns setof public.ai_jobs
language sql
stable
set search_path = ''
set enable_sort = off
as $$
  select j.id, j.user_id, j.type, j.query, j.priority, j.status, j.progress, j.current_step,
         null::jsonb as result, j.error, j.error_code, j.complexity, j.complexity_score,
         j.estimated_seconds, j.idempotency_key, j.request_hash, j.attempts, j.max_attempts,
         j.lease_token, j.lease_expires_at, j.dispatch_count, j.dispatched_at, j.created_at,
         j.updated_at, j.started_at, j.completed_at, j.metadata
  from public.ai_jobs j
  where j.user_id = p_user_id
    and (p_types is null or j.type = any (p_types))
    and (j.created_at, j.id) < (coalesce(p_before_created_at, 'infinity'::timestamptz),
                                coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
  order by j.created_at desc, j.id desc
  limit p_limit
$$;

revoke execute on function public.ai_jobs_list_newest(text, text[], integer, timestamptz, uuid)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_list_newest(text, text[], integer, timestamptz, uuid)
  to service_role;

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
  if p_statuses is null then
    return query
      select * from public.ai_jobs_list_newest(p_user_id, p_types, p_limit,
                                               p_before_created_at, p_before_id);
    return;
  end if;
  return query
    select j.id, j.user_id, j.type, j.query, j.priority, j.status, j.progress, j.current_step,
           null::jsonb as result, j.error, j.error_code, j.complexity, j.complexity_score,
           j.estimated_seconds, j.idempotency_key, j.request_hash, j.attempts, j.max_attempts,
           j.lease_token, j.lease_expires_at, j.dispatch_count, j.dispatched_at, j.created_at,
           j.updated_at, j.started_at, j.completed_at, j.metadata
    from public.ai_jobs j
    where j.user_id = p_user_id
      and j.status = any (p_statuses)
      and (p_types is null or j.type = any (p_types))
      and (j.created_at, j.id) < (coalesce(p_before_created_at, 'infinity'::timestamptz),
                                  coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
    order by j.created_at desc, j.id desc
    limit p_limit;
end
$$;
