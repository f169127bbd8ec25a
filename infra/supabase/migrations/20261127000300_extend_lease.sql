-- A heartbeat for long steps: the lease holder pushes its lease expiry forward without
-- logging progress, so a short lease (fast recovery of dead workers) still covers a slow
-- model call. Returns false when the caller no longer holds the lease (cancelled, taken
-- over, finished): it must stop.
create function public.extend_lease(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer)
returns boolean
language sql
set search_path = ''
as $$
  with extended as (
    update public.ai_jobs j
      set lease_expires_at = greatest(j.lease_expires_at,
                                      now() + make_interval(secs => p_lease_seconds))
      where j.id = p_job_id and j.status = 'processing' and j.lease_token = p_lease_token
      returning j.id)
  select exists (select 1 from extended)
$$;

revoke execute on function public.extend_lease(uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function public.extend_lease(uuid, uuid, integer) to service_role;
