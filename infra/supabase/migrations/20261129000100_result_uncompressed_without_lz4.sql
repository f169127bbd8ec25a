-- A server without lz4 stores a job's result out of line uncompressed (STORAGE EXTERNAL) instead
-- of compressing it with pglz. Migration 20261127001200 set lz4 where the server has it
-- (Supabase builds Postgres with it) and left the default, pglz, elsewhere; pglz was then the
-- largest single cost of a completion on such a server: measured on the embedded PostgreSQL 16
-- (pgserver, built without lz4), one backend, complete_job_v3 with a 74 kB report, 200 calls
-- per round: 2.2-2.25 ms of backend CPU per call with pglz, 1.45-1.6 ms with the result stored
-- uncompressed (the text -> jsonb parse, ~0.7 ms, stays). The price: space, a report's result
-- takes its jsonb size, 94.5 kB, instead of pglz's 19.9 kB, for the retention period
-- (purge_jobs); and a read of a finished job, which now fetches some 48 TOAST chunks where it
-- fetched 10 and decompressed them, costs about as much as before (get_job of a finished
-- report, 1500 calls x 4 alternated rounds: 0.51-0.53 ms pglz, 0.53-0.56 ms uncompressed).
--
-- lz4 servers keep lz4 and the default storage (EXTENDED: compressed, then out of line), so
-- Supabase is unchanged. Only new values are affected: stored ones keep their form and read
-- back as before. No call changes, so the previous release runs on unchanged.
-- SET STORAGE changes only the catalog (no rewrite) but may take an ACCESS EXCLUSIVE lock: it
-- waits at most 5 s for a long transaction on ai_jobs instead of queueing every create, poll
-- and claim behind it; a timed-out push is simply run again.
set lock_timeout = '5s';
do $$
begin
  if not exists (select from pg_settings
                 where name = 'default_toast_compression' and 'lz4' = any (enumvals)) then
    alter table public.ai_jobs alter column result set storage external;
  end if;
end
$$;
reset lock_timeout;
