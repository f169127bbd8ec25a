-- A job's result is the largest value the queue writes (about 80 kB of JSON for a report):
-- complete_job_v2 stores it once, and every read of a finished job (a poll, the console)
-- decompresses it. Postgres TOASTs it with default_toast_compression, pglz unless set, whose
-- compression cost about 0.7 ms of the database's CPU per completed job here (the completion's
-- backend: 1.9 ms with the result, 1.2 ms with it stored uncompressed). lz4 compresses and
-- decompresses several times faster at a slightly lower ratio; Supabase builds Postgres with
-- it (supabase/postgres#483, on the platform since 2023-01).
--
-- A server built without lz4 (older Supabase images, the embedded pgserver used locally)
-- rejects SET COMPRESSION lz4, so the migration asks first and otherwise keeps the default.
-- Only new values are affected: stored ones keep their compression and read back as before.
-- SET COMPRESSION changes only the catalog (no rewrite) but takes an ACCESS EXCLUSIVE lock: it
-- waits at most 5 s for a long transaction on ai_jobs instead of queueing every create, poll
-- and claim behind it; a timed-out push is simply run again.
set lock_timeout = '5s';
do $$
begin
  if exists (select from pg_settings
             where name = 'default_toast_compression' and 'lz4' = any (enumvals)) then
    alter table public.ai_jobs alter column result set compression lz4;
  end if;
end
$$;
reset lock_timeout;
