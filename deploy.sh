#!/usr/bin/env bash
# deploy.sh — deploy the AI job queue to a real Google Cloud project (Cloud Functions gen2).
#
# Idempotent: every resource is described first, then created or updated, so the script can be
# re-run after any change (or after a failure half way). Run `./deploy.sh --help` for every
# flag and environment variable with its default; `--dry-run` prints each command instead of
# running it (staging of the function sources still happens: it is local and harmless).
#
# Order: APIs → service accounts and their roles → Cloud Tasks queue → secrets → Supabase
# migrations (backward compatible, so before the code that needs them) → stage and deploy the functions
# (processor first: the others need its URL) → Cloud Scheduler job for the reaper → the
# function URLs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

# The functions (name, entry point, access, size, secrets) are listed in shared/functions.py
# only; this script reads them through it (python -m shared.functions --shell).
APIS=(
  cloudfunctions.googleapis.com
  run.googleapis.com
  cloudbuild.googleapis.com
  artifactregistry.googleapis.com
  cloudtasks.googleapis.com
  cloudscheduler.googleapis.com
  secretmanager.googleapis.com
  logging.googleapis.com
  iam.googleapis.com
)
# The functions' settings are declared, with their defaults and rules, in shared/settings.py
# only; this script validates and resolves them through it (python -m shared.settings).
if [[ -n "${DEPLOY_PYTHON:-}" ]]; then
  PYTHON=$DEPLOY_PYTHON
elif [[ -x .venv/bin/python ]]; then
  PYTHON=.venv/bin/python
else
  PYTHON=python3
fi

usage() {
  cat <<'EOF'
Usage: ./deploy.sh [--dry-run] [--project ID] [--region REGION] [--only NAME[,NAME...]]
                   [--skip-migrations] [--help]

Needs a Python with requirements.txt installed (DEPLOY_PYTHON, else .venv/bin/python, else
python3): the functions' settings are checked by shared/settings.py before anything runs.

Flags
  --dry-run            print every command instead of running it; describe-probes are not run
                       and every resource is assumed absent (the create path is printed);
                       the function sources are still staged
  --project ID         Google Cloud project (overrides GCP_PROJECT)
  --region REGION      region of the functions (overrides FUNCTION_REGION)
  --only NAMES         deploy only these functions (comma list of the names in the table of
                       functions below);
                       APIs, service accounts, queue, secrets and migrations are still ensured
  --skip-migrations    do not run `supabase db push`
  -h, --help           this text

Required
  GCP_PROJECT                     Google Cloud project id (or --project)
  SUPABASE_URL                    https://<ref>.supabase.co (and every rule of the
                                  functions' settings below must hold)

Secrets (read from the environment, stored in Secret Manager through stdin, mounted as env vars)
  SUPABASE_SERVICE_ROLE_KEY       -> secret supabase-service-role-key (needed on the first run;
                                     later runs keep the stored version when unset)
  GEMINI_API_KEY                  -> secret gemini-api-key (optional: without it the local
                                     engine writes the answers)
  SUPABASE_JWT_SECRET             -> secret supabase-jwt-secret (optional: verifies user JWTs)
  BFF_SHARED_SECRET               -> secret bff-shared-secret (optional: lets a trusted BFF name
                                     the user with X-User-Id)
  PROCESSOR_SHARED_SECRET         -> secret processor-shared-secret (optional: extra header
                                     check on the processor and the reaper)
  SUPABASE_DB_URL                 Postgres URL for `supabase db push` (unset: migrations skipped)

Google Cloud (default)
  SCHEDULER_LOCATION              FUNCTION_REGION
  RUNTIME_SA_NAME                 ai-jobs-runtime   (the functions run as it)
  INVOKER_SA_NAME                 ai-jobs-invoker   (OIDC identity of Cloud Tasks / Scheduler;
                                                     sets TASKS_INVOKER_SA)
  BUILD_SERVICE_ACCOUNT           unset (Cloud Build's default; else projects/P/serviceAccounts/E)
  DEPLOY_BUILD_DIR                build/deploy      (where each function's source is staged)

Functions (default)
  FUNCTION_RUNTIME                python313 (the newest GA runtime every pinned package has
                                             cp313 wheels for; python314 is in preview)
  the functions and their sizes: the tables below (shared/functions.py, the one place); a
  size is a number of vCPUs (concurrency > 1 needs >= 1), a concurrency is also the
  function's THREADS, and CREATE_MIN_INSTANCES=1 keeps a warm create (README, "Deployment")

Cloud Tasks queue retry configuration (default)
  QUEUE_MIN_BACKOFF               10s
  QUEUE_MAX_BACKOFF               300s
  QUEUE_MAX_DOUBLINGS             4
  QUEUE_MAX_CONCURRENT_DISPATCHES 10
  QUEUE_MAX_DISPATCHES_PER_SECOND 5

Cloud Scheduler job for the reaper (default)
  REAP_SCHEDULE                   */5 * * * *
  REAP_TIME_ZONE                  Asia/Seoul
  REAP_ATTEMPT_DEADLINE           the reaper's timeout + "s"

Settings written into the functions' environment
  by this script: SUPABASE_URL, GCP_PROJECT, FUNCTION_REGION, TASKS_LOCATION, TASKS_QUEUE,
  TASKS_INVOKER_SA (the invoker account), PROCESSOR_URL (the processor's URL, read after
  deploying it), REAPER_URL (the reaper only), PROCESSOR_VERIFY_OIDC (default true here),
  PUBLIC_BASE_URL (default https://REGION-PROJECT.cloudfunctions.net, builds pollUrl); and
  every other non-secret setting below that is set in the environment (unset ones keep the
  default declared in shared/settings.py). Secrets are mounted from Secret Manager (above).

EOF
  echo "The functions (shared/functions.py, the one place)"
  "$PYTHON" -m shared.functions --markdown
  echo
  echo "Settings of the functions and of this script (shared/settings.py, the one place)"
  "$PYTHON" -m shared.settings --markdown --deploy \
    || echo "  (not shown: $PYTHON cannot import shared.settings)"
}

die() {
  echo "error: $*" >&2
  exit 1
}

log() {
  echo "==> $*"
}

# ---------------------------------------------------------------------------------------------
# Flags
DRY_RUN=false
SKIP_MIGRATIONS=false
ONLY=""
while (($# > 0)); do
  case "$1" in
    --dry-run) DRY_RUN=true ;;
    --skip-migrations) SKIP_MIGRATIONS=true ;;
    --project) GCP_PROJECT=${2:?--project needs a value}; shift ;;
    --project=*) GCP_PROJECT=${1#*=} ;;
    --region) FUNCTION_REGION=${2:?--region needs a value}; shift ;;
    --region=*) FUNCTION_REGION=${1#*=} ;;
    --only) ONLY=${2:?--only needs a value}; shift ;;
    --only=*) ONLY=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------------
# Settings (environment, then the defaults documented in --help)
PROJECT=${GCP_PROJECT:-}
[[ -n "$PROJECT" ]] || die "GCP_PROJECT is not set: export GCP_PROJECT=<project id> or pass --project"
# The functions' settings as deployed: validated, defaults resolved, by shared/settings.py. A
# service key kept in Secret Manager from an earlier run is not in the environment: a
# placeholder stands in for it during the check only.
export GCP_PROJECT=$PROJECT PROCESSOR_VERIFY_OIDC=${PROCESSOR_VERIFY_OIDC:-true}
if [[ -n "${FUNCTION_REGION:-}" ]]; then export FUNCTION_REGION; fi
check_settings() {
  SUPABASE_SERVICE_ROLE_KEY=${SUPABASE_SERVICE_ROLE_KEY:-kept-in-secret-manager} \
    "$PYTHON" -m shared.settings --deploy "$@"
}
RESOLVED=$(check_settings --shell) || die "invalid settings (the line above names the variable)"
eval "$RESOLVED"
log "Settings of the functions (shared/settings.py; secrets masked)"
check_settings --check
REGION=$SETTING_FUNCTION_REGION
TASKS_LOCATION=$SETTING_TASKS_LOCATION
TASKS_QUEUE=$SETTING_TASKS_QUEUE
SCHEDULER_LOCATION=${SCHEDULER_LOCATION:-$REGION}
RUNTIME_SA_NAME=${RUNTIME_SA_NAME:-ai-jobs-runtime}
INVOKER_SA_NAME=${INVOKER_SA_NAME:-ai-jobs-invoker}
RUNTIME_SA="${RUNTIME_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
INVOKER_SA="${INVOKER_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
BUILD_SERVICE_ACCOUNT=${BUILD_SERVICE_ACCOUNT:-}
BUILD_DIR=${DEPLOY_BUILD_DIR:-build/deploy}

# The table of functions with each size as deployed: defaults in shared/functions.py, the
# environment's overrides (PROCESSOR_MEMORY, FUNCTION_CONCURRENCY, ...) checked there. Sets
# FUNCTIONS (deploy order), PROCESSOR, REAPER and FN_ENTRY[name], FN_ACCESS, FN_SECRETS,
# FN_MEMORY, FN_CPU, FN_CONCURRENCY, FN_TIMEOUT_S, FN_MAX_INSTANCES, FN_MIN_INSTANCES.
TABLE=$(PROCESSOR_TIMEOUT_S=$SETTING_PROCESSOR_TIMEOUT_S "$PYTHON" -m shared.functions --shell) \
  || die "invalid function sizes (the line above names the variable)"
eval "$TABLE"
FUNCTION_RUNTIME=${FUNCTION_RUNTIME:-python313}

QUEUE_MAX_ATTEMPTS=$SETTING_QUEUE_MAX_ATTEMPTS
QUEUE_MIN_BACKOFF=${QUEUE_MIN_BACKOFF:-10s}
QUEUE_MAX_BACKOFF=${QUEUE_MAX_BACKOFF:-300s}
QUEUE_MAX_DOUBLINGS=${QUEUE_MAX_DOUBLINGS:-4}
QUEUE_MAX_CONCURRENT_DISPATCHES=${QUEUE_MAX_CONCURRENT_DISPATCHES:-10}
QUEUE_MAX_DISPATCHES_PER_SECOND=${QUEUE_MAX_DISPATCHES_PER_SECOND:-5}

REAP_SCHEDULE=${REAP_SCHEDULE:-"*/5 * * * *"}
REAP_TIME_ZONE=${REAP_TIME_ZONE:-Asia/Seoul}
REAP_ATTEMPT_DEADLINE=${REAP_ATTEMPT_DEADLINE:-${FN_TIMEOUT_S[$REAPER]}s}

PUBLIC_BASE_URL=${PUBLIC_BASE_URL:-https://${REGION}-${PROJECT}.cloudfunctions.net}
# Set only when given: otherwise read from the deployed function after its deploy.
PROCESSOR_URL_OVERRIDE=${PROCESSOR_URL:-}
REAPER_URL_OVERRIDE=${REAPER_URL:-}
SUPABASE_DB_URL=${SUPABASE_DB_URL:-}

# Which functions this run deploys.
declare -A SELECTED=()
if [[ -z "$ONLY" ]]; then
  for name in "${FUNCTIONS[@]}"; do SELECTED[$name]=1; done
else
  IFS=',' read -r -a wanted <<<"$ONLY"
  for name in "${wanted[@]}"; do
    [[ -n "${FN_ENTRY[$name]:-}" ]] || die "--only: unknown function '$name' (known: ${FUNCTIONS[*]})"
    SELECTED[$name]=1
  done
fi
MIGRATE=true
if $SKIP_MIGRATIONS || [[ -z "$SUPABASE_DB_URL" ]]; then MIGRATE=false; fi

if ! $DRY_RUN; then
  command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)"
  if $MIGRATE; then
    command -v supabase >/dev/null || die "the Supabase CLI is not installed (needed for migrations; or --skip-migrations)"
  fi
  export CLOUDSDK_CORE_DISABLE_PROMPTS=1
fi

# ---------------------------------------------------------------------------------------------
# Printing and running commands. Secret values never reach a command line: they go through
# stdin. The printed form is redacted anyway, in case a value also occurs elsewhere.
SECRET_VALUES=()
for name in SUPABASE_SERVICE_ROLE_KEY GEMINI_API_KEY SUPABASE_JWT_SECRET BFF_SHARED_SECRET PROCESSOR_SHARED_SECRET; do
  if [[ -n "${!name:-}" ]]; then SECRET_VALUES+=("${!name}"); fi
done
if [[ "$SUPABASE_DB_URL" =~ ^[a-z]+://[^:/@]+:([^@]+)@ ]]; then
  SECRET_VALUES+=("${BASH_REMATCH[1]}")
fi

redact() {
  local text=$1 value
  for value in "${SECRET_VALUES[@]}"; do
    text=${text//"$value"/<redacted>}
  done
  printf '%s' "$text"
}

show() {
  local out="+" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  redact "$out"
  echo
}

# run CMD...: print it, then run it unless --dry-run.
run() {
  show "$@"
  $DRY_RUN || "$@"
}

# run_with_secret VALUE CMD...: the value is given on stdin (`--data-file=-`), never printed.
run_with_secret() {
  local value=$1
  shift
  echo "$(show "$@") <<< <redacted>"
  $DRY_RUN || printf '%s' "$value" | "$@"
}

# exists CMD...: a describe-probe, true when the resource exists. Not run in --dry-run.
exists() {
  if $DRY_RUN; then
    echo "# probe (dry-run: not run, assuming absent): $(show "$@" | cut -c3-)"
    return 1
  fi
  "$@" >/dev/null 2>&1
}

# function_url NAME: sets URL to the deployed function's URL ("" if it is not deployed).
function_url() {
  local cmd=(gcloud functions describe "$1" --gen2 --region="$REGION" --project="$PROJECT"
    --format='value(serviceConfig.uri)')
  if $DRY_RUN; then
    echo "# probe (dry-run: not run, placeholder URL): $(show "${cmd[@]}" | cut -c3-)"
    URL="https://${REGION}-${PROJECT}.cloudfunctions.net/$1"
  else
    URL=$("${cmd[@]}" 2>/dev/null || true)
  fi
}

yaml_quote() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

if $DRY_RUN; then
  echo "# dry-run: commands are printed, not run; describe-probes are skipped and every resource"
  echo "# is assumed absent, so the create path is shown. Function sources are staged for real."
fi

# ---------------------------------------------------------------------------------------------
log "Enabling APIs in project $PROJECT"
run gcloud services enable "${APIS[@]}" --project="$PROJECT"

# ---------------------------------------------------------------------------------------------
log "Service accounts"
# ai-jobs-runtime: identity of every function. ai-jobs-invoker: the identity in the OIDC
# tokens of Cloud Tasks (→ processor) and Cloud Scheduler (→ reaper); it can invoke those two
# services and nothing else.
for sa_name in "$RUNTIME_SA_NAME" "$INVOKER_SA_NAME"; do
  email="${sa_name}@${PROJECT}.iam.gserviceaccount.com"
  if exists gcloud iam service-accounts describe "$email" --project="$PROJECT"; then
    echo "service account $email exists"
  else
    run gcloud iam service-accounts create "$sa_name" --project="$PROJECT" \
      --display-name="AI job queue: ${sa_name#ai-jobs-}"
    # A new service account takes a few seconds to be visible to IAM policy bindings.
    $DRY_RUN || sleep 10
  fi
done
run gcloud projects add-iam-policy-binding "$PROJECT" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/logging.logWriter --condition=None
# actAs on the invoker only: creating a task that carries an OIDC token for a service account
# requires iam.serviceAccounts.actAs on that account. (The Cloud Tasks service agent needs no
# extra role in current GCP; nor does the Cloud Scheduler agent. Whoever runs this script needs
# actAs on the invoker too, to create the Scheduler job — project Owner/Editor has it.)
run gcloud iam service-accounts add-iam-policy-binding "$INVOKER_SA" --project="$PROJECT" \
  --member="serviceAccount:$RUNTIME_SA" --role=roles/iam.serviceAccountUser --condition=None

# ---------------------------------------------------------------------------------------------
log "Cloud Tasks queue $TASKS_QUEUE ($TASKS_LOCATION)"
# One queue: priority is stored on the job and shown to clients; a queue per priority would
# split the concurrency budget at this volume (future work). Retries are Cloud Tasks' own.
queue_flags=(
  --location="$TASKS_LOCATION" --project="$PROJECT"
  --max-attempts="$QUEUE_MAX_ATTEMPTS"
  --min-backoff="$QUEUE_MIN_BACKOFF"
  --max-backoff="$QUEUE_MAX_BACKOFF"
  --max-doublings="$QUEUE_MAX_DOUBLINGS"
  --max-concurrent-dispatches="$QUEUE_MAX_CONCURRENT_DISPATCHES"
  --max-dispatches-per-second="$QUEUE_MAX_DISPATCHES_PER_SECOND"
)
if exists gcloud tasks queues describe "$TASKS_QUEUE" --location="$TASKS_LOCATION" --project="$PROJECT"; then
  run gcloud tasks queues update "$TASKS_QUEUE" "${queue_flags[@]}"
else
  run gcloud tasks queues create "$TASKS_QUEUE" "${queue_flags[@]}"
fi
# Granted on this queue, not the project: create tasks (create/retry/reap), look one up (the
# reaper's GetTask before it adds another) and delete pending ones (cancel) here only.
for role in roles/cloudtasks.enqueuer roles/cloudtasks.viewer roles/cloudtasks.taskDeleter; do
  run gcloud tasks queues add-iam-policy-binding "$TASKS_QUEUE" --location="$TASKS_LOCATION" \
    --project="$PROJECT" --member="serviceAccount:$RUNTIME_SA" --role="$role"
done

# ---------------------------------------------------------------------------------------------
log "Secrets"
# env var|secret name|required (which function mounts which: FN_SECRETS, shared/functions.py)
SECRETS=(
  "SUPABASE_SERVICE_ROLE_KEY|supabase-service-role-key|required"
  "GEMINI_API_KEY|gemini-api-key|optional"
  "SUPABASE_JWT_SECRET|supabase-jwt-secret|optional"
  "BFF_SHARED_SECRET|bff-shared-secret|optional"
  "PROCESSOR_SHARED_SECRET|processor-shared-secret|optional"
)
declare -A MOUNTS=()  # function name -> comma list for --set-secrets
for spec in "${SECRETS[@]}"; do
  IFS='|' read -r env_name secret required <<<"$spec"
  value=${!env_name:-}
  present=false
  if exists gcloud secrets describe "$secret" --project="$PROJECT"; then
    present=true
    if [[ -z "$value" ]]; then
      echo "secret $secret: $env_name not set, keeping the stored version"
    elif [[ "$(gcloud secrets versions access latest --secret="$secret" --project="$PROJECT" 2>/dev/null || true)" == "$value" ]]; then
      echo "secret $secret: unchanged"
    else
      run_with_secret "$value" gcloud secrets versions add "$secret" --data-file=- --project="$PROJECT"
    fi
  elif [[ -n "$value" ]]; then
    run_with_secret "$value" gcloud secrets create "$secret" --replication-policy=automatic \
      --data-file=- --project="$PROJECT"
    present=true
  elif [[ "$required" == required ]]; then
    $DRY_RUN || die "$env_name is not set and secret $secret does not exist yet"
    echo "# dry-run: $env_name is not set; a real run needs it (or an existing secret $secret)"
    present=true
  else
    echo "secret $secret: $env_name not set, not stored and not mounted"
  fi
  $present || continue
  # Read access to this secret only, not to the project's secrets.
  run gcloud secrets add-iam-policy-binding "$secret" --project="$PROJECT" \
    --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor --condition=None
  for fn in "${FUNCTIONS[@]}"; do
    [[ " ${FN_SECRETS[$fn]} " == *" $env_name "* ]] || continue
    MOUNTS[$fn]="${MOUNTS[$fn]:+${MOUNTS[$fn]},}${env_name}=${secret}:latest"
  done
done
HAS_SHARED_SECRET=false
if [[ "${MOUNTS[$REAPER]:-}" == *PROCESSOR_SHARED_SECRET=* ]]; then HAS_SHARED_SECRET=true; fi

# ---------------------------------------------------------------------------------------------
log "Supabase migrations (infra/supabase/migrations)"
# Before the functions: every migration keeps what the running release calls working (a SQL
# function whose arguments or answer change gets a new name, and the old one stays for the
# instances still running the previous release), so the code deployed next always finds the
# functions it calls and the running code keeps its own.
if $SKIP_MIGRATIONS; then
  echo "skipped: --skip-migrations"
elif [[ -z "$SUPABASE_DB_URL" ]]; then
  echo "skipped: SUPABASE_DB_URL is not set (Supabase dashboard → Connect → connection string)"
else
  # --workdir is the folder that holds supabase/ (config.toml, migrations/).
  run supabase db push --db-url "$SUPABASE_DB_URL" --workdir infra --yes
fi

# ---------------------------------------------------------------------------------------------
# stage NAME: build/deploy/NAME/ = functions/NAME/main.py + shared/ + requirements.txt
stage() {
  local name=$1 dest="$BUILD_DIR/$1"
  [[ -f "functions/$name/main.py" ]] || die "functions/$name/main.py is missing"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "functions/$name/main.py" "$dest/main.py"
  cp -R shared "$dest/shared"
  find "$dest/shared" -name __pycache__ -type d -prune -exec rm -rf {} +
  find "$dest/shared" -name '*.pyc' -delete
  cp requirements.txt "$dest/requirements.txt"
  # the console's built page (make console); no other function has a static/ folder
  if [[ -d "functions/$name/static" ]]; then cp -R "functions/$name/static" "$dest/static"; fi
  echo "staged $dest (main.py, shared/, requirements.txt)"
}

# write_env NAME PROCESSOR_URL REAPER_URL CONCURRENCY: the function's non-secret settings as a
# YAML file (--env-vars-file: no comma escaping, so ALLOWED_ORIGINS can be a comma list).
write_env() {
  local name=$1 file="$BUILD_DIR/$1.env.yaml" var
  {
    echo "# written by deploy.sh for $name; secrets are mounted from Secret Manager, not here"
    # functions_framework's gunicorn thread pool, one thread per concurrent request
    echo "THREADS: $(yaml_quote "$4")"
    local own="SUPABASE_URL GCP_PROJECT FUNCTION_REGION TASKS_LOCATION TASKS_QUEUE
      TASKS_INVOKER_SA PROCESSOR_URL PROCESSOR_VERIFY_OIDC PUBLIC_BASE_URL REAPER_URL"
    for var in $own; do
      case "$var" in
        GCP_PROJECT) echo "$var: $(yaml_quote "$PROJECT")" ;;
        FUNCTION_REGION) echo "$var: $(yaml_quote "$REGION")" ;;
        TASKS_INVOKER_SA) echo "$var: $(yaml_quote "$INVOKER_SA")" ;;
        PROCESSOR_URL) echo "$var: $(yaml_quote "$2")" ;;
        REAPER_URL) if [[ "$name" == "$REAPER" ]]; then echo "$var: $(yaml_quote "$3")"; fi ;;
        *) echo "$var: $(yaml_quote "${!var}")" ;;
      esac
    done
    # every other non-secret setting the environment sets (SETTINGS_GIVEN, shared/settings.py)
    for var in $SETTINGS_GIVEN; do
      [[ " $own " == *[[:space:]]"$var"[[:space:]]* ]] || echo "$var: $(yaml_quote "${!var}")"
    done
  } >"$file"
  ENV_FILE=$file
}

# deploy NAME PROCESSOR_URL REAPER_URL: with its entry point, access and size from the table.
# functions_framework's gunicorn runs THREADS threads (default 4 per CPU), which write_env
# sets to the concurrency, as the Cloud Functions concurrency page recommends.
deploy() {
  local name=$1 concurrency=${FN_CONCURRENCY[$1]}
  write_env "$name" "$2" "$3" "$concurrency"
  local cmd=(gcloud functions deploy "$name" --gen2 --region="$REGION" --project="$PROJECT"
    --runtime="$FUNCTION_RUNTIME" --source="$BUILD_DIR/$name" --entry-point="${FN_ENTRY[$name]}"
    --trigger-http)
  if [[ "${FN_ACCESS[$name]}" == public ]]; then
    cmd+=(--allow-unauthenticated)
  else
    cmd+=(--no-allow-unauthenticated)
  fi
  cmd+=(--memory="${FN_MEMORY[$name]}" --cpu="${FN_CPU[$name]}" --concurrency="$concurrency"
    --timeout="${FN_TIMEOUT_S[$name]}s" --max-instances="${FN_MAX_INSTANCES[$name]}"
    --min-instances="${FN_MIN_INSTANCES[$name]}"
    --service-account="$RUNTIME_SA" --env-vars-file="$ENV_FILE")
  # the console mounts no secret (it serves only public values)
  if [[ -n "${MOUNTS[$name]:-}" ]]; then cmd+=(--set-secrets="${MOUNTS[$name]}"); fi
  if [[ -n "$BUILD_SERVICE_ACCOUNT" ]]; then
    cmd+=(--build-service-account="$BUILD_SERVICE_ACCOUNT")
  fi
  run "${cmd[@]}"
}

# deploy_self_addressed NAME OVERRIDE: for the processor and the reaper, which
# check the OIDC audience against their own URL. That URL (serviceConfig.uri, the run.app URL
# Cloud Run accepts as audience) exists only after the first deploy, so on the very first run
# the function is deployed once more with the URL it got. Sets SELF_URL.
deploy_self_addressed() {
  local name=$1 override=$2 before
  if [[ -n "$override" ]]; then
    before=$override
  else
    function_url "$name"
    before=${URL:-https://${REGION}-${PROJECT}.cloudfunctions.net/$name}
  fi
  if [[ "$name" == "$PROCESSOR" ]]; then
    deploy "$name" "$before" ""
  else
    deploy "$name" "$PROCESSOR_URL_RESOLVED" "$before"
  fi
  SELF_URL=$before
  if [[ -n "$override" ]]; then return 0; fi
  function_url "$name"
  if [[ -n "$URL" && "$URL" != "$before" ]]; then
    log "$name: first deploy, its URL is now known ($URL); deploying again with it"
    SELF_URL=$URL
    if [[ "$name" == "$PROCESSOR" ]]; then
      deploy "$name" "$URL" ""
    else
      deploy "$name" "$PROCESSOR_URL_RESOLVED" "$URL"
    fi
  fi
}

log "Staging and deploying functions ($REGION)"
mkdir -p "$BUILD_DIR"
PROCESSOR_URL_RESOLVED=""
REAPER_URL_RESOLVED=""
if [[ -z "${SELECTED[$PROCESSOR]:-}" ]]; then
  if [[ -n "$PROCESSOR_URL_OVERRIDE" ]]; then
    PROCESSOR_URL_RESOLVED=$PROCESSOR_URL_OVERRIDE
  else
    function_url "$PROCESSOR"
    PROCESSOR_URL_RESOLVED=$URL
    [[ -n "$PROCESSOR_URL_RESOLVED" ]] \
      || die "$PROCESSOR is not deployed yet: deploy it first (drop --only) or set PROCESSOR_URL"
  fi
fi
for name in "${FUNCTIONS[@]}"; do
  [[ -n "${SELECTED[$name]:-}" ]] || continue
  stage "$name"
  case "$name" in
    "$PROCESSOR")
      deploy_self_addressed "$name" "$PROCESSOR_URL_OVERRIDE"
      PROCESSOR_URL_RESOLVED=$SELF_URL
      ;;
    "$REAPER")
      deploy_self_addressed "$name" "$REAPER_URL_OVERRIDE"
      REAPER_URL_RESOLVED=$SELF_URL
      ;;
    *) deploy "$name" "$PROCESSOR_URL_RESOLVED" "" ;;
  esac
  if [[ "${FN_ACCESS[$name]}" == private ]]; then
    # roles/run.invoker on this function's Cloud Run service only, for the invoker account.
    run gcloud functions add-invoker-policy-binding "$name" --region="$REGION" \
      --project="$PROJECT" --member="serviceAccount:$INVOKER_SA"
  fi
done

# ---------------------------------------------------------------------------------------------
if [[ -n "${SELECTED[$REAPER]:-}" ]]; then
  log "Cloud Scheduler job $REAPER ($REAP_SCHEDULE, $REAP_TIME_ZONE)"
  job_flags=(
    --location="$SCHEDULER_LOCATION" --project="$PROJECT"
    --schedule="$REAP_SCHEDULE" --time-zone="$REAP_TIME_ZONE"
    --uri="$REAPER_URL_RESOLVED" --http-method=POST
    --oidc-service-account-email="$INVOKER_SA" --oidc-token-audience="$REAPER_URL_RESOLVED"
    --attempt-deadline="$REAP_ATTEMPT_DEADLINE"
  )
  headers_flag=--headers
  if exists gcloud scheduler jobs describe "$REAPER" --location="$SCHEDULER_LOCATION" --project="$PROJECT"; then
    verb=update
    headers_flag=--update-headers
  else
    verb=create
  fi
  if $HAS_SHARED_SECRET && $DRY_RUN; then
    job_flags+=("--flags-file=<private temp file>")
  elif $HAS_SHARED_SECRET; then
    # The reaper checks the shared secret header too. It goes in a private flags file, so the
    # value is not on the command line.
    flags_file=$(mktemp)
    trap 'rm -f "$flags_file"' EXIT
    chmod 600 "$flags_file"
    shared_secret=${PROCESSOR_SHARED_SECRET:-}
    if [[ -z "$shared_secret" ]]; then
      shared_secret=$(gcloud secrets versions access latest --secret=processor-shared-secret \
        --project="$PROJECT")
    fi
    printf -- '%s:\n  X-AI-Jobs-Secret: %s\n' "$headers_flag" "$(yaml_quote "$shared_secret")" \
      >"$flags_file"
    job_flags+=(--flags-file="$flags_file")
  fi
  run gcloud scheduler jobs "$verb" http "$REAPER" "${job_flags[@]}"
  if $HAS_SHARED_SECRET; then
    echo "# the flags file holds $headers_flag X-AI-Jobs-Secret=<redacted>"
  fi
fi

# ---------------------------------------------------------------------------------------------
log "Function URLs"
for name in "${FUNCTIONS[@]}"; do
  [[ -n "${SELECTED[$name]:-}" ]] || continue
  function_url "$name"
  printf '%-16s %s\n' "$name" "${URL:-(not found)}"
done
echo "Clients use PUBLIC_BASE_URL: $PUBLIC_BASE_URL (each function at $PUBLIC_BASE_URL/<name>)"
