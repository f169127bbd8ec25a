"""supabase-js installed from the lock file (the server: ``supabase_server``, tests/conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def js_installed() -> Path:
    """supabase-js from npm, exactly as package-lock.json pins it (``make js`` does the same)."""
    if not (JS_DIR / "node_modules" / "@supabase" / "supabase-js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)
    return JS_DIR
