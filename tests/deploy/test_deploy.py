"""deploy.sh, checked through ``--dry-run`` (there is no gcloud, project or network in CI).

Every run puts fake ``gcloud`` and ``supabase`` first on PATH that record any call, so a dry run
that ran a cloud command instead of printing it fails the test. Staging is real in a dry run and
goes to a temporary ``DEPLOY_BUILD_DIR``; it is compared with the repository's own files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shared.functions import (
    CONSOLE,
    CREATE,
    FUNCTIONS,
    GET,
    PROCESS,
    REAP,
    SMALL,
    WORKER,
    Function,
    deployed,
    size_variables,
)
from shared.settings import AISettings, ConsoleSettings, DeploySettings, Settings, declared
from tests.deploy.dry_run import (
    DB_PASSWORD,
    PROJECT,
    REPO,
    SCRIPT,
    SECRET_VALUES,
    commands,
    deploy_lines,
    run_deploy,
)

REGION = "asia-northeast1"
RUNTIME_SA = f"ai-jobs-runtime@{PROJECT}.iam.gserviceaccount.com"
INVOKER_SA = f"ai-jobs-invoker@{PROJECT}.iam.gserviceaccount.com"
NAMES = [f.name for f in FUNCTIONS]  # deploy order: the processor first
PRIVATE = {f.name for f in FUNCTIONS if f.access == "private"}
APIS = [
    "cloudfunctions",
    "run",
    "cloudbuild",
    "artifactregistry",
    "cloudtasks",
    "cloudscheduler",
    "secretmanager",
    "logging",
    "iam",
]
# What the functions read and deploy.sh decides: every variable the settings module declares.
FUNCTION_SETTINGS = [
    name
    for cls in (Settings, AISettings, DeploySettings, ConsoleSettings)
    for _, name, _ in declared(cls)
]


def first_index(lines: list[str], *needles: str) -> int:
    for i, line in enumerate(lines):
        if all(needle in line for needle in needles):
            return i
    raise AssertionError(f"no line contains {needles}")


def url_line(lines: list[str], function: Function) -> int:
    pattern = re.compile(rf"{function.name}\s+{re.escape(placeholder_url(function))}")
    return next(i for i, line in enumerate(lines) if pattern.fullmatch(line))


def placeholder_url(function: Function) -> str:
    return function.url(f"https://{REGION}-{PROJECT}.cloudfunctions.net")


def test_dry_run_prints_every_step_in_order_and_runs_nothing(tmp_path: Path) -> None:
    result = run_deploy(tmp_path)

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "tool-calls.log").exists()  # no gcloud/supabase was executed
    lines = result.stdout.splitlines()
    steps = [
        first_index(lines, "+ gcloud services enable", *[f"{api}.googleapis.com" for api in APIS]),
        first_index(lines, "+ gcloud iam service-accounts create ai-jobs-runtime"),
        first_index(lines, "+ gcloud iam service-accounts create ai-jobs-invoker"),
        first_index(
            lines, "+ gcloud projects add-iam-policy-binding", RUNTIME_SA, "roles/logging.logWriter"
        ),
        first_index(
            lines,
            f"+ gcloud iam service-accounts add-iam-policy-binding {INVOKER_SA}",
            f"--member=serviceAccount:{RUNTIME_SA}",
            "--role=roles/iam.serviceAccountUser",
        ),
        first_index(lines, "+ gcloud tasks queues create ai-jobs", f"--location={REGION}"),
        first_index(lines, "+ gcloud tasks queues add-iam-policy-binding", "cloudtasks.enqueuer"),
        first_index(lines, "+ gcloud tasks queues add-iam-policy-binding", "taskDeleter"),
        first_index(lines, "+ gcloud secrets create supabase-service-role-key"),
        first_index(lines, "+ gcloud secrets create gemini-api-key"),
        first_index(lines, "+ supabase db push"),  # backward compatible: before the code
        *[first_index(lines, f"+ gcloud functions deploy {name} ") for name in NAMES],
        first_index(lines, f"+ gcloud scheduler jobs create http {REAP.name}"),
        *[url_line(lines, function) for function in FUNCTIONS],
    ]
    assert steps == sorted(steps)
    assert len(set(steps)) == len(steps)


def test_queue_has_every_retry_setting_with_defaults_and_overrides(tmp_path: Path) -> None:
    defaults = run_deploy(tmp_path)
    custom = run_deploy(tmp_path, QUEUE_MAX_ATTEMPTS="7", QUEUE_MIN_BACKOFF="2s", TASKS_QUEUE="q")

    (queue,) = [c for c in commands(defaults.stdout) if c.startswith("gcloud tasks queues create")]
    for flag in (
        "--max-attempts=5",
        "--min-backoff=10s",
        "--max-backoff=300s",
        "--max-doublings=4",
        "--max-concurrent-dispatches=10",
        "--max-dispatches-per-second=5",
        f"--location={REGION}",
        f"--project={PROJECT}",
    ):
        assert flag in queue.split()
    assert "gcloud tasks queues create q " in custom.stdout
    assert "--max-attempts=7" in custom.stdout
    assert "--min-backoff=2s" in custom.stdout


def expected_flags(env: dict[str, str]) -> dict[str, set[str]]:
    """Each function's gcloud flags as the table of functions sizes it in this environment
    (the processor's timeout: the PROCESSOR_TIMEOUT_S setting, resolved by shared/settings.py)."""
    timeout = DeploySettings.from_env(
        {"SUPABASE_URL": "https://abcd.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k", **env}
    ).processor_timeout_s
    out = {}
    for row in deployed({**env, "PROCESSOR_TIMEOUT_S": str(timeout)}):
        size, fn = row.size, row.function
        out[fn.name] = {
            f"--entry-point={fn.entry_point}",
            "--allow-unauthenticated" if fn.access == "public" else "--no-allow-unauthenticated",
            f"--memory={size.memory}",
            f"--cpu={size.cpu}",
            f"--concurrency={size.concurrency}",
            f"--timeout={size.timeout_s}s",
            f"--max-instances={size.max_instances}",
            f"--min-instances={size.min_instances}",
        }
    return out


def mounted(cmd: str) -> list[str]:
    """The variables a deploy command mounts from Secret Manager."""
    flag = next((a for a in cmd.split() if a.startswith("--set-secrets=")), "--set-secrets=")
    return [pair.split("=")[0] for pair in flag.removeprefix("--set-secrets=").split(",") if pair]


def test_each_function_is_deployed_as_the_table_of_functions_says(tmp_path: Path) -> None:
    result = run_deploy(tmp_path)

    deployed_cmds = deploy_lines(result.stdout)
    assert list(deployed_cmds) == NAMES  # processor first: the others need its URL
    expected = expected_flags({})
    for function in FUNCTIONS:
        cmd = deployed_cmds[function.name]
        args = cmd.split()
        assert f"--gen2 --region={REGION}" in cmd
        assert expected[function.name] <= set(args), cmd
        opposite = "--allow" if function.access == "private" else "--no-allow"
        assert f"{opposite}-unauthenticated" not in args
        assert "--runtime=python313" in args
        assert "--trigger-http" in args
        assert f"--source={tmp_path / 'build' / function.name}" in args
        assert f"--service-account={RUNTIME_SA}" in args
        assert f"--env-vars-file={tmp_path / 'build' / function.name}.env.yaml" in args
        # every secret is given here, so each function mounts exactly its own, in order
        assert mounted(cmd) == list(function.secrets)
        # functions_framework's gunicorn serves as many requests at once as it has threads
        env_file = (tmp_path / "build" / f"{function.name}.env.yaml").read_text()
        assert f'THREADS: "{function.size.concurrency}"' in env_file
    assert not CONSOLE.secrets  # the public console serves only public values


def test_size_variables_override_the_table(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {
        "PROCESSOR_MEMORY": "2Gi",
        "FUNCTION_CONCURRENCY": "8",
        "FUNCTION_MAX_INSTANCES": "3",
        CREATE.min_instances_variable or "": "1",
    }
    result = run_deploy(tmp_path, **overrides)

    assert result.returncode == 0, result.stderr
    deployed_cmds = deploy_lines(result.stdout)
    for name, flags in expected_flags(overrides).items():
        assert flags <= set(deployed_cmds[name].split()), deployed_cmds[name]
    assert "--memory=2Gi" in deployed_cmds[PROCESS.name].split()
    assert "--min-instances=1" in deployed_cmds[CREATE.name].split()
    assert "--min-instances=1" not in deployed_cmds[GET.name].split()


def test_concurrency_without_a_whole_vcpu_is_refused(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, FUNCTION_CPU="0.5", FUNCTION_CONCURRENCY="8")
    assert result.returncode != 0
    assert "FUNCTION_CONCURRENCY (8) > 1 needs FUNCTION_CPU >= 1" in result.stderr
    one_at_a_time = run_deploy(tmp_path, FUNCTION_CPU="0.5", FUNCTION_CONCURRENCY="1")
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr
    assert "PROCESSOR_CONCURRENCY" in run_deploy(tmp_path, PROCESSOR_CONCURRENCY="0").stderr


def test_invoker_may_call_only_the_private_functions(tmp_path: Path) -> None:
    result = run_deploy(tmp_path)

    bindings = [c for c in commands(result.stdout) if "add-invoker-policy-binding" in c]
    assert sorted(c.split()[3] for c in bindings) == sorted(PRIVATE)
    for cmd in bindings:
        assert f"--member=serviceAccount:{INVOKER_SA}" in cmd.split()
        assert f"--region={REGION}" in cmd.split()
    roles = [c for c in commands(result.stdout) if "--role=" in c]
    assert not any("run.invoker" in c or "roles/owner" in c or "roles/editor" in c for c in roles)
    accessor = [c for c in roles if "secretmanager.secretAccessor" in c]
    assert accessor
    assert all(c.startswith("gcloud secrets add-iam-policy-binding") for c in accessor)


def test_secret_values_never_appear(tmp_path: Path) -> None:
    result = run_deploy(tmp_path)

    output = result.stdout + result.stderr
    for value in [*SECRET_VALUES.values(), DB_PASSWORD]:
        assert value not in output
        for staged in (tmp_path / "build").rglob("*"):
            if staged.is_file():
                assert value not in staged.read_text(errors="replace"), staged
    creates = [c for c in commands(result.stdout) if c.startswith("gcloud secrets create")]
    assert len(creates) == 5  # every secret was given a value
    assert all("--data-file=-" in c.split() and c.endswith(" <<< <redacted>") for c in creates)
    assert "supabase db push --db-url postgresql://postgres:<redacted>@" in result.stdout
    # The reaper checks the shared secret: the Scheduler gets it through a flags file.
    (job,) = [c for c in commands(result.stdout) if c.startswith("gcloud scheduler jobs")]
    assert "--flags-file=" in job


def test_optional_secrets_are_neither_stored_nor_mounted_when_unset(tmp_path: Path) -> None:
    result = run_deploy(
        tmp_path,
        GEMINI_API_KEY=None,
        SUPABASE_JWT_SECRET=None,
        BFF_SHARED_SECRET=None,
        PROCESSOR_SHARED_SECRET=None,
    )

    assert result.returncode == 0, result.stderr
    assert "gcloud secrets create supabase-service-role-key" in result.stdout
    for secret in (
        "gemini-api-key",
        "supabase-jwt-secret",
        "bff-shared-secret",
        "processor-shared-secret",
    ):
        assert f"+ gcloud secrets create {secret}" not in result.stdout
        assert f"{secret}:latest" not in result.stdout
    assert "--flags-file" not in result.stdout


def test_every_create_is_guarded_by_a_describe_probe(tmp_path: Path) -> None:
    lines = run_deploy(tmp_path).stdout.splitlines()

    creates = [
        i
        for i, line in enumerate(lines)
        if re.match(
            r"\+ gcloud (iam service-accounts|tasks queues|secrets|scheduler jobs) create", line
        )
    ]
    assert len(creates) == 2 + 1 + 5 + 1  # accounts, queue, secrets, scheduler job
    for i in creates:
        probe = lines[i - 1]
        assert probe.startswith("# probe (dry-run: not run, assuming absent): gcloud ")
        assert " describe " in probe


def test_scheduler_calls_the_reaper_with_an_oidc_token(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, REAP_SCHEDULE="*/10 * * * *")

    (job,) = [c for c in commands(result.stdout) if c.startswith("gcloud scheduler jobs")]
    reaper = placeholder_url(REAP)
    assert job.startswith(f"gcloud scheduler jobs create http {REAP.name} ")
    assert "'--schedule=*/10 * * * *'" in job
    for flag in (
        f"--location={REGION}",
        "--time-zone=Asia/Seoul",
        f"--uri={reaper}",
        "--http-method=POST",
        f"--oidc-service-account-email={INVOKER_SA}",
        f"--oidc-token-audience={reaper}",
    ):
        assert flag in job.split()


def test_migrations_run_with_the_supabase_cli_or_are_skipped(tmp_path: Path) -> None:
    applied = run_deploy(tmp_path)
    skipped_flag = run_deploy(tmp_path, "--skip-migrations")
    skipped_unset = run_deploy(tmp_path, SUPABASE_DB_URL=None)

    run = commands(applied.stdout)
    (push,) = [c for c in run if c.startswith("supabase")]
    assert push.startswith("supabase db push --db-url postgresql://")
    # before any function: migrations keep the running code working, new code needs them
    first_deploy = next(i for i, c in enumerate(run) if c.startswith("gcloud functions deploy"))
    assert run.index(push) < first_deploy
    assert "--workdir infra" in push  # the folder holding supabase/config.toml and migrations/
    assert (REPO / "infra" / "supabase" / "config.toml").is_file()
    assert list((REPO / "infra" / "supabase" / "migrations").glob("*.sql"))
    for result in (skipped_flag, skipped_unset):
        assert result.returncode == 0, result.stderr
        assert "supabase db push" not in result.stdout
        assert "skipped" in result.stdout


def test_staging_copies_main_shared_and_requirements(tmp_path: Path) -> None:
    result = run_deploy(tmp_path)

    assert result.returncode == 0, result.stderr
    repo_shared = sorted(
        p.relative_to(REPO / "shared")
        for p in (REPO / "shared").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    for function in FUNCTIONS:
        name = function.name
        staged = tmp_path / "build" / name
        assert (staged / "main.py").read_bytes() == function.source(REPO).read_bytes()
        assert (staged / "requirements.txt").read_bytes() == (
            REPO / "requirements.txt"
        ).read_bytes()
        staged_shared = sorted(
            p.relative_to(staged / "shared") for p in (staged / "shared").rglob("*") if p.is_file()
        )
        assert staged_shared == repo_shared
        assert not list(staged.rglob("__pycache__"))
        env_file = (tmp_path / "build" / f"{name}.env.yaml").read_text()
        assert 'ALLOWED_ORIGINS: "https://app.example,https://admin.example"' in env_file
        assert f'PROCESSOR_URL: "{placeholder_url(PROCESS)}"' in env_file
        assert f'TASKS_INVOKER_SA: "{INVOKER_SA}"' in env_file
        assert 'PROCESSOR_VERIFY_OIDC: "true"' in env_file
        assert ("REAPER_URL:" in env_file) == (function is REAP)
    console_static = tmp_path / "build" / CONSOLE.name / "static"
    assert (console_static / "index.html").is_file() and (console_static / "app.js").is_file()


def test_missing_project_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, GCP_PROJECT=None)

    assert result.returncode != 0
    assert "GCP_PROJECT" in result.stderr
    assert "+ gcloud" not in result.stdout


def test_project_and_region_flags_override_the_environment(tmp_path: Path) -> None:
    result = run_deploy(
        tmp_path, "--project", "other-proj", "--region=europe-west1", GCP_PROJECT=None
    )

    assert result.returncode == 0, result.stderr
    for cmd in deploy_lines(result.stdout).values():
        assert "--gen2 --region=europe-west1 --project=other-proj" in cmd


def test_missing_supabase_url_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, SUPABASE_URL=None)

    assert result.returncode != 0
    assert "SUPABASE_URL" in result.stderr


def test_only_deploys_just_that_function(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, "--only", GET.name)

    assert result.returncode == 0, result.stderr
    assert list(deploy_lines(result.stdout)) == [GET.name]
    assert sorted(p.name for p in (tmp_path / "build").iterdir() if p.is_dir()) == [GET.name]
    assert "gcloud scheduler jobs" not in result.stdout
    assert "add-invoker-policy-binding" not in result.stdout


def test_only_rejects_an_unknown_function(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, "--only", f"{GET.name},ai-jobs-nope")

    assert result.returncode != 0
    assert "ai-jobs-nope" in result.stderr


def test_inconsistent_settings_are_refused_by_the_settings_module(tmp_path: Path) -> None:
    refused: dict[str, dict[str, Any]] = {
        "JOB_DEADLINE_S": {"JOB_DEADLINE_S": "600"},
        "TASK_DISPATCH_DEADLINE_S": {"PROCESSOR_TIMEOUT_S": "300"},
        "QUEUE_MAX_ATTEMPTS": {"QUEUE_MAX_ATTEMPTS": "2", "MAX_ATTEMPTS": "3"},
        "LEASE_SECONDS": {"LEASE_SECONDS": "10"},
        "MAX_BODY_BYTES": {"MAX_BODY_BYTES": "many"},
    }
    for name, env in refused.items():
        result = run_deploy(tmp_path, **env)

        assert result.returncode != 0, name
        assert f"setting {name} " in result.stderr, result.stderr
        assert "+ gcloud" not in result.stdout


def test_dry_run_prints_the_resolved_settings_with_secrets_masked(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, LEASE_SECONDS="90", GEMINI_MODEL="gemini-x")

    assert result.returncode == 0, result.stderr
    printed = dict(
        line.split(maxsplit=1)
        for line in result.stdout.splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]+ {2,}\S", line)
    )
    assert printed["LEASE_SECONDS"] == "90"
    assert printed["MAX_ATTEMPTS"] == "3  (default)"
    assert printed["PROCESSOR_TIMEOUT_S"] == "540  (default)"
    assert printed["PROCESSOR_VERIFY_OIDC"] == "true"
    assert printed["SUPABASE_SERVICE_ROLE_KEY"] == "<set, masked>"
    assert set(FUNCTION_SETTINGS) <= set(printed)
    env_file = (tmp_path / "build" / f"{GET.name}.env.yaml").read_text()
    assert 'LEASE_SECONDS: "90"' in env_file  # given: written
    assert 'GEMINI_MODEL: "gemini-x"' in env_file
    assert "MAX_ATTEMPTS" not in env_file  # not given: the deployed code's own default
    assert "SUPABASE_SERVICE_ROLE_KEY" not in env_file  # secrets are mounted, never written


def test_real_run_requires_gcloud(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to("/usr/bin/dirname")

    result = run_deploy(tmp_path, dry_run=False, PATH=str(bin_dir))

    assert result.returncode != 0
    assert "gcloud is not installed" in result.stderr


def test_help_lists_every_flag_and_variable(tmp_path: Path) -> None:
    result = run_deploy(tmp_path, "--help", GCP_PROJECT=None, SUPABASE_URL=None)

    assert result.returncode == 0
    script = SCRIPT.read_text()
    read_by_script = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-?]", script)) - {"URL"}
    sizes = [name for size in (WORKER, SMALL) for name in size_variables(size).values()]
    sizes += [f.min_instances_variable for f in FUNCTIONS if f.min_instances_variable]
    documented = [*read_by_script, *FUNCTION_SETTINGS, *sizes, *NAMES]
    assert len(read_by_script) > 20
    assert len(FUNCTION_SETTINGS) > 40
    for name in documented:
        assert re.search(rf"\b{name}\b", result.stdout), name
    for flag in ("--dry-run", "--project", "--region", "--only", "--skip-migrations", "--help"):
        assert flag in result.stdout
