"""What each function's instance imports: a cold start pays for every module, so each function
loads only the clients it uses (STYLE.md: heavy clients imported only where needed).

Each case runs in a fresh interpreter, as an instance starts: ``create_app`` (the cold start's
import), then one request (which creates the clients that request needs; nothing listens at
the Supabase URL, so the request fails fast with 503 after the client is built).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.local.host import free_port
from shared.functions import CONSOLE
from shared.functions import ENTRY_POINTS as FUNCTIONS
from tests.support import REPO_ROOT

#: module -> what it stands for; none of them is needed to import any function
HEAVY = {
    "supabase": "the Supabase client",
    "grpc": "gRPC (the Cloud Tasks transport)",
    "google.cloud.tasks_v2": "the Cloud Tasks client",
    "google.genai": "the Gemini client",
    "shared.ai.pipeline": "the AI pipeline",
}
_PROBE = """
import gc, json, sys
import functions_framework
name, target, method, path = sys.argv[1:5]
app = functions_framework.create_app(target, f"functions/{name}/main.py")
heavy = json.loads(sys.argv[5])
at_import = sorted(m for m in heavy if m in sys.modules)
frozen_at_import = gc.get_freeze_count()
status = app.test_client().open(path, method=method).status_code
after_request = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({
    "import": at_import, "request": after_request, "status": status,
    "frozenAtImport": frozen_at_import, "frozenAfterRequest": gc.get_freeze_count(),
}))
"""


#: the request each probe sends after the import (the read functions' real first request)
_FIRST_REQUEST = {
    "ai-jobs-get": "/00000000-0000-0000-0000-000000000001?logs=true",
    "ai-jobs-list": "/",
}


def _probe(name: str) -> dict[str, object]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "SUPABASE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: fails fast
        "SUPABASE_SERVICE_ROLE_KEY": "key",
        "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
        "AI_WRITER": "local",
        # the private functions refuse to start with no way to check their caller
        "PROCESSOR_SHARED_SECRET": "probe-secret",
    }
    path = _FIRST_REQUEST.get(name, "/")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, name, FUNCTIONS[name], "GET", path, json.dumps(list(HEAVY))],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def probes() -> dict[str, dict[str, object]]:
    """One fresh interpreter per function, all at once."""
    with ThreadPoolExecutor(max_workers=len(FUNCTIONS)) as pool:
        return dict(zip(FUNCTIONS, pool.map(_probe, FUNCTIONS), strict=True))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_no_function_imports_a_heavy_client_at_cold_start(
    name: str, probes: dict[str, dict[str, object]]
) -> None:
    assert probes[name]["import"] == []


@pytest.mark.parametrize("name", sorted(_FIRST_REQUEST))
def test_the_read_functions_load_only_the_supabase_client(
    name: str, probes: dict[str, dict[str, object]]
) -> None:
    assert probes[name]["status"] == 503, "the request reached the (absent) database"
    assert probes[name]["request"] == ["supabase"]


#: the console only serves its files (not through shared.http.endpoint): no clients to keep
_FREEZING = [name for name in FUNCTIONS if name != CONSOLE.name]


@pytest.mark.parametrize("name", _FREEZING)
def test_the_first_answer_freezes_what_the_cold_start_made(
    probes: dict[str, dict[str, object]], name: str
) -> None:
    """Objects that live as long as the instance stay out of every later full collection."""
    probe = probes[name]
    assert probe["frozenAtImport"] == 0
    frozen = probe["frozenAfterRequest"]
    assert isinstance(frozen, int) and frozen > 10_000, probe
