-- The idempotency key's uniqueness as a partial unique index (where a key is given) instead of
-- a table constraint over every row. The guarantee is the same: a unique constraint never
-- compares NULL keys (NULLS DISTINCT), so rows without a key were never constrained, and a key
-- given twice for one user is still 23505 under the same name, ai_jobs_idempotency_key_unique.
-- create_job's lookup (user_id = .. and idempotency_key = ..) implies the index's predicate.
--
-- Why: every job without a key (most of them) added an entry to this index for nothing, and
-- the planner, before the table has statistics (a new project, the local stack, the first
-- minute of a benchmark), took this index for any "user_id = .." query: list_jobs read all
-- the user's rows through it and sorted them for a page of 21 (0.22 ms of backend CPU at 1000
-- jobs, growing with them; 0.015 ms in created_at order from ai_jobs_user_created_idx), and
-- create_job's rate count read every row of the user. With the predicate, the index serves
-- only queries that name a key.
--
-- Both steps run in this migration's one transaction: there is no moment without the rule.
-- Building the index holds writes to ai_jobs for its duration (a few milliseconds per
-- thousand jobs); the migration waits at most 5 s for its lock, as 20261127001200 does.
set lock_timeout = '5s';
alter table public.ai_jobs drop constraint ai_jobs_idempotency_key_unique;
create unique index ai_jobs_idempotency_key_unique on public.ai_jobs (user_id, idempotency_key)
  where idempotency_key is not null;
reset lock_timeout;
