"""The table of functions, the only place it is written: each function's name, entry point,
access, instance size and the secrets it mounts, and the one way to build its URL.

Every consumer reads it: the local host (``infra/local/host.py``) serves these functions,
``deploy.sh`` deploys them from ``python -m shared.functions --shell`` (sizes resolved from
the environment and checked here), the stack prints them, ``shared.api`` builds ``pollUrl``
with :meth:`Function.url`, the Python client and the benchmarks their paths with
:meth:`Function.path`, and the tests enumerate them (``tests/deploy/test_manifest.py`` checks
that each has ``functions/<name>/main.py`` defining its entry point, and that the README's
table is this one).

A typed module rather than a TOML file: a name used in code is then an attribute mypy checks
(``GET.url(...)``, not ``"ai-jobs-get"``), and it stays standard library only, so the host,
the client and deploy.sh import it without pydantic or the Google libraries.

    python -m shared.functions --shell      # bash assignments deploy.sh evaluates
    python -m shared.functions --markdown   # the README's table
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

Access = Literal["public", "private"]


@dataclass(frozen=True)
class Size:
    """How Cloud Run sizes a function's instances. Each value is a default that deploy.sh
    takes from ``<prefix>_<FIELD>`` when set (``PROCESSOR_MEMORY=2Gi ./deploy.sh``)."""

    prefix: str
    memory: str
    cpu: str
    #: requests (or, for the processor, jobs) at once per instance; also gunicorn's THREADS
    concurrency: int
    #: None: the setting ``<prefix>_TIMEOUT_S`` declared in shared/settings.py decides it
    timeout_s: int | None
    max_instances: int
    min_instances: int


#: The processor runs one AI job per request, for up to the dispatch deadline; its timeout is
#: PROCESSOR_TIMEOUT_S, declared (and checked against that deadline) in shared/settings.py.
WORKER = Size("PROCESSOR", "1Gi", "1", 4, None, 10, 0)
#: The API functions are I/O-bound (about 1.5-3.5 ms of CPU per request, ``make bench``): one
#: vCPU serves 16 requests at once.
SMALL = Size("FUNCTION", "256Mi", "1", 16, 60, 20, 0)

#: What the public API functions mount (a function's secrets are listed in the order of
#: deploy.sh's SECRETS, which is the order it mounts them in).
_API_SECRETS = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET", "BFF_SHARED_SECRET")


@dataclass(frozen=True)
class Function:
    """One deployed Cloud Function (gen2, HTTP trigger)."""

    name: str
    entry_point: str
    access: Access
    size: Size
    #: the environment variables it gets from Secret Manager (when the secret exists)
    secrets: tuple[str, ...]
    summary: str
    #: a variable that overrides this function's min instances alone (a warm create)
    min_instances_variable: str | None = None

    def path(self, *rest: str) -> str:
        """``/ai-jobs-get/<rest>``: the path under the functions' base URL."""
        return "/".join(("", self.name, *rest))

    def url(self, base_url: str, *rest: str) -> str:
        """The function's URL under ``https://REGION-PROJECT.cloudfunctions.net`` (or the
        local host's base URL): the front routes ``/<name>/<rest>`` to it as ``/<rest>``."""
        return base_url.rstrip("/") + self.path(*rest)

    def source(self, repo_root: Path) -> Path:
        return repo_root / "functions" / self.name / "main.py"


PROCESS = Function(
    "ai-jobs-process",
    "process_job",
    "private",
    WORKER,
    ("SUPABASE_SERVICE_ROLE_KEY", "GEMINI_API_KEY", "PROCESSOR_SHARED_SECRET"),
    "run a job (Cloud Tasks calls it)",
)
CREATE = Function(
    "ai-jobs-create",
    "create_job",
    "public",
    SMALL,
    (
        "SUPABASE_SERVICE_ROLE_KEY",
        "GEMINI_API_KEY",
        "SUPABASE_JWT_SECRET",
        "BFF_SHARED_SECRET",
        "PROCESSOR_SHARED_SECRET",
    ),
    "create a job, or answer a simple query at once",
    min_instances_variable="CREATE_MIN_INSTANCES",
)
GET = Function("ai-jobs-get", "get_job", "public", SMALL, _API_SECRETS, "one job, its logs")
LIST = Function("ai-jobs-list", "list_jobs", "public", SMALL, _API_SECRETS, "the caller's jobs")
CANCEL = Function("ai-jobs-cancel", "cancel_job", "public", SMALL, _API_SECRETS, "cancel a job")
REAP = Function(
    "ai-jobs-reap",
    "reap_jobs",
    "private",
    SMALL,
    ("SUPABASE_SERVICE_ROLE_KEY", "PROCESSOR_SHARED_SECRET"),
    "re-dispatch lost jobs, purge old ones (Cloud Scheduler calls it)",
)
CONSOLE = Function("ai-jobs-console", "console", "public", SMALL, (), "the web console")

#: Every function, in deploy order: the processor first, as every other one needs its URL.
FUNCTIONS: tuple[Function, ...] = (PROCESS, CREATE, GET, LIST, CANCEL, REAP, CONSOLE)
BY_NAME: dict[str, Function] = {f.name: f for f in FUNCTIONS}
#: name -> entry point, what ``functions_framework.create_app`` takes as its target
ENTRY_POINTS: dict[str, str] = {f.name: f.entry_point for f in FUNCTIONS}


# --- deploy.sh's view: the sizes as deployed -------------------------------------------------


class SizeError(ValueError):
    """A size variable deploy.sh cannot use; the message names the variable."""


@dataclass(frozen=True)
class Deployed:
    """A function with its size after the environment's overrides, checked."""

    function: Function
    size: Size


def size_variables(size: Size) -> dict[str, str]:
    """field -> the variable that overrides it (``memory`` -> ``PROCESSOR_MEMORY``)."""
    return {f.name: f"{size.prefix}_{f.name.upper()}" for f in fields(size) if f.name != "prefix"}


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
        raise SizeError(f"{name} must be a whole number from {low} to {high}, got '{text}'")
    return int(text)


def _value(env: Mapping[str, str], name: str, default: object) -> str:
    given = env.get(name, "").strip()
    if given:
        return given
    if default is None:
        raise SizeError(f"{name} is not set (deploy.sh passes the one shared/settings.py resolved)")
    return str(default)


def resolve(size: Size, env: Mapping[str, str]) -> Size:
    """A size's values from ``env`` over its defaults, checked as Cloud Run checks them."""
    names = size_variables(size)
    raw = {key: _value(env, name, getattr(size, key)) for key, name in names.items()}
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", raw["cpu"]):
        raise SizeError(f"{names['cpu']} must be a number of vCPUs, got '{raw['cpu']}'")
    concurrency = _whole(names["concurrency"], raw["concurrency"], 1, 1000)
    # Cloud Run serves more than one request per instance only with at least 1 vCPU.
    if concurrency > 1 and float(raw["cpu"]) < 1:
        raise SizeError(
            f"{names['concurrency']} ({concurrency}) > 1 needs {names['cpu']} >= 1, "
            f"got '{raw['cpu']}'"
        )
    return Size(
        size.prefix,
        memory=raw["memory"],
        cpu=raw["cpu"],
        concurrency=concurrency,
        # Cloud Functions gen2 HTTP functions: a timeout of at most 3600 s.
        timeout_s=_whole(names["timeout_s"], raw["timeout_s"], 1, 3600),
        max_instances=_whole(names["max_instances"], raw["max_instances"], 1, 1000),
        min_instances=_whole(names["min_instances"], raw["min_instances"], 0, 1000),
    )


def deployed(env: Mapping[str, str]) -> list[Deployed]:
    """Every function as deploy.sh deploys it with this environment."""
    sizes = {size: resolve(size, env) for size in {f.size for f in FUNCTIONS}}
    out = []
    for function in FUNCTIONS:
        size = sizes[function.size]
        variable = function.min_instances_variable
        if variable:
            own = _value(env, variable, size.min_instances)
            size = replace(size, min_instances=_whole(variable, own, 0, 1000))
        out.append(Deployed(function, size))
    return out


def _bash_map(name: str, values: Mapping[str, object]) -> str:
    pairs = " ".join(f"[{key}]={shlex.quote(str(value))}" for key, value in values.items())
    return f"declare -A {name}=({pairs})"


def shell(env: Mapping[str, str]) -> str:
    """What deploy.sh evaluates: FUNCTIONS (deploy order), PROCESSOR, REAPER, and one
    associative array per column (FN_ENTRY[name], FN_ACCESS, FN_MEMORY, ...)."""
    rows = deployed(env)
    lines = [
        f"FUNCTIONS=({' '.join(f.name for f in FUNCTIONS)})",
        f"PROCESSOR={PROCESS.name}",
        f"REAPER={REAP.name}",
        _bash_map("FN_ENTRY", {r.function.name: r.function.entry_point for r in rows}),
        _bash_map("FN_ACCESS", {r.function.name: r.function.access for r in rows}),
        _bash_map("FN_SECRETS", {r.function.name: " ".join(r.function.secrets) for r in rows}),
    ]
    for column in ("memory", "cpu", "concurrency", "timeout_s", "max_instances", "min_instances"):
        values = {r.function.name: getattr(r.size, column) for r in rows}
        lines.append(_bash_map(f"FN_{column.upper()}", values))
    return "\n".join(lines)


def _names(size: Size) -> str:
    members = [f.name for f in FUNCTIONS if f.size == size]
    if len(members) > len(FUNCTIONS) // 2:
        return f"the {len(members)} others"
    return ", ".join(f"`{name}`" for name in members)


def markdown_table() -> str:
    """The README's table: each function, and each size with the variables overriding it."""
    lines = [
        "| function | entry point | access | mounts |",
        "|---|---|---|---|",
        *(
            f"| `{f.name}` | `{f.entry_point}` | {f.access} | "
            f"{', '.join(f'`{s}`' for s in f.secrets) or 'no secret'} |"
            for f in FUNCTIONS
        ),
        "",
        "| size variable | default | functions |",
        "|---|---|---|",
    ]
    for size in (WORKER, SMALL):
        for key, name in size_variables(size).items():
            default = getattr(size, key)
            shown = "a setting (shared/settings.py)" if default is None else f"`{default}`"
            lines.append(f"| `{name}` | {shown} | {_names(size)} |")
    for f in FUNCTIONS:
        if f.min_instances_variable:
            name = size_variables(f.size)["min_instances"]
            lines.append(f"| `{f.min_instances_variable}` | `{name}` | `{f.name}` alone |")
    return "\n".join(lines)


README_BEGIN = "<!-- functions table: generated by `python -m shared.functions --markdown` -->"
README_END = "<!-- end of functions table -->"


def readme_with_table(readme: str, table: str) -> str:
    """The README with the text between the markers replaced by ``table``."""
    head, _, rest = readme.partition(README_BEGIN + "\n")
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"


def _write_readme(path: str) -> None:
    readme = Path(path)
    readme.write_text(readme_with_table(readme.read_text(), markdown_table()))


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.functions", description="Describe the table of functions."
    )
    output = parser.add_mutually_exclusive_group(required=True)
    for flag, meaning in (
        ("--shell", "bash assignments for deploy.sh"),
        ("--markdown", "the table"),
    ):
        output.add_argument(flag, action="store_true", help=f"print {meaning}")
    output.add_argument("--write-readme", metavar="PATH", help="rewrite the README's table")
    args = parser.parse_args(argv)
    if args.write_readme:
        _write_readme(args.write_readme)
    elif args.markdown:
        print(markdown_table())
    else:
        try:
            print(shell(os.environ if env is None else env))
        except SizeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
