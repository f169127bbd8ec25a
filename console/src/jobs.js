// The job-watching logic of ai-job-queue, framework-free: the console uses it, and a Next.js
// app can import it as is (README: "The web console").
//
//   configure({ baseUrl, supabaseUrl, supabaseAnonKey })
//   const created = await createJob({ query, type, priority })   // {mode: 'sync'|'job', ...}
//   const stop = watchJob(created.jobId, { onProgress, onLog, onDone, onError, onMode })
//   await cancelJob(jobId); await listJobs({ status, type, cursor, limit })
//
// watchJob follows a job through Supabase Realtime when an anonymous session is available
// (postgres_changes on ai_jobs and ai_job_logs, RLS: the visitor's own rows) and through
// ETag polling of ai-jobs-get at the server's suggested interval otherwise. Switching either
// way never loses an event: log lines carry increasing ids, every (re)start of either path
// first fetches what came after the last id seen, and duplicates are dropped by id.

/** An HTTP answer that is not 2xx, as data: status, machine-readable code, field, wait. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.details = error.details || {};
    /** seconds the server asked us to wait (Retry-After), or null */
    this.retryAfter = retryAfter;
  }

  /** The fields a 400 names (validation errors, or a details.field). */
  get fields() {
    const list = (this.details.errors || []).map((e) => e.field).filter(Boolean);
    if (this.details.field) list.push(this.details.field);
    return list;
  }
}

/** The server could not be reached at all (offline, DNS, connection refused, CORS). */
export class NetworkError extends Error {
  constructor(cause) {
    super('network unreachable');
    this.name = 'NetworkError';
    this.cause = cause;
  }
}

const FINAL = new Set(['completed', 'failed', 'cancelled']);
export const isFinal = (status) => FINAL.has(status);

/** The seed's five steps: the percentage at which each begins. */
export const STEPS = [0, 20, 50, 80, 100];

const settings = {
  baseUrl: '',
  supabaseUrl: null,
  supabaseAnonKey: null,
  fetch: (...args) => globalThis.fetch(...args),
  // a Supabase client given by the app (e.g. the one it already has); else made on demand
  supabase: null,
};
let sessionPromise = null;

/** Set the function URLs' base and, for Realtime, the Supabase URL and anon key. */
export function configure(options = {}) {
  Object.assign(settings, options);
  settings.baseUrl = (settings.baseUrl || '').replace(/\/+$/, '');
  sessionPromise = null;
}

async function supabaseClient() {
  if (settings.supabase) return settings.supabase;
  if (!settings.supabaseUrl || !settings.supabaseAnonKey) return null;
  // loaded only when Realtime is configured: a polling-only page never downloads it
  const { createClient } = await import('@supabase/supabase-js');
  settings.supabase = createClient(settings.supabaseUrl, settings.supabaseAnonKey, {
    auth: { persistSession: true, autoRefreshToken: true, storageKey: 'ai-jobs-console-auth' },
  });
  return settings.supabase;
}

/**
 * The visitor's Supabase session: the stored one, else a new anonymous sign-in. Null when
 * Supabase is not configured or sign-in fails (then the API sees the shared anonymous user
 * and the page polls). Jobs belong to the session's user, which is what lets Realtime's RLS
 * deliver them.
 */
export function signIn() {
  if (!sessionPromise) {
    sessionPromise = (async () => {
      const client = await supabaseClient();
      if (!client) return null;
      const { data } = await client.auth.getSession();
      if (data && data.session) return data.session;
      const { data: signed, error } = await client.auth.signInAnonymously();
      if (error) throw error;
      return signed.session;
    })().catch((error) => {
      sessionPromise = null; // try again next time
      console.warn('anonymous sign-in failed; polling without a session', error);
      return null;
    });
  }
  return sessionPromise;
}

async function authHeaders() {
  const session = await signIn();
  if (!session) return {};
  const client = await supabaseClient();
  // the client refreshes the token itself; ask it for the current one. A session it dropped
  // (signed out, refresh refused) is never sent: the API refuses a token it cannot verify
  // (401) rather than take it for the anonymous caller, so sign in afresh
  const { data } = await client.auth.getSession();
  let current = data.session;
  if (!current) {
    sessionPromise = null;
    current = await signIn();
  }
  return current ? { Authorization: `Bearer ${current.access_token}` } : {};
}

function retryAfterSeconds(response) {
  const raw = response.headers.get('Retry-After');
  if (!raw) return null;
  const seconds = Number(raw);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(raw); // the HTTP-date form
  return Number.isNaN(at) ? null : Math.max(0, Math.round((at - Date.now()) / 1000));
}

async function request(path, { method = 'GET', body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...(await authHeaders()), ...headers }, signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await settings.fetch(`${settings.baseUrl}/${path}`, init);
  } catch (error) {
    if (error && error.name === 'AbortError') throw error;
    throw new NetworkError(error);
  }
  if (response.status === 304) return { response, data: null };
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data, retryAfterSeconds(response));
  return { response, data };
}

function newKey() {
  if (globalThis.crypto && globalThis.crypto.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/**
 * Ask a question. Simple ones come back answered: `{mode: 'sync', answer, data, complexity}`;
 * others as a job: `{mode: 'job', jobId, status, type, estimatedTime, pollIntervalSeconds}`.
 * Pass the same `idempotencyKey` when retrying the same question (after a 503 or a network
 * error) so it can never create two jobs.
 */
export async function createJob({ query, type, priority, metadata, idempotencyKey } = {}) {
  const body = { query };
  if (type) body.type = type;
  if (priority) body.options = { priority };
  if (metadata) body.metadata = metadata;
  const { data } = await request('ai-jobs-create', {
    method: 'POST',
    body,
    headers: { 'Idempotency-Key': idempotencyKey || newKey() },
  });
  return data.mode === 'sync' ? data : { mode: 'job', ...data };
}

/** Cancel a queued or running job; resolves to the job. 409 (ApiError) if it had ended. */
export async function cancelJob(jobId, reason) {
  const { data } = await request('ai-jobs-cancel', {
    method: 'POST',
    body: reason ? { jobId, reason } : { jobId },
  });
  return data;
}

/** One page of the visitor's jobs, newest first: `{jobs, nextCursor}`. */
export async function listJobs({ status, type, cursor, limit } = {}) {
  const params = new URLSearchParams();
  if (status) params.set('status', [].concat(status).join(','));
  if (type) params.set('type', [].concat(type).join(','));
  if (cursor) params.set('cursor', cursor);
  if (limit) params.set('limit', String(limit));
  const query = params.toString();
  const { data } = await request(`ai-jobs-list${query ? `?${query}` : ''}`);
  return data;
}

/** A job as ai-jobs-get shows it (with its result); `logsAfter` adds the log lines after it. */
export async function getJob(jobId, { logsAfter, etag, signal } = {}) {
  const params = logsAfter === undefined ? '' : `?logs=true&logsAfter=${logsAfter}`;
  const headers = etag ? { 'If-None-Match': etag } : {};
  const { response, data } = await request(`ai-jobs-get/${encodeURIComponent(jobId)}${params}`, {
    headers,
    signal,
  });
  const interval = Number(response.headers.get('X-Poll-Interval'));
  return {
    job: data,
    etag: response.headers.get('ETag'),
    notModified: response.status === 304,
    pollSeconds: Number.isFinite(interval) && interval > 0 ? interval : null,
  };
}

const camel = (key) => key.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** A Realtime row (the table's snake_case columns) in the API's camelCase shape. */
export function fromRow(row) {
  const out = {};
  for (const [key, value] of Object.entries(row || {})) out[camel(key)] = value;
  if (out.id !== undefined && out.jobId === undefined) out.jobId = out.id;
  return out;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follow one job until it ends. Callbacks:
 *  onProgress(job)   status/progress/currentStep changed (job in the API's shape)
 *  onLog(line)       one log line {id, level, progress, step, message, createdAt}, in order, once
 *  onDone(job)       the job ended (completed, failed or cancelled), with its result or error
 *  onError(error)    a transient problem (NetworkError, ApiError 429/503): watching goes on
 *  onMode(mode, s)   'realtime' or 'polling' (every s seconds), whenever that changes
 * Returns stop(); calling it ends the watch (no callback fires after it).
 */
export function watchJob(jobId, callbacks = {}, options = {}) {
  const { onProgress, onLog, onDone, onError, onMode } = callbacks;
  const abort = new AbortController();
  const signal = abort.signal;
  const state = {
    lastLogId: 0,
    etag: null,
    seen: '',
    done: false,
    mode: null,
    pollSeconds: 3,
    updatedAt: 0,
  };
  // ids are one sequence across all jobs (not per job), so "seen" is a set, not a counter
  const seenLogs = new Set();
  // Realtime counts as live once the channel is subscribed AND has delivered a change of this
  // job: RLS delivers only the visitor's own rows, so an API that did not take the visitor's
  // token (no SUPABASE_JWT_SECRET there) would leave a subscribed channel silent. Until then,
  // and whenever the channel drops, polling runs at the server's interval.
  let subscribed = false;
  let realtimeLive = false;
  const delivered = () => {
    if (subscribed && !realtimeLive) {
      realtimeLive = true;
      emitMode('realtime');
    }
  };
  let wake = null;
  const wakeUp = () => wake && wake();

  const emitMode = (mode) => {
    const key = `${mode}|${state.pollSeconds}`;
    if (state.mode !== key && !signal.aborted) {
      state.mode = key;
      if (onMode) onMode(mode, state.pollSeconds);
    }
  };
  const emitLog = (line) => {
    if (signal.aborted || !line || seenLogs.has(line.id)) return;
    seenLogs.add(line.id);
    state.lastLogId = Math.max(state.lastLogId, line.id);
    if (onLog) onLog(line);
  };
  const emitJob = (job) => {
    if (signal.aborted || state.done) return;
    // a poll answered after a newer Realtime event (or the reverse) must not move the bar
    // back: apply only snapshots at least as new as the last one (a retry is newer too)
    const at = Date.parse(job.updatedAt || '') || 0;
    if (at < state.updatedAt) return;
    state.updatedAt = at;
    const key = `${job.status}|${job.progress}|${job.currentStep}|${job.attempts}`;
    if (key !== state.seen) {
      state.seen = key;
      if (onProgress) onProgress(job);
    }
  };
  const finish = (job) => {
    if (signal.aborted || state.done) return;
    state.done = true;
    if (onDone) onDone(job);
    abort.abort();
  };

  // one GET: the job and every log line after the last seen; ends the watch on a final status
  async function catchUp() {
    const got = await getJob(jobId, { logsAfter: state.lastLogId, etag: state.etag, signal });
    if (got.pollSeconds && got.pollSeconds !== state.pollSeconds) {
      state.pollSeconds = got.pollSeconds; // the server's suggestion (X-Poll-Interval)
      if (!realtimeLive) emitMode('polling');
    }
    if (got.notModified) return;
    state.etag = got.etag;
    for (const line of got.job.logs || []) emitLog(line);
    const { logs, ...job } = got.job;
    emitJob(job);
    if (isFinal(job.status)) finish(job);
  }

  async function pollLoop() {
    let failures = 0;
    while (!signal.aborted) {
      let waitSeconds = state.pollSeconds;
      try {
        await catchUp();
        failures = 0;
      } catch (error) {
        if (signal.aborted || (error && error.name === 'AbortError')) return;
        if (error instanceof ApiError && ![429, 502, 503, 504].includes(error.status)) {
          // 404 (not yours, or purged) or another refusal: watching cannot go on
          state.done = true;
          if (onError) onError(error);
          abort.abort();
          return;
        }
        failures += 1;
        if (onError) onError(error);
        waitSeconds =
          (error instanceof ApiError && error.retryAfter) ||
          Math.min(30, state.pollSeconds * 2 ** Math.min(failures, 4));
      }
      if (signal.aborted) return;
      // with Realtime live, a slow safety poll only (a missed event costs at most this)
      if (realtimeLive) waitSeconds = Math.max(waitSeconds, 5 * state.pollSeconds);
      await new Promise((resolve) => {
        wake = resolve;
        sleep(waitSeconds * 1000, signal).then(resolve);
      });
      wake = null;
    }
  }

  async function subscribe() {
    const session = await signIn();
    if (!session || signal.aborted) return;
    const client = await supabaseClient();
    const channel = client
      .channel(`job-${jobId}-${Math.random().toString(36).slice(2, 8)}`)
      .on(
        'postgres_changes',
        { event: 'UPDATE', schema: 'public', table: 'ai_jobs', filter: `id=eq.${jobId}` },
        (change) => {
          delivered();
          const job = fromRow(change.new);
          if (isFinal(job.status)) {
            // the row event may be trimmed (1 MiB); the API has the whole result and the
            // last log lines, so the end is always read from it
            catchUp().catch(() => wakeUp());
          } else {
            emitJob(job);
          }
        },
      )
      .on(
        'postgres_changes',
        { event: 'INSERT', schema: 'public', table: 'ai_job_logs', filter: `job_id=eq.${jobId}` },
        (change) => {
          delivered();
          emitLog(fromRow(change.new));
        },
      )
      .subscribe((status) => {
        if (signal.aborted) return;
        if (status === 'SUBSCRIBED') {
          subscribed = true;
          // changes committed before the subscription began may be missed: read them now
          catchUp().catch(() => wakeUp());
        } else if (['CHANNEL_ERROR', 'TIMED_OUT', 'CLOSED'].includes(status)) {
          subscribed = false;
          realtimeLive = false;
          emitMode('polling');
          wakeUp(); // poll at once, from the last log id
        }
      });
    signal.addEventListener('abort', () => client.removeChannel(channel));
  }

  const online = () => wakeUp();
  if (globalThis.addEventListener) {
    globalThis.addEventListener('online', online);
    signal.addEventListener('abort', () => globalThis.removeEventListener('online', online));
  }
  emitMode('polling');
  pollLoop();
  if (options.realtime !== false) {
    subscribe().catch((error) => {
      console.warn('Realtime unavailable; polling', error);
      subscribed = false;
      realtimeLive = false;
      emitMode('polling');
    });
  }
  return () => abort.abort();
}
