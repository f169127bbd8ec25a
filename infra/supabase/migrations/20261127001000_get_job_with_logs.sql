-- A poll with ?logs=true in one round trip: the job (as get_job returns it, job_not_found
-- when it is not the caller's) and its log lines after p_after_id (as list_job_logs returns
-- them), in one JSON document {"job": {...}, "logs": [...]}. Before, the get function called
-- get_job and then list_job_logs: two HTTP requests to PostgREST, two statements, two checks
-- of the same ownership.
--
-- The rows are rendered with to_json, as PostgREST renders a function's rows (json_agg), so
-- timestamps and jsonb columns read back exactly as from get_job and list_job_logs.
create function public.get_job_with_logs(
  p_job_id uuid,
  p_user_id text,
  p_after_id bigint,
  p_limit integer)
returns json
language sql
stable
set search_path = ''
as $$
  select json_build_object(
    'job', to_json(j),
    'logs', coalesce(
      (select json_agg(to_json(l) order by l.id) from (
         select * from public.ai_job_logs l
         where l.job_id = p_job_id and l.id > coalesce(p_after_id, 0)
         order by l.id
         limit least(greatest(coalesce(p_limit, 100), 1), 500)) l),
      '[]'::json))
  from public.get_job(p_job_id, p_user_id) j  -- raises when the job is not the caller's
$$;

-- Supabase grants EXECUTE on every new public function to anon and authenticated (and
-- Postgres to PUBLIC): this one is for the service role only, like get_job.
revoke execute on function public.get_job_with_logs(uuid, text, bigint, integer)
  from public, anon, authenticated;
grant execute on function public.get_job_with_logs(uuid, text, bigint, integer) to service_role;
