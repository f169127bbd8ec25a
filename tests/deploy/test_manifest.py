"""The table of functions (shared/functions.py) is the only list of them: every function in it
has its source, every source folder is in it, and the README's table is printed from it.

That each one loads under functions_framework with its entry point is checked, function by
function from the same table, in ``tests/integration/test_import_weight.py``; that deploy.sh
deploys exactly this table, in ``tests/deploy/test_deploy.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from shared.functions import (
    BY_NAME,
    CANCEL,
    CONSOLE,
    CREATE,
    FUNCTIONS,
    GET,
    LIST,
    PROCESS,
    SMALL,
    WORKER,
    Function,
    SizeError,
    deployed,
    markdown_table,
    readme_with_table,
    size_variables,
)

REPO = Path(__file__).resolve().parents[2]


def top_level_names(source: Path) -> set[str]:
    """What a module defines at its top level (functions and assigned names)."""
    tree = ast.parse(source.read_text(), str(source))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.name)
def test_each_function_has_its_main_py_defining_its_entry_point(function: Function) -> None:
    source = function.source(REPO)

    assert source.is_file(), f"{function.name} is in the table but {source} does not exist"
    assert function.entry_point in top_level_names(source), f"{source} lacks the entry point"


def test_every_function_folder_is_in_the_table() -> None:
    folders = {p.name for p in (REPO / "functions").iterdir() if p.is_dir()}

    assert folders == set(BY_NAME)
    assert len(BY_NAME) == len(FUNCTIONS), "each name once"


def test_the_console_page_calls_functions_of_the_table_by_their_names() -> None:
    # The page is built JavaScript (console/src, bundled into functions/ai-jobs-console/static)
    # and cannot import the table: a renamed function must fail here, not in a browser.
    sources = [p for p in (REPO / "console" / "src").rglob("*") if p.suffix in {".js", ".html"}]
    used = {name for p in sources for name in re.findall(r"ai-jobs-[a-z]+", p.read_text())}

    assert used <= set(BY_NAME)
    assert {CREATE.name, GET.name, LIST.name, CANCEL.name, CONSOLE.name} <= used


def test_the_processor_comes_first_as_the_others_need_its_url() -> None:
    assert FUNCTIONS[0] is PROCESS


def test_urls_and_paths_are_built_from_the_name() -> None:
    assert GET.path("abc") == "/ai-jobs-get/abc"
    assert CREATE.path() == "/ai-jobs-create"
    assert GET.url("https://r-p.cloudfunctions.net/", "abc") == (
        "https://r-p.cloudfunctions.net/ai-jobs-get/abc"
    )


def test_the_environment_overrides_a_size_and_a_bad_one_is_refused_naming_it() -> None:
    timeout = {"PROCESSOR_TIMEOUT_S": "540"}
    sizes = {d.function.name: d.size for d in deployed({**timeout, "FUNCTION_MEMORY": "512Mi"})}

    assert sizes[GET.name].memory == "512Mi"
    assert sizes[PROCESS.name].memory == WORKER.memory
    assert sizes[PROCESS.name].timeout_s == 540
    refused = {
        "FUNCTION_CPU": {**timeout, "FUNCTION_CPU": "one"},
        "PROCESSOR_CONCURRENCY": {**timeout, "PROCESSOR_CONCURRENCY": "0"},
        "FUNCTION_TIMEOUT_S": {**timeout, "FUNCTION_TIMEOUT_S": "3601"},
        "CREATE_MIN_INSTANCES": {**timeout, "CREATE_MIN_INSTANCES": "-1"},
        "PROCESSOR_TIMEOUT_S": {},  # resolved by shared/settings.py, passed by deploy.sh
    }
    for name, env in refused.items():
        with pytest.raises(SizeError, match=f"^{name} "):
            deployed(env)


def test_readme_table_is_the_table_of_functions() -> None:
    readme = (REPO / "README.md").read_text()
    table = markdown_table()

    fix = "python -m shared.functions --write-readme README.md"
    assert readme_with_table(readme, table) == readme, f"the README's table is stale: {fix}"
    for size in (WORKER, SMALL):
        for name in size_variables(size).values():
            assert f"| `{name}` |" in table
    for function in FUNCTIONS:
        assert f"| `{function.name}` | `{function.entry_point}` | {function.access} |" in table
