-- get_job_with_logs, the poll with ?logs=true, with the same signature, body and answer, in
-- PL/pgSQL instead of SQL. A SQL function that cannot be inlined (this one has SET search_path,
-- and returns json built from another function's row) is parsed, analysed and planned again
-- on every call (PostgreSQL 16 caches no plan for it; 18 first does); PL/pgSQL caches its
-- statements' plans per connection. Measured on the local server, one connection, a job with
-- eight log lines: 0.145 ms of backend CPU per call as SQL, 0.055 as PL/pgSQL, the same bytes.
--
-- CREATE OR REPLACE keeps the function's owner and grants (service_role only, from
-- 20261127001000_get_job_with_logs.sql); callers of either release see no change.
create or replace function public.get_job_with_logs(
  p_job_id uuid,
  p_user_id text,
  p_after_id bigint,
  p_limit integer)
returns json
language plpgsql
stable
set search_path = ''
as $$
begin
  return (
    select json_build_object(
      'job', to_json(j),
      'logs', coalesce(
        (select json_agg(to_json(l) order by l.id) from (
           select * from public.ai_job_logs l
           where l.job_id = p_job_id and l.id > coalesce(p_after_id, 0)
           order by l.id
           limit least(greatest(coalesce(p_limit, 100), 1), 500)) l),
        '[]'::json))
    from public.get_job(p_job_id, p_user_id) j);  -- raises when the job is not the caller's
end
$$;
