"""The layout keeps its promises: one owner per decision, small modules, a clean formatter run.

These read the package's source; they fail with the place to fix (docs/architecture.md says
which module owns what).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "easyllm"
MODULE_LINES, FUNCTION_LINES = 400, 60


def sources() -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_modules_and_functions_stay_small():
    too_long = []
    for name, text in sources().items():
        if len(text.splitlines()) > MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines (at most {MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these by what they do:\n" + "\n".join(too_long)


def test_only_methods_py_compares_method_names():
    comparison = re.compile(
        r"""(==|!=|\bin\b)\s*\(?\s*["'](lora|qlora|full)["']|["'](lora|qlora|full)["']\s*(==|!=)"""
    )
    found = [
        f"{name}:{number}: {line.strip()}"
        for name, text in sources().items()
        if name != "methods.py"
        for number, line in enumerate(text.splitlines(), 1)
        if comparison.search(line)
    ]
    assert not found, "ask methods.get_method(name) instead:\n" + "\n".join(found)


def test_the_4bit_config_is_written_once():
    writers = [name for name, text in sources().items() if "BitsAndBytesConfig(" in text]
    assert writers == ["methods.py"], writers


def test_no_task_hook_is_found_by_probing_and_the_runner_names_no_task_column():
    probes = [
        name for name, text in sources().items() if re.search(r"getattr\((self\.)?task\b", text)
    ]
    assert not probes, f"declare it in Task.capabilities instead: {probes}"
    runner = sources()["runner.py"]
    columns = re.findall(
        r"""["'](input_ids|labels|prompt_ids|chosen_ids|rejected_ids|completion_ids)["']|-100""",
        runner,
    )
    assert not columns, f"runner.py names task columns {columns}: the task owns them"


def test_ruff_lint_and_format_are_clean():
    beside_python = Path(sys.executable).with_name("ruff")
    ruff = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install -e '.[test]'"
    root = PACKAGE.parent
    for command in (
        [ruff, "check", "easyllm", "tests"],
        [ruff, "format", "--check", "easyllm", "tests"],
    ):
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        assert done.returncode == 0, (
            f"{' '.join(command[1:])}:\n{done.stdout[-3000:]}{done.stderr[-1000:]}"
        )
