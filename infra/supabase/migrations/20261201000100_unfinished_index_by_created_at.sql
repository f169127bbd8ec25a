-- ai_jobs_unfinished_idx was (status, updated_at) over the unfinished jobs. No query reads
-- updated_at through it (EXPLAIN of each query on unfinished jobs: the reaper's expired-lease
-- sweep and its queued sweep use only "status = .." as the index condition, then filter and
-- sort; create_job's cap on unfinished jobs reads ai_jobs_user_unfinished_idx; the claim
-- reads the primary key). Yet updated_at changes on every write (the touch trigger), so
-- every write to an unfinished job added an entry to this index for a column nobody reads.
-- Its second column is now created_at, which never changes and is what the queued sweep
-- orders by (`order by q.created_at limit ..`): that sweep now reads the queued jobs in its
-- order and stops at its limit instead of reading and sorting every queued job; the
-- expired-lease sweep reads the processing jobs as before (at most one per running worker).
-- Built first under a temporary name (SHARE lock: writes wait for the build, reads do not),
-- then the old one dropped and the new one renamed, each lock awaited at most 500 ms, as
-- migration 20261128000210 does: under a long transaction the migration fails instead of
-- queueing every later query behind it, and `supabase db push` is run again.
--
-- ai_jobs_attempts_used_up (a SQL helper with `set search_path = ''`, so the planner never
-- inlines it) stays as it is: the claim evaluates it once, on the one row it reads by id, and
-- called 200,000 times in one query it cost 0.9 us a call against 0.09 us for the inline test:
-- under 0.001 ms of a claim's ~0.3 ms of backend CPU, below what any benchmark here resolves.
set lock_timeout = '500ms';
create index ai_jobs_unfinished_by_created_idx on public.ai_jobs (status, created_at)
  where status in ('queued', 'processing');
drop index public.ai_jobs_unfinished_idx;
alter index public.ai_jobs_unfinished_by_created_idx rename to ai_jobs_unfinished_idx;
reset lock_timeout;
