"""The design's import rules, checked on the source: stages never import each other, the trainer core
never imports grpo/ (nor a stage), the reward package never imports jax."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "r1jax"


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _modules(package: str):
    return sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("path", _modules("stages"), ids=lambda p: p.name)
def test_stages_never_import_each_other(path):
    others = {f"r1jax.stages.{p.stem}" for p in _modules("stages") if p.stem not in ("__init__", path.stem)}
    bad = {m for m in _imports(path) if m in others or m == "r1jax.stages"}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("trainer"), ids=lambda p: p.name)
def test_trainer_core_knows_no_grpo_and_no_stage(path):
    bad = {m for m in _imports(path) if m.startswith(("r1jax.grpo", "r1jax.stages", "r1jax.main"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("reward"), ids=lambda p: p.name)
def test_reward_package_never_imports_jax(path):
    bad = {m for m in _imports(path) if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_rules_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from r1jax.stages import rl\nimport r1jax.grpo.loss\n")
    assert {"r1jax.stages.rl", "r1jax.grpo.loss"} <= _imports(bad)
