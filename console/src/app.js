// The console page: ask, see the router's decision, watch the job, read the report and its
// charts, list and reopen jobs, and meet every failure in the visitor's language.

import DOMPurify from 'dompurify';
import { marked } from 'marked';
import 'uplot/dist/uPlot.min.css';
import './app.css';
import { caption, drawChart, legendFor } from './charts.js';
import {
  ApiError,
  NetworkError,
  STEPS,
  cancelJob,
  configure,
  createJob,
  getJob,
  isFinal,
  listJobs,
  signIn,
  watchJob,
} from './jobs.js';
import { STEP_NAMES, TEXT, browserLanguage, detectLanguage, duration, format, logText } from './i18n.js';

const $ = (id) => document.getElementById(id);
const config = JSON.parse(($('console-config') || {}).textContent || '{}');

const ui = {
  language: browserLanguage(),
  languageChosen: false, // a click on the toggle wins over detection
  mode: 'polling',
  pollSeconds: 3,
  stopWatch: null,
  job: null, // the job shown: {jobId, query, type, priority, status, ...}
  timer: null,
  lastAsk: null, // {query, type, priority, key} of the last submit, for "try again"
  countdown: null,
  jobsCursor: null,
  jobs: [], // the listed jobs, kept to redraw the list in another language
  logLines: new Map(), // the shown job's log lines by id, kept to redraw them in another language
};

const words = () => TEXT[ui.language];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'style') Object.assign(node.style, value); // CSSOM: allowed by the CSP
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// ------------------------------------------------------------------------------ language

function fillSelect(select, options, selected) {
  const value = selected ?? select.value;
  select.replaceChildren(
    ...Object.entries(options).map(([key, label]) => el('option', { value: key }, label)),
  );
  if (value !== undefined && value !== null) select.value = value;
}

function applyLanguage() {
  const w = words();
  document.documentElement.lang = ui.language;
  document.title = w.title;
  for (const node of document.querySelectorAll('[data-t]')) node.textContent = w[node.dataset.t];
  $('lang').textContent = w.language;
  $('lang').setAttribute('aria-label', w.languageLabel);
  $('lang').setAttribute('lang', ui.language === 'ko' ? 'en' : 'ko');
  fillSelect($('type'), w.types);
  fillSelect($('priority'), w.priorities, $('priority').value || 'normal');
  fillSelect($('filter-status'), w.statuses);
  const { '': all, ...types } = w.types;
  fillSelect($('filter-type'), { '': w.statuses[''], ...types });
  showMode(ui.mode);
  if (ui.job) renderJob(ui.job);
  redrawLog();
  renderJobsLanguage();
}

function setLanguage(language, chosen = false) {
  if (!language || (ui.languageChosen && !chosen)) return;
  ui.languageChosen = ui.languageChosen || chosen;
  if (language !== ui.language) {
    ui.language = language;
    applyLanguage();
  }
}

function showMode(mode, pollSeconds) {
  ui.mode = mode;
  if (pollSeconds) ui.pollSeconds = pollSeconds;
  const w = words();
  $('mode').textContent =
    mode === 'realtime' ? w.modeRealtime : format(w.modePolling, { s: ui.pollSeconds });
  $('mode').dataset.mode = mode;
}

// ------------------------------------------------------------------------------ alerts

function clearAlert() {
  if (ui.countdown) clearInterval(ui.countdown);
  ui.countdown = null;
  $('alerts').replaceChildren();
}

function showAlert(kind, message, actions = []) {
  clearAlert();
  const box = el(
    'div',
    { class: `alert alert-${kind}`, 'data-kind': kind },
    el('p', { class: 'alert-text' }, message),
    actions.length ? el('div', { class: 'alert-actions' }, actions) : null,
  );
  $('alerts').append(box);
  return box;
}

function clearFieldErrors() {
  for (const id of ['query', 'type', 'priority']) {
    $(id).removeAttribute('aria-invalid');
    $(`${id}-error`).hidden = true;
  }
}

const FIELD_INPUT = { query: 'query', type: 'type', 'options.priority': 'priority', priority: 'priority' };

/** Say what went wrong, in the visitor's language, with what to do; `retry` re-runs the act. */
function explain(error, retry) {
  const w = words();
  if (error instanceof NetworkError) {
    showAlert('offline', w.offline, retry ? [el('button', { type: 'button', onclick: retry }, w.retry)] : []);
    return;
  }
  if (!(error instanceof ApiError)) {
    showAlert('error', format(w.serverError, { code: String(error && error.message) }));
    return;
  }
  if (error.status === 429) {
    rateLimited(error.retryAfter ?? 5, retry);
  } else if (error.status === 503 || error.status === 502 || error.status === 504) {
    showAlert('unavailable', format(w.unavailable, { code: dependencyName(error.code) }), [
      el('button', { type: 'button', onclick: retry, class: 'primary' }, w.retry),
    ]);
  } else if (error.status === 400) {
    badRequest(error);
  } else if (error.status === 401 || error.status === 403) {
    showAlert('error', format(w.unauthorized, { m: error.message }));
  } else if (error.status === 404) {
    showAlert('error', w.notFound);
  } else {
    showAlert('error', format(w.serverError, { code: error.code }));
  }
}

function dependencyName(code) {
  return words().dependencies[code] || code;
}

function badRequest(error) {
  const w = words();
  const problems = error.details.errors || [];
  const first = { ...(problems[0] || { field: error.details.field, message: error.message }) };
  // the server's message is English: say the problem in the visitor's language when known
  first.message = w.problems[first.type] || first.message;
  const input = FIELD_INPUT[first.field];
  const fieldName = w.fields[first.field] || first.field || '';
  if (input) {
    $(input).setAttribute('aria-invalid', 'true');
    const note = $(`${input}-error`);
    note.textContent = `${fieldName}: ${first.message}`;
    note.hidden = false;
    $(input).focus();
  }
  showAlert(
    'invalid',
    fieldName ? format(w.badField, { field: fieldName, m: first.message }) : format(w.badRequest, { m: error.message }),
  );
}

function rateLimited(seconds, retry) {
  const w = words();
  let left = Math.max(1, Math.ceil(seconds));
  const button = el('button', { type: 'button', class: 'primary', disabled: true, onclick: retry }, w.retry);
  const box = showAlert('rate-limited', format(w.rateLimited, { n: left }), [button]);
  const text = box.querySelector('.alert-text');
  text.dataset.secondsLeft = String(left);
  $('submit').disabled = true;
  ui.countdown = setInterval(() => {
    left -= 1;
    text.dataset.secondsLeft = String(left);
    if (left > 0) {
      text.textContent = format(w.rateLimited, { n: left });
      return;
    }
    clearInterval(ui.countdown);
    ui.countdown = null;
    text.textContent = w.rateLimitedDone;
    button.disabled = false;
    $('submit').disabled = false;
  }, 1000);
}

// ------------------------------------------------------------------------------ asking

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

async function submit(ask) {
  clearAlert();
  clearFieldErrors();
  setLanguage(detectLanguage(ask.query));
  const button = $('submit');
  button.disabled = true;
  button.textContent = words().sending;
  ui.lastAsk = ask;
  try {
    const created = await createJob({
      query: ask.query,
      type: ask.type || undefined,
      priority: ask.priority,
      idempotencyKey: ask.key, // the same key on "try again": never two jobs
    });
    if (created.mode === 'sync') {
      showSync(created);
    } else {
      showDecision(created);
      openJob({ ...created, query: ask.query, progress: 0, currentStep: null }, { fresh: true });
      refreshJobs();
    }
  } catch (error) {
    explain(error, () => submit(ask));
  } finally {
    button.textContent = words().submit;
    if (!ui.countdown) button.disabled = false;
  }
}

function showDecision(created) {
  const w = words();
  const decision = $('decision');
  decision.hidden = false;
  decision.dataset.mode = created.mode;
  decision.textContent =
    created.mode === 'sync'
      ? w.decisionSync
      : format(w.decisionJob, {
          c: w.complexity[created.complexity] || created.complexity,
          t: w.types[created.type] || created.type,
          e: duration(created.estimatedTime || 0, w),
        });
}

function renderMarkdown(target, markdown) {
  // the report is model-written: parse, then sanitise before it touches the DOM
  target.innerHTML = DOMPurify.sanitize(marked.parse(markdown || ''), {
    USE_PROFILES: { html: true },
  });
  // a Markdown table written without headers ("| | |") gets an empty header row, which
  // screen readers announce as nameless columns: drop such rows
  for (const head of target.querySelectorAll('thead')) {
    if (!head.textContent.trim()) head.remove();
  }
}

function showSync(created) {
  stopWatching();
  showDecision(created);
  $('job').hidden = true;
  $('result').hidden = true;
  $('answer').hidden = false;
  renderMarkdown($('answer-body'), created.answer);
  $('answer').scrollIntoView({ block: 'nearest' });
}

// ------------------------------------------------------------------------------ the job

function stopWatching() {
  if (ui.stopWatch) ui.stopWatch();
  ui.stopWatch = null;
  if (ui.timer) clearInterval(ui.timer);
  ui.timer = null;
}

function stepIndex(job) {
  if (job.status === 'completed') return STEPS.length - 1;
  let index = 0;
  STEPS.forEach((percent, i) => {
    if ((job.progress || 0) >= percent) index = i;
  });
  return index;
}

function renderSteps(job) {
  const names = STEP_NAMES[ui.language];
  const current = stepIndex(job);
  const running = !isFinal(job.status);
  $('steps').replaceChildren(
    ...names.map((name, i) => {
      let state = 'pending';
      if (i < current || (i === current && job.status === 'completed')) state = 'done';
      else if (i === current && running) state = 'current';
      else if (i === current) state = 'stopped';
      return el(
        'li',
        { class: `step step-${state}`, 'data-state': state, 'aria-current': state === 'current' ? 'step' : null },
        el('span', { class: 'step-dot', 'aria-hidden': 'true' }, state === 'done' ? '✓' : String(i + 1)),
        el('span', { class: 'step-name' }, name),
      );
    }),
  );
}

function renderTiming(job) {
  const w = words();
  const started = Date.parse(job.startedAt || job.createdAt || '') || ui.openedAt;
  const ended = job.completedAt ? Date.parse(job.completedAt) : isFinal(job.status) ? Date.parse(job.updatedAt) : Date.now();
  const parts = [format(w.elapsed, { t: duration((ended - started) / 1000, w) })];
  if (job.estimatedSeconds || job.estimatedTime) {
    parts.push(format(w.estimate, { t: duration(job.estimatedSeconds || job.estimatedTime, w) }));
  }
  $('timing').textContent = parts.join(' · ');
}

function renderJob(job) {
  const w = words();
  ui.job = { ...ui.job, ...job };
  const shown = ui.job;
  $('job').hidden = false;
  $('job').dataset.status = shown.status;
  $('job-status').textContent = w.statuses[shown.status] || shown.status;
  $('job-status').dataset.status = shown.status;
  $('job-query').textContent = shown.query || '';
  $('job-id').textContent = shown.jobId;
  const percent = shown.status === 'completed' ? 100 : Math.max(0, Math.min(100, shown.progress || 0));
  const stepName = STEP_NAMES[ui.language][stepIndex(shown)];
  const bar = $('progress');
  bar.setAttribute('aria-valuenow', String(percent));
  bar.setAttribute('aria-valuetext', `${stepName} ${percent}%`);
  $('progress-fill').style.width = `${percent}%`;
  renderSteps(shown);
  renderTiming(shown);
  $('cancel').hidden = isFinal(shown.status);
  if (!$('log').children.length) {
    $('log').append(el('p', { class: 'log-empty' }, w.logEmpty));
  }
  if (isFinal(shown.status)) renderOutcome(shown);
}

/** Why a job failed, in the visitor's language: by its errorCode, never the worker's text. */
function failedWhy(w, code) {
  return w.failedWhy[code] || (code ? `${w.failedWhy['']}: ${code}` : w.failedWhy['']);
}

function renderOutcome(job) {
  const w = words();
  const box = $('job-outcome');
  box.hidden = false;
  box.dataset.status = job.status;
  const again = () => {
    submit({ query: job.query, type: job.type, priority: job.priority, key: newKey() });
  };
  if (job.status === 'failed') {
    box.replaceChildren(
      el('p', { class: 'outcome-text' }, format(w.failed, { m: failedWhy(w, job.errorCode) })),
      // the worker's own words (English, from the model or the SQL) for whoever needs them
      job.error ? el('details', { class: 'outcome-detail' },
        el('summary', {}, w.failedDetail), el('code', { lang: 'en' }, `${job.errorCode || ''}: ${job.error}`)) : null,
      el('p', { class: 'hint' }, w.failedHint),
      el('button', { type: 'button', class: 'primary', onclick: again }, w.runAgain),
    );
  } else if (job.status === 'cancelled') {
    box.replaceChildren(
      el('p', { class: 'outcome-text' }, w.cancelled),
      el('button', { type: 'button', class: 'secondary', onclick: again }, w.runAgain),
    );
  } else {
    box.replaceChildren(el('p', { class: 'outcome-text' }, w.completed));
  }
}

function logItem(line) {
  const time = new Date(line.createdAt).toLocaleTimeString(ui.language === 'ko' ? 'ko-KR' : 'en-GB');
  // in the visitor's language when the line is a known one; as written otherwise
  const { key, text } = logText(line, ui.language);
  return el(
    'p',
    {
      class: `log-line log-${line.level}`,
      'data-id': String(line.id),
      'data-key': key || 'as-written',
      title: text !== line.message ? line.message : null,
    },
    el('time', { datetime: line.createdAt }, time),
    ' ',
    line.progress !== null && line.progress !== undefined ? el('span', { class: 'log-progress' }, `${line.progress}%`) : null,
    ' ',
    text,
  );
}

/** The log again in the current language (after the visitor switched it). */
function redrawLog() {
  if (!ui.logLines.size) return;
  const lines = [...ui.logLines.values()].sort((a, b) => a.id - b.id);
  $('log').replaceChildren(...lines.map(logItem));
}

function appendLog(line) {
  const list = $('log');
  list.querySelector('.log-empty')?.remove();
  ui.logLines.set(line.id, line);
  const item = logItem(line);
  // ids rise with time; a late line (a catch-up after a reconnect) goes where it belongs
  const after = [...list.children].find((node) => Number(node.dataset.id) > line.id);
  list.insertBefore(item, after || null);
  list.scrollTop = list.scrollHeight;
}

function renderResult(job) {
  const result = job.result;
  if (!result) return;
  $('result').hidden = false;
  renderMarkdown($('result-body'), result.markdown || '');
  const charts = $('charts');
  charts.replaceChildren();
  // a forecast is about trends; the other answers draw their incidents, then the trends
  const series = (result.series || []).filter((item) => result.type !== 'prediction' || item.kind === 'trend');
  $('charts-heading').hidden = !series.length;
  for (const item of series) {
    const language = TEXT[result.language] ? result.language : ui.language;
    const text = caption(item, language, TEXT[language]);
    const plot = el('div', { class: 'chart-plot', role: 'img', 'aria-label': text });
    const legend = el(
      'ul',
      { class: 'chart-legend' },
      legendFor(item, TEXT[language]).map((entry) =>
        el(
          'li',
          {},
          el('span', { class: `swatch${entry.dashed ? ' dashed' : ''}`, style: { borderColor: entry.color }, 'aria-hidden': 'true' }),
          entry.label,
        ),
      ),
    );
    const figure = el(
      'figure',
      { class: 'chart', 'data-series': item.id, 'data-kind': item.kind },
      plot,
      el('figcaption', {}, text, legend),
    );
    charts.append(figure);
    drawChart(plot, item, language, TEXT[language]);
  }
}

/** Show one job and follow it until it ends (or show it as it ended). */
function openJob(job, { fresh = false } = {}) {
  stopWatching();
  clearAlert();
  ui.job = null;
  ui.openedAt = Date.now();
  $('answer').hidden = true;
  $('result').hidden = true;
  $('job-outcome').hidden = true;
  $('log').replaceChildren();
  ui.logLines.clear();
  setLanguage(detectLanguage(job.query));
  renderJob(job);
  if (!fresh) $('job').scrollIntoView({ block: 'nearest' });
  ui.timer = setInterval(() => ui.job && !isFinal(ui.job.status) && renderTiming(ui.job), 1000);
  let troubled = false;
  ui.stopWatch = watchJob(job.jobId, {
    onProgress: (next) => {
      if (troubled) {
        troubled = false;
        showAlert('online', words().backOnline);
      }
      renderJob(next);
    },
    onLog: appendLog,
    onDone: (done) => {
      renderJob(done);
      renderResult(done);
      if (ui.timer) clearInterval(ui.timer);
      refreshJobs();
    },
    onError: (error) => {
      troubled = true;
      if (error instanceof NetworkError) showAlert('offline', words().offline);
      else explain(error, () => openJob(ui.job));
    },
    onMode: showMode,
  });
}

async function cancelShown() {
  const button = $('cancel');
  const w = words();
  button.disabled = true;
  button.textContent = w.cancelling;
  try {
    const job = await cancelJob(ui.job.jobId, 'cancelled from the console');
    renderJob(job);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) showAlert('info', w.alreadyFinished);
    else explain(error, cancelShown);
  } finally {
    button.disabled = false;
    button.textContent = words().cancel;
  }
}

// ------------------------------------------------------------------------------ the list

function jobItem(job) {
  const w = words();
  const when = new Date(job.createdAt).toLocaleString(ui.language === 'ko' ? 'ko-KR' : 'en-GB');
  return el(
    'li',
    { class: 'job-item', 'data-job-id': job.jobId, 'data-status': job.status },
    el(
      'button',
      {
        type: 'button',
        class: 'job-open',
        onclick: () => reopen(job.jobId),
      },
      el('span', { class: 'job-item-query' }, job.query),
      el(
        'span',
        { class: 'job-item-meta' },
        el('span', { class: 'badge', 'data-status': job.status }, w.statuses[job.status] || job.status),
        ' ',
        w.types[job.type] || job.type,
        ' · ',
        el('time', { datetime: job.createdAt }, when),
      ),
    ),
  );
}

async function refreshJobs({ more = false } = {}) {
  const list = $('jobs');
  const note = $('jobs-error');
  try {
    const page = await listJobs({
      status: $('filter-status').value || undefined,
      type: $('filter-type').value || undefined,
      cursor: more ? ui.jobsCursor : undefined,
      limit: 10,
    });
    ui.jobs = more ? [...ui.jobs, ...page.jobs] : page.jobs;
    list.replaceChildren(...ui.jobs.map(jobItem));
    ui.jobsCursor = page.nextCursor;
    $('jobs-more').hidden = !page.nextCursor;
    $('jobs-empty').hidden = list.children.length > 0;
    note.hidden = true;
    list.dataset.loaded = 'true';
  } catch (error) {
    // said beside the list, so it never hides what the visitor is doing in the main column
    const w = words();
    let text = format(w.serverError, { code: error.code || error.message });
    if (error instanceof NetworkError) text = w.offline;
    else if (error instanceof ApiError && error.status === 429) text = format(w.rateLimited, { n: error.retryAfter ?? 5 });
    else if (error instanceof ApiError && error.status >= 502) text = format(w.unavailable, { code: dependencyName(error.code) });
    note.replaceChildren(
      el('span', {}, text),
      ' ',
      el('button', { type: 'button', class: 'secondary', onclick: () => refreshJobs({ more }) }, w.retry),
    );
    note.hidden = false;
  }
}

function renderJobsLanguage() {
  $('jobs').replaceChildren(...ui.jobs.map(jobItem));
}

async function reopen(jobId) {
  try {
    const { job } = await getJob(jobId);
    // a finished job shows its log and result at once: watchJob ends after its first read
    openJob(job);
    $('job-heading').focus();
  } catch (error) {
    explain(error, () => reopen(jobId));
  }
}

// ------------------------------------------------------------------------------ start

function wire() {
  $('lang').addEventListener('click', () => setLanguage(ui.language === 'ko' ? 'en' : 'ko', true));
  $('ask').addEventListener('submit', (event) => {
    event.preventDefault();
    submit({
      query: $('query').value,
      type: $('type').value,
      priority: $('priority').value,
      key: newKey(),
    });
  });
  $('query').addEventListener('input', () => {
    $('query').removeAttribute('aria-invalid');
    $('query-error').hidden = true;
  });
  for (const chip of document.querySelectorAll('[data-example]')) {
    chip.addEventListener('click', () => {
      $('query').value = chip.textContent;
      $('query').focus();
    });
  }
  $('cancel').addEventListener('click', cancelShown);
  $('jobs-refresh').addEventListener('click', () => refreshJobs());
  $('jobs-more').addEventListener('click', () => refreshJobs({ more: true }));
  $('filter-status').addEventListener('change', () => refreshJobs());
  $('filter-type').addEventListener('change', () => refreshJobs());
  window.addEventListener('offline', () => showAlert('offline', words().offline));
  window.addEventListener('online', () => showAlert('online', words().backOnline));
}

async function start() {
  // every function of a project shares one origin (https://REGION-PROJECT.cloudfunctions.net)
  const base = config.functionsBaseUrl || location.origin;
  configure({
    baseUrl: base,
    supabaseUrl: config.supabaseUrl,
    supabaseAnonKey: config.supabaseAnonKey,
  });
  wire();
  applyLanguage();
  document.body.dataset.ready = 'true';
  if (config.supabaseAnonKey) await signIn(); // the visitor's own identity, before any list
  refreshJobs();
}

start();
