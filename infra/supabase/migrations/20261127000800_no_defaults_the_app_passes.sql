-- No defaults for the arguments the functions always pass. A default here was a second copy
-- of a setting declared in shared/settings.py, and copies drift: claim_job's 600 s lease
-- disagreed with LEASE_SECONDS' 120 s, create_job's 3 attempts and 30/10 caps repeated
-- MAX_ATTEMPTS, MAX_JOBS_PER_MINUTE and MAX_ACTIVE_JOBS. shared/store.py passes every
-- argument of these functions by name, so a call that leaves one out now fails (PGRST202 /
-- 42883) instead of quietly using a stale value.
--
-- CREATE OR REPLACE cannot remove a default ("cannot remove parameter defaults from existing
-- function", src/backend/catalog/pg_proc.c), so each function is dropped and created again from
-- its own current definition (pg_get_functiondef) with the DEFAULT clauses taken out of its
-- argument list: the bodies are not copied here, so they cannot drift from the migrations that
-- wrote them. Signatures are unchanged, so instances still running the previous code (which
-- also pass every argument) keep working during a deploy. No default holds a comma, which the
-- pattern relies on; the assertion at the end checks the result.
do $$
declare
  v_called constant text[] := array[
    'create_job', 'get_job', 'list_jobs', 'list_job_logs', 'cancel_job', 'claim_job',
    'report_progress', 'fail_job', 'reap_jobs_v2', 'next_dispatch', 'purge_jobs'];
  f record;
  v_args text;
begin
  for f in
    select p.oid::regprocedure::text as signature, pg_get_functiondef(p.oid) as definition,
           pg_get_function_arguments(p.oid) as arguments
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.pronargdefaults > 0 and p.proname = any (v_called)
  loop
    v_args := regexp_replace(f.arguments, ' DEFAULT [^,]+', '', 'g');
    execute format('drop function %s', f.signature);
    -- the first occurrence of the argument list is the header's
    execute overlay(f.definition placing v_args
                    from position(f.arguments in f.definition) for length(f.arguments));
    execute format('revoke execute on function %s from public, anon, authenticated',
                   f.signature);
    execute format('grant execute on function %s to service_role', f.signature);
  end loop;

  if exists (
    select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.pronargdefaults > 0 and p.proname = any (v_called)
  ) then
    raise exception 'a function the app calls still has a default';
  end if;
end
$$;
