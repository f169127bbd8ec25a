"""The console's key handling (``console/src/jobs.js``) against the Auth stand-in, in Node as
the module runs in a page: it sends the visitor's current access token, and once the client
has dropped its session (signed out, refresh refused) it never sends that token again — the
API would refuse it — but signs in afresh.

The functions' side is a recording ``fetch`` (the module's own ``fetch`` option): what is
checked is which token the module sends; who each token names is then read by the functions'
own rule (``shared.identity.verified_user``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.local.stack import LOCAL_JWT_SECRET
from shared.identity import verified_user
from shared.settings import Settings
from tests.support import LocalSupabase

CONSOLE = Path(__file__).resolve().parents[2] / "console"
SCRIPT = """
const m = await import(process.argv[1]);
const { createClient } = await import('@supabase/supabase-js');
const [url, anonKey] = [process.argv[2], process.argv[3]];
const sent = [];
const fetch = async (address, init) => {
  sent.push(init.headers.Authorization || null);
  return new Response(JSON.stringify({ jobs: [], nextCursor: null }), {
    status: 200, headers: { 'Content-Type': 'application/json' },
  });
};
// Node 20 has no WebSocket; nothing here subscribes, so the socket is never opened
const supabase = createClient(url, anonKey, {
  auth: { persistSession: false }, realtime: { transport: class NoSocket {} },
});
m.configure({ baseUrl: 'http://functions.invalid', supabaseUrl: url, supabaseAnonKey: anonKey,
  supabase, fetch });
await m.listJobs();
await m.listJobs();
const first = (await supabase.auth.getSession()).data.session.user.id;
await supabase.auth.signOut();
await m.listJobs();
const second = (await supabase.auth.getSession()).data.session.user.id;
console.log(JSON.stringify({ sent, first, second }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by make console-deps")
def test_the_console_sends_the_current_token_and_signs_in_again_after_its_session_ends(
    supabase_server: LocalSupabase,
) -> None:
    if not (CONSOLE / "node_modules" / "@supabase" / "supabase-js").exists():
        pytest.fail("console/node_modules is missing: run `make console-deps`")

    run = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            SCRIPT,
            str(CONSOLE / "src" / "jobs.js"),
            supabase_server.url,
            supabase_server.anon_key,
        ],
        cwd=CONSOLE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    settings = Settings(
        supabase_url=supabase_server.url,
        supabase_service_key=supabase_server.service_key,
        supabase_jwt_secret=LOCAL_JWT_SECRET,
    )
    assert all(header and header.startswith("Bearer ") for header in out["sent"])
    users = [verified_user(header[7:], settings) for header in out["sent"]]
    assert users == [out["first"], out["first"], out["second"]]
    assert out["second"] != out["first"], "a new anonymous sign-in, not the dropped token"
