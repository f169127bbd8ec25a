-- Listing shows jobs, not their results (which can be many kilobytes each): leave `result`
-- out in the database instead of shipping it to the function to be dropped there.
-- jsonb_populate_record keeps the row type, so columns added later still come through; it
-- runs in a LATERAL join, once per listed row (`(f(x)).*` would run it once per column).
create or replace function public.list_jobs(
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
