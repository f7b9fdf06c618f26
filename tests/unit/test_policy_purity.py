"""The purity of wattpool.policy: no I/O, nothing else of wattpool."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import wattpool.policy

# --- policy stays pure -----------------------------------------------------------

FORBIDDEN_TOP_LEVEL = {
    "httpx", "sqlalchemy", "asyncio", "socket", "subprocess", "requests", "aiohttp",
    "nats", "fastapi", "uvicorn", "urllib", "http", "threading", "multiprocessing",
}


def _policy_modules() -> list[str]:
    names = ["wattpool.policy"]
    for info in pkgutil.walk_packages(wattpool.policy.__path__, prefix="wattpool.policy."):
        names.append(info.name)
    return names


def _imports_of(module_name: str) -> list[str]:
    """Absolute names of everything a module imports (anywhere in its source)."""
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    source = Path(module.__file__).read_text(encoding="utf-8")
    is_package = Path(module.__file__).name == "__init__.py"
    package = module_name if is_package else module_name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                found.append(".".join([*base, node.module] if node.module else base))
            else:
                assert node.module is not None
                found.append(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            found.append("<dynamic import>")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
            node.func.id == "__import__"
        ):
            found.append("<dynamic import>")
    return found


def test_policy_has_the_expected_modules() -> None:
    names = _policy_modules()
    assert "wattpool.policy.scoring" in names
    assert "wattpool.policy.placement" in names


@pytest.mark.parametrize("module_name", _policy_modules())
def test_policy_module_imports_nothing_impure(module_name: str) -> None:
    bad = []
    for name in _imports_of(module_name):
        top = name.split(".")[0]
        if name == "<dynamic import>":
            bad.append(name)
        elif top == "wattpool" and not (
            name == "wattpool.policy" or name.startswith("wattpool.policy.")
        ):
            bad.append(name)
        elif top in FORBIDDEN_TOP_LEVEL:
            bad.append(name)
    assert bad == [], f"{module_name} imports {bad}"


def test_importing_policy_loads_no_other_wattpool_or_io_module() -> None:
    # A fresh interpreter, so that what other tests imported does not hide anything.
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {_policy_modules()!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)
    loaded = json.loads(out.stdout)
    wattpool_modules = {m for m in loaded if m.split(".")[0] == "wattpool"}
    assert wattpool_modules <= {"wattpool", *_policy_modules()}
    io_modules = {m for m in loaded if m.split(".")[0] in FORBIDDEN_TOP_LEVEL}
    assert io_modules == set()
