"""wattpool.policy.routing.pick_least_loaded, and the purity of wattpool.policy."""

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
from wattpool.policy.routing import InstanceSnapshot, RouteDecision, pick_least_loaded


def snap(instance_id: str, in_flight: int = 0, *, ready: bool = True, model_id: str = "m",
         node_id: str | None = None) -> InstanceSnapshot:
    return InstanceSnapshot(
        instance_id=instance_id,
        node_id=node_id or f"node-{instance_id}",
        model_id=model_id,
        ready=ready,
        in_flight=in_flight,
    )


def chosen_id(decision: RouteDecision) -> str | None:
    return decision.chosen.instance_id if decision.chosen else None


def test_least_in_flight_wins() -> None:
    candidates = [snap("a", 5), snap("b", 1), snap("c", 3)]
    decision = pick_least_loaded("m", candidates)
    assert decision.chosen == candidates[1]
    assert decision.rejected == {"a": "busier (5 in flight)", "c": "busier (3 in flight)"}


def test_least_in_flight_wins_whatever_the_order() -> None:
    candidates = [snap("c", 3), snap("a", 0), snap("b", 1)]
    for rotation in range(3):
        order = candidates[rotation:] + candidates[:rotation]
        assert chosen_id(pick_least_loaded("m", order)) == "a"


def test_ties_go_to_lowest_id() -> None:
    candidates = [snap("inst-c", 2), snap("inst-a", 2), snap("inst-b", 2), snap("inst-0", 9)]
    decision = pick_least_loaded("m", candidates)
    assert chosen_id(decision) == "inst-a"
    assert set(decision.rejected) == {"inst-b", "inst-c", "inst-0"}


def test_not_ready_is_rejected_with_reason() -> None:
    decision = pick_least_loaded("m", [snap("idle", 0, ready=False), snap("busy", 7)])
    assert chosen_id(decision) == "busy"
    assert decision.rejected == {"idle": "not ready"}


def test_excluded_is_rejected_with_reason() -> None:
    decision = pick_least_loaded("m", [snap("a", 0), snap("b", 4)], exclude=["a"])
    assert chosen_id(decision) == "b"
    assert decision.rejected == {"a": "already tried for this request"}


def test_exclude_accepts_any_iterable_even_a_generator() -> None:
    decision = pick_least_loaded("m", [snap("a", 0), snap("b", 4)], exclude=(x for x in ["a"]))
    assert chosen_id(decision) == "b"


def test_excluded_takes_precedence_over_not_ready() -> None:
    decision = pick_least_loaded("m", [snap("a", ready=False)], exclude={"a"})
    assert decision.chosen is None
    assert decision.rejected == {"a": "already tried for this request"}


def test_other_models_are_ignored() -> None:
    candidates = [snap("x", 0, model_id="other"), snap("y", 3, model_id="m"),
                  snap("z", 0, model_id="other", ready=False)]
    decision = pick_least_loaded("m", candidates)
    assert chosen_id(decision) == "y"
    assert decision.rejected == {}  # other models are not even mentioned


def test_no_eligible_instance_chooses_none() -> None:
    candidates = [snap("a", ready=False), snap("b"), snap("c", model_id="other")]
    decision = pick_least_loaded("m", candidates, exclude=["b"])
    assert decision.chosen is None
    assert decision.rejected == {"a": "not ready", "b": "already tried for this request"}


def test_no_candidates_at_all() -> None:
    decision = pick_least_loaded("m", [])
    assert decision == RouteDecision(chosen=None, rejected={})


def test_every_candidate_of_the_model_is_explained() -> None:
    candidates = [snap(f"i{n}", n % 3, ready=n % 4 != 0) for n in range(12)]
    decision = pick_least_loaded("m", candidates, exclude=["i5"])
    assert decision.chosen is not None
    explained = set(decision.rejected) | {decision.chosen.instance_id}
    assert explained == {c.instance_id for c in candidates}
    assert decision.chosen.instance_id not in decision.rejected


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
    assert "wattpool.policy.routing" in names
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
