"""A default is written once: changed in ``shared/settings.py`` alone, it changes the app, the
values ``deploy.sh --dry-run`` validates and prints, and the README table check; a function's
size changed in ``shared/functions.py`` alone changes what deploy.sh deploys and the README's
table of functions.

The test edits a copy of the repository (never the real one) and runs each consumer there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from shared.functions import PROCESS
from tests.deploy.dry_run import deploy_lines, run_deploy

REPO = Path(__file__).resolve().parents[2]
COPIED = ("shared", "functions", "deploy.sh", "requirements.txt", "README.md")


def copy_with_edit(tmp_path: Path, module: str, pattern: str, replacement: str) -> Path:
    """A copy of the repository with ``pattern`` replaced in ``shared/<module>``, where it
    must occur exactly once."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    edited = copy / "shared" / module
    text, count = re.subn(pattern, replacement, edited.read_text())
    assert count == 1, f"{pattern} is declared exactly once"
    edited.write_text(text)
    return copy


def stale_readme_rows(copy: Path, module: str) -> list[str]:
    """The rows of the README's generated table that the copy's ``module`` now prints
    differently (what the README test would report)."""
    return python_in(
        copy,
        f"from pathlib import Path; from shared.{module} import markdown_table, readme_with_table; "
        "r = Path('README.md').read_text(); "
        "print(*[line for line in readme_with_table(r, markdown_table()).splitlines() "
        "if line not in r.splitlines()], sep=chr(10))",
    ).splitlines()


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
    copy = copy_with_edit(tmp_path, "settings.py", r'("LEASE_SECONDS",\s*)120,', r"\g<1>150,")

    app = python_in(
        copy,
        "from shared.settings import Settings; "
        "print(Settings.from_env({'SUPABASE_URL': 'http://x', 'SUPABASE_SERVICE_KEY': 'k'})"
        ".lease_seconds)",
    )
    dry_run = run_deploy(tmp_path, script=copy / "deploy.sh", DEPLOY_PYTHON=sys.executable)
    readme_check = stale_readme_rows(copy, "settings")

    assert app == "150"
    assert dry_run.returncode == 0, dry_run.stderr
    assert re.search(r"^LEASE_SECONDS +150  \(default\)$", dry_run.stdout, re.M)
    (changed_row,) = readme_check  # the README test now fails, on this row only
    assert changed_row.startswith("| `LEASE_SECONDS` | `150` |")


def test_a_size_changed_in_the_table_of_functions_changes_the_deploy_and_readme(
    tmp_path: Path,
) -> None:
    copy = copy_with_edit(tmp_path, "functions.py", r'(Size\("PROCESSOR", )"1Gi"', r'\g<1>"2Gi"')

    dry_run = run_deploy(tmp_path, script=copy / "deploy.sh", DEPLOY_PYTHON=sys.executable)

    assert dry_run.returncode == 0, dry_run.stderr
    processor = deploy_lines(dry_run.stdout)[PROCESS.name].split()
    assert "--memory=2Gi" in processor
    (changed_row,) = stale_readme_rows(copy, "functions")
    assert changed_row == f"| `PROCESSOR_MEMORY` | `2Gi` | `{PROCESS.name}` |"
