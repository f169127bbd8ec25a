// The console's words in Korean and English. The UI follows the question's language (the same
// rule as the server: Hangul in at least a fifth of the letters), else the browser's.

import { STEPS } from './jobs.js';

export const STEP_NAMES = {
  ko: ['작업 시작', '데이터 수집 중', 'AI 분석 중', '결과 정리 중', '완료'],
  en: ['Starting', 'Collecting data', 'AI analysis', 'Formatting the result', 'Done'],
};

const HANGUL = /[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]/;

export function detectLanguage(text) {
  const letters = [...(text || '')].filter((c) => /\p{L}/u.test(c));
  if (!letters.length) return null;
  const hangul = letters.filter((c) => HANGUL.test(c)).length;
  return hangul && hangul * 5 >= letters.length ? 'ko' : 'en';
}

export function browserLanguage() {
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  return (langs[0] || 'en').toLowerCase().startsWith('ko') ? 'ko' : 'en';
}

export const TEXT = {
  ko: {
    title: 'AI 작업 콘솔',
    subtitle: '서버 분석 질문을 보내고, 작업을 실시간으로 지켜보고, 리포트와 차트를 읽습니다.',
    skip: '본문으로 건너뛰기',
    language: 'English',
    languageLabel: 'Switch to English',
    modeRealtime: '실시간 연결',
    modePolling: '주기적 확인 ({s}초)',
    askHeading: '질문하기',
    question: '질문',
    questionHint: '한국어나 영어로 쓰세요. 간단한 질문은 바로 답하고, 복잡한 질문은 작업으로 처리합니다.',
    examples: '예시',
    type: '작업 종류',
    priority: '우선순위',
    submit: '보내기',
    sending: '보내는 중…',
    types: { '': '자동', analysis: '분석', report: '리포트', optimization: '최적화', prediction: '예측' },
    priorities: { low: '낮음', normal: '보통', high: '높음' },
    statuses: { '': '전체', queued: '대기 중', processing: '처리 중', completed: '완료', failed: '실패', cancelled: '취소됨' },
    decisionSync: '간단한 질문이라 바로 답했습니다 (동기 응답, 작업 없음).',
    decisionJob: '복잡한 질문이라 작업으로 처리합니다 (복잡도: {c}, 종류: {t}, 예상 {e}).',
    complexity: { simple: '단순', medium: '보통', complex: '복잡' },
    answerHeading: '바로 받은 답',
    jobHeading: '작업 진행',
    progressLabel: '작업 진행률',
    elapsed: '경과 {t}',
    estimate: '예상 {t}',
    seconds: '{n}초',
    minutes: '{m}분 {s}초',
    cancel: '작업 취소',
    cancelling: '취소하는 중…',
    logHeading: '작업 로그',
    logEmpty: '아직 로그가 없습니다.',
    resultHeading: '결과',
    chartsHeading: '차트',
    chartIncident: '{id} · {server} {metric} — 장애 구간 전후, 평소 {b}{u}, 임계 {th}{u}',
    chartTrend: '{server} {metric} 추세 — 지금 {cur}{u}, 시간당 {slope}{u}, 경고 임계 {th}{u}',
    chartSeries: { value: '측정값', baseline: '평소(기준선)', threshold: '임계값', critical: '위험 임계', projection: '추세 연장' },
    jobsHeading: '내 작업',
    filterStatus: '상태',
    filterType: '종류',
    refresh: '새로 고침',
    more: '더 보기',
    noJobs: '작업이 없습니다.',
    open: '열기',
    jobId: '작업 ID',
    runAgain: '다시 실행',
    retry: '다시 시도',
    dismiss: '닫기',
    failed: '작업이 실패했습니다 ({m}).',
    // why a job failed, by its errorCode; the worker's own text is kept under "자세히"
    failedWhy: {
      ai_error: 'AI 모델 호출 실패',
      deadline_exceeded: '처리 시간 제한 초과',
      lease_expired: '작업자 응답 없음, 시도 횟수 소진',
      internal: '서버 내부 오류',
      '': '원인 불명',
    },
    failedDetail: '자세히',
    failedHint: '같은 질문으로 새 작업을 만들 수 있습니다.',
    cancelled: '작업이 취소되었습니다.',
    completed: '작업이 끝났습니다.',
    rateLimited: '요청이 너무 많습니다. {n}초 뒤에 다시 보낼 수 있습니다.',
    rateLimitedDone: '이제 다시 보낼 수 있습니다.',
    unavailable: '서비스가 잠시 응답하지 않습니다 ({code}). 잠시 뒤 다시 시도하세요.',
    badField: '입력을 확인하세요 — {field}: {m}',
    badRequest: '요청이 올바르지 않습니다: {m}',
    unauthorized: '로그인이 필요합니다: {m}',
    notFound: '작업을 찾을 수 없습니다 (지워졌거나 다른 사용자의 작업입니다).',
    alreadyFinished: '이미 끝난 작업이라 취소할 수 없습니다.',
    offline: '서버에 연결할 수 없습니다. 연결되는 대로 이어서 확인합니다.',
    backOnline: '다시 연결되었습니다.',
    serverError: '서버 오류가 났습니다 ({code}). 잠시 뒤 다시 시도하세요.',
    fields: { query: '질문', type: '작업 종류', 'options.priority': '우선순위', priority: '우선순위' },
    createdAt: '만든 때',
    problems: { missing: '꼭 써야 합니다', value_error: '비어 있으면 안 됩니다', string_too_short: '비어 있으면 안 됩니다', string_too_long: '너무 깁니다 (최대 4000자)', enum: '고를 수 있는 값이 아닙니다', literal_error: '고를 수 있는 값이 아닙니다', extra_forbidden: '알 수 없는 항목입니다', string_type: '글자여야 합니다' },
    dependencies: { database_unavailable: '데이터베이스 연결 안 됨', queue_unavailable: '작업 큐 연결 안 됨', dependency_unavailable: '내부 서비스 연결 안 됨', feature_disabled: '기능 꺼짐' },
  },
  en: {
    title: 'AI Jobs Console',
    subtitle: 'Ask about the servers, watch the job live, read the report and its charts.',
    skip: 'Skip to content',
    language: '한국어',
    languageLabel: '한국어로 보기',
    modeRealtime: 'Live (Realtime)',
    modePolling: 'Checking every {s} s',
    askHeading: 'Ask',
    question: 'Question',
    questionHint: 'Korean or English. Simple questions are answered at once; complex ones run as a job.',
    examples: 'Examples',
    type: 'Job type',
    priority: 'Priority',
    submit: 'Send',
    sending: 'Sending…',
    types: { '': 'Automatic', analysis: 'Analysis', report: 'Report', optimization: 'Optimization', prediction: 'Prediction' },
    priorities: { low: 'Low', normal: 'Normal', high: 'High' },
    statuses: { '': 'All', queued: 'Queued', processing: 'Processing', completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled' },
    decisionSync: 'A simple question, answered at once (synchronous, no job).',
    decisionJob: 'A complex question, run as a job (complexity: {c}, type: {t}, about {e}).',
    complexity: { simple: 'simple', medium: 'medium', complex: 'complex' },
    answerHeading: 'Instant answer',
    jobHeading: 'Job progress',
    progressLabel: 'Job progress',
    elapsed: 'elapsed {t}',
    estimate: 'estimate {t}',
    seconds: '{n} s',
    minutes: '{m} min {s} s',
    cancel: 'Cancel job',
    cancelling: 'Cancelling…',
    logHeading: 'Job log',
    logEmpty: 'No log lines yet.',
    resultHeading: 'Result',
    chartsHeading: 'Charts',
    chartIncident: '{id} · {server} {metric} — around the incident, baseline {b}{u}, limit {th}{u}',
    chartTrend: '{server} {metric} trend — now {cur}{u}, {slope}{u} per hour, warning limit {th}{u}',
    chartSeries: { value: 'measured', baseline: 'baseline', threshold: 'limit', critical: 'critical limit', projection: 'trend' },
    jobsHeading: 'My jobs',
    filterStatus: 'Status',
    filterType: 'Type',
    refresh: 'Refresh',
    more: 'Load more',
    noJobs: 'No jobs.',
    open: 'Open',
    jobId: 'Job id',
    runAgain: 'Run again',
    retry: 'Try again',
    dismiss: 'Dismiss',
    failed: 'The job failed ({m}).',
    failedWhy: {
      ai_error: 'the AI model call failed',
      deadline_exceeded: 'it ran past its time limit',
      lease_expired: 'the worker stopped answering, no attempts left',
      internal: 'an internal server error',
      '': 'cause unknown',
    },
    failedDetail: 'Details',
    failedHint: 'You can run the same question as a new job.',
    cancelled: 'The job was cancelled.',
    completed: 'The job is done.',
    rateLimited: 'Too many requests. You can send again in {n} s.',
    rateLimitedDone: 'You can send again now.',
    unavailable: 'The service is briefly unavailable ({code}). Try again in a moment.',
    badField: 'Please check {field}: {m}',
    badRequest: 'The request is not valid: {m}',
    unauthorized: 'Sign-in needed: {m}',
    notFound: 'Job not found (purged, or another user’s job).',
    alreadyFinished: 'The job has already ended, so it cannot be cancelled.',
    offline: 'Cannot reach the server. Watching resumes as soon as it is back.',
    backOnline: 'Connected again.',
    serverError: 'Server error ({code}). Try again in a moment.',
    fields: { query: 'the question', type: 'the job type', 'options.priority': 'the priority', priority: 'the priority' },
    createdAt: 'created',
    problems: { missing: 'is required', value_error: 'must not be blank', string_too_short: 'must not be blank', string_too_long: 'is too long (4000 characters at most)', enum: 'is not one of the choices', literal_error: 'is not one of the choices', extra_forbidden: 'is not a known field', string_type: 'must be text' },
    dependencies: { database_unavailable: 'database unreachable', queue_unavailable: 'job queue unreachable', dependency_unavailable: 'an internal service is unreachable', feature_disabled: 'feature turned off' },
  },
};

export const METRICS = {
  ko: { cpu: 'CPU', memory: '메모리', disk: '디스크', disk_io: '디스크 I/O', net_in: '수신 트래픽', net_out: '송신 트래픽', load: '부하', response_ms: '응답 시간', packet_loss: '패킷 손실' },
  en: { cpu: 'CPU', memory: 'memory', disk: 'disk', disk_io: 'disk I/O', net_in: 'inbound traffic', net_out: 'outbound traffic', load: 'load', response_ms: 'response time', packet_loss: 'packet loss' },
};

// Log lines in the visitor's language. The SQL functions and the worker write them in English
// and the pipeline's steps in the question's language; each known line is recognised by what is
// stable in its row (step, level, progress, data.code, never the wording) and shown in the UI's
// language. A line nobody taught the console keeps its own text.
export const LOG_TEXT = {
  ko: {
    created: '작업 생성됨',
    claimed: '{n}번째 시도 시작 (최대 {m}번)',
    finished: '결과 저장, 작업 끝',
    cancelledByClient: '사용자가 작업을 취소함',
    cancelled: '작업 취소됨: {reason}',
    retrying: '시도 실패 ({code}) — 다시 시도합니다',
    failed: '작업 실패 ({code})',
    redispatch: '작업자 응답 없음 — 작업을 다시 보냄 ({n}번째 전달)',
    dispatch: '전달되지 않은 작업을 다시 보냄 ({n}번째 전달)',
    lost: '작업자 응답 없음 — 시도를 모두 써서 실패',
  },
  en: {
    created: 'Job created',
    claimed: 'Attempt {n} of {m} started',
    finished: 'Result stored, job finished',
    cancelledByClient: 'Cancelled by the visitor',
    cancelled: 'Cancelled: {reason}',
    retrying: 'Attempt failed ({code}); trying again',
    failed: 'Job failed ({code})',
    redispatch: 'No answer from the worker; job sent again (delivery {n})',
    dispatch: 'Undelivered job sent again (delivery {n})',
    lost: 'No answer from the worker; no attempts left, job failed',
  },
};

const number = (text, pattern) => (String(text || '').match(pattern) || [])[1];

/** The stable key of a log line written by the SQL functions, or null. */
function sqlLogKey(line) {
  const { step, level, message } = line;
  const code = line.data && line.data.code;
  const task = number(message, /task (\d+)/);
  if (level === 'error' && code) return { key: step === 'queued' ? 'retrying' : 'failed', values: { code } };
  if (step === 'queued' && level === 'info') return { key: 'created' };
  if (step === 'claimed') {
    const [, n, m] = String(message).match(/(\d+) of (\d+)/) || [];
    return n ? { key: 'claimed', values: { n, m } } : null;
  }
  if (step === 'completed') return { key: 'finished' };
  if (step === 'cancelled') {
    return message === 'cancelled by the client' ? { key: 'cancelledByClient' } : { key: 'cancelled', values: { reason: message } };
  }
  if (step === 'failed' && String(message).startsWith('reaper:')) return { key: 'lost' };
  if ((step === 'redispatch' || step === 'dispatch') && task) return { key: step, values: { n: task } };
  return null;
}

/**
 * A log line in `language`, and the key it was known by ('step-<percent>' for the pipeline's
 * steps, a LOG_TEXT key for the SQL's lines, null for a line kept as written).
 */
export function logText(line, language) {
  const index = Math.max(STEP_NAMES.ko.indexOf(line.step), STEP_NAMES.en.indexOf(line.step));
  if (index >= 0 && line.progress === STEPS[index] && line.level === 'info') {
    return { key: `step-${STEPS[index]}`, text: STEP_NAMES[language][index] };
  }
  const known = sqlLogKey(line);
  if (!known) return { key: null, text: line.message };
  return { key: known.key, text: format(LOG_TEXT[language][known.key], known.values) };
}

/** `format('{n} s', {n: 3})` → '3 s' */
export function format(template, values = {}) {
  return String(template).replace(/\{(\w+)\}/g, (_, key) => (values[key] ?? ''));
}

export function duration(seconds, words) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return format(words.seconds, { n: s });
  return format(words.minutes, { m: Math.floor(s / 60), s: s % 60 });
}
