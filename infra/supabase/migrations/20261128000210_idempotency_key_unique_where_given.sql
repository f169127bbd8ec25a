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
-- All steps run in this migration's one transaction: there is no moment without the rule.
-- The new index is built first under a temporary name: CREATE INDEX takes a SHARE lock, which
-- holds writes to ai_jobs for the build (a few milliseconds per thousand jobs) but not reads.
-- Only then are the constraint dropped and the index renamed, which take ACCESS EXCLUSIVE (reads
-- too) for an instant before the commit. While a lock is awaited every later query on the table
-- queues behind it, so each wait is capped at 500 ms (polls aim at < 200 ms): under a long
-- transaction the migration fails instead, and `supabase db push` is run again.
-- Nothing refers to the constraint by name (create_job looks the key up under an advisory lock;
-- no ON CONFLICT): an `on conflict on constraint ai_jobs_idempotency_key_unique` would now fail,
-- and an inferred `on conflict (user_id, idempotency_key)` needs `where idempotency_key is not
-- null` to match the partial index.
set lock_timeout = '500ms';
create unique index ai_jobs_idempotency_key_partial on public.ai_jobs (user_id, idempotency_key)
  where idempotency_key is not null;
alter table public.ai_jobs drop constraint ai_jobs_idempotency_key_unique;
alter index public.ai_jobs_idempotency_key_partial rename to ai_jobs_idempotency_key_unique;
reset lock_timeout;
