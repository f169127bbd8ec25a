"""A default is written once: changed in ``shared/settings.py`` alone, it changes the app, the
values ``deploy.sh --dry-run`` validates and prints, and the README table check.

The test edits a copy of the repository (never the real one) and runs each consumer there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.test_deploy import run_deploy

REPO = Path(__file__).resolve().parents[2]
COPIED = ("shared", "functions", "deploy.sh", "requirements.txt", "README.md")


def copy_with_lease_default(tmp_path: Path, seconds: int) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    settings = copy / "shared" / "settings.py"
    text, count = re.subn(r'("LEASE_SECONDS",\s*)120,', rf"\g<1>{seconds},", settings.read_text())
    assert count == 1, "LEASE_SECONDS's default is declared exactly once"
    settings.write_text(text)
    return copy


def python_in(copy: Path, code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_a_default_changed_in_its_one_place_changes_every_consumer(tmp_path: Path) -> None:
    copy = copy_with_lease_default(tmp_path, 150)

    app = python_in(
        copy,
        "from shared.settings import Settings; "
        "print(Settings.from_env({'SUPABASE_URL': 'http://x', 'SUPABASE_SERVICE_KEY': 'k'})"
        ".lease_seconds)",
    )
    dry_run = run_deploy(tmp_path, script=copy / "deploy.sh", DEPLOY_PYTHON=sys.executable)
    readme_check = python_in(
        copy,
        "from pathlib import Path; from shared.settings import markdown_table, "
        "readme_with_table; r = Path('README.md').read_text(); "
        "print(*[line for line in readme_with_table(r, markdown_table()).splitlines() "
        "if line not in r.splitlines()], sep=chr(10))",
    )

    assert app == "150"
    assert dry_run.returncode == 0, dry_run.stderr
    assert re.search(r"^LEASE_SECONDS +150  \(default\)$", dry_run.stdout, re.M)
    (changed_row,) = readme_check.splitlines()  # the README test now fails, on this row only
    assert changed_row.startswith("| `LEASE_SECONDS` | `150` |")
