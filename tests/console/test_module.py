"""``console/src/jobs.js`` outside the page: Node imports it as it is (no bundler, no DOM, no
framework), as a Next.js server or client module would, and follows a job to its end against
the local stack."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from infra.local import fake_gemini
from infra.local.stack import LocalStack
from tests.console.pages import slow_answer
from tests.support import REPO_ROOT

MODULE = REPO_ROOT / "console" / "src" / "jobs.js"
SCRIPT = """
const m = await import(process.argv[1]);
m.configure({ baseUrl: process.argv[2] });
const simple = await m.createJob({ query: '서버 상태 알려줘' });
const job = await m.createJob({
  query: '모든 서버 분석하고 최적화 리포트 만들어줘', priority: 'high',
});
const progress = [];
const logs = [];
const done = await new Promise((resolve) => m.watchJob(job.jobId, {
  onProgress: (j) => progress.push(j.progress), onLog: (l) => logs.push(l.message), onDone: resolve,
}));
const page = await m.listJobs({ status: 'completed', type: 'report', limit: 1 });
let invalid = null;
try { await m.createJob({ query: '   ' }); } catch (e) {
  invalid = { name: e.name, status: e.status, code: e.code, fields: e.fields };
}
let unreachable = null;
m.configure({ baseUrl: 'http://127.0.0.1:9' });
try { await m.listJobs(); } catch (e) { unreachable = e.name; }
console.log(JSON.stringify({ simple: simple.mode, job: job.mode, status: done.status,
  series: done.result.series.length, progress, logs, listed: page.jobs[0].jobId === job.jobId,
  invalid, unreachable }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by make console-deps")
def test_node_imports_the_module_as_is_and_follows_a_job_to_its_end(
    stack: LocalStack, fake: fake_gemini.FakeGemini
) -> None:
    fake.push(slow_answer(1))

    run = subprocess.run(
        ["node", "--input-type=module", "-e", SCRIPT, str(MODULE), stack.base_url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert (out["simple"], out["job"], out["status"]) == ("sync", "job", "completed")
    assert out["series"] >= 4 and out["listed"] is True
    assert out["progress"] == sorted(out["progress"]) and out["progress"][-1] == 100
    assert [m for m in out["logs"] if m in {"작업 시작", "AI 분석 중", "완료"}] == [
        "작업 시작",
        "AI 분석 중",
        "완료",
    ]
    assert out["invalid"] == {
        "name": "ApiError",
        "status": 400,
        "code": "validation_failed",
        "fields": ["query"],
    }
    assert out["unreachable"] == "NetworkError"
