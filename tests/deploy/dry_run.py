"""Running deploy.sh as its tests do: a dry run with fake ``gcloud`` and ``supabase`` first on
PATH that record any call, the secrets and project it is given, and its output read back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy.sh"
BASH = shutil.which("bash") or "/bin/bash"
PROJECT = "demo-proj"
SECRET_VALUES = {
    "SUPABASE_SERVICE_ROLE_KEY": "sk-test-service-role-5f1a",
    "GEMINI_API_KEY": "gm-test-key-9c2e",
    "SUPABASE_JWT_SECRET": "jwt-test-secret-77d0",
    "BFF_SHARED_SECRET": "bff-test-secret-31c5",
    "PROCESSOR_SHARED_SECRET": "shared-test-secret-31b4",
}
DB_PASSWORD = "db-test-password-e8a2"
FAKE_TOOL = '#!/bin/sh\necho "$0 $*" >> "{marker}"\nexit 97\n'


def run_deploy(
    tmp_path: Path,
    *args: str,
    dry_run: bool = True,
    script: Path = SCRIPT,
    **env_overrides: str | None,
) -> subprocess.CompletedProcess[str]:
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    for tool in ("gcloud", "supabase"):
        fake = fake_bin / tool
        fake.write_text(FAKE_TOOL.format(marker=tmp_path / "tool-calls.log"))
        fake.chmod(0o755)
    env: dict[str, str | None] = {
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "GCP_PROJECT": PROJECT,
        "SUPABASE_URL": "https://abcd.supabase.co",
        "DEPLOY_BUILD_DIR": str(tmp_path / "build"),
        "SUPABASE_DB_URL": f"postgresql://postgres:{DB_PASSWORD}@db.abcd.supabase.co:5432/postgres",
        "ALLOWED_ORIGINS": "https://app.example,https://admin.example",
        **SECRET_VALUES,
    }
    env.update(env_overrides)
    flags = ["--dry-run"] if dry_run else []
    return subprocess.run(
        [BASH, str(script), *flags, *args],
        env={k: v for k, v in env.items() if v is not None},
        cwd=tmp_path,  # the script must find the repository on its own
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def deploy_lines(stdout: str) -> dict[str, str]:
    found = {}
    for cmd in commands(stdout):
        if cmd.startswith("gcloud functions deploy "):
            found[cmd.split()[3]] = cmd
    return found
