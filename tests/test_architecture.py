"""The layering of DESIGN.md, enforced: imports point down only; heavy libraries load lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "danlu"
LEAF = {"errors", "registry", "logging", "types"}
BELOW_TRAIN = LEAF | {"config", "data", "tasks", "models", "store"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "registry": {"errors"},
    "logging": set(),
    "types": set(),
    "config": LEAF,
    "data": LEAF | {"config"},
    "tasks": LEAF | {"config", "data"},
    "models": LEAF | {"config", "data", "tasks"},
    "store": LEAF | {"config"},
    "train": BELOW_TRAIN,
    "tune": BELOW_TRAIN | {"train", "export"},  # the winner is registered and exported
    "evaluate": BELOW_TRAIN | {"train"},
    "compress": BELOW_TRAIN | {"train", "evaluate", "export"},  # variants are exported
    "export": LEAF | {"config", "data", "tasks", "models", "store"},
    "jobs": LEAF | {"config", "store"},
    "pipeline": BELOW_TRAIN | {"train", "tune", "evaluate", "compress", "export", "jobs"},
    "serve": LEAF | {"config", "data", "tasks", "models", "store", "export"},
    "ui": LEAF | {"config", "store", "jobs"},  # the jobs page reads and changes the queue
    # the deployment kit: build contexts, manifests and monitoring files from the registry
    "deploy": LEAF | {"config", "store", "export", "serve"},
}


def _layer(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _danlu_imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "danlu" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) not in {"__init__", "__main__"})


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = _layer(path)
    if layer in {"cli", "testing"}:
        return  # the top: may import everything
    allowed = ALLOWED[layer] | {layer}
    upward = _danlu_imports(ast.parse(path.read_text())) - allowed
    assert not upward, (
        f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(upward)}, which sit above it in DESIGN.md"
    )


def test_every_layer_is_known():
    layers = {_layer(p) for p in _modules()}
    assert layers <= set(ALLOWED) | {"cli", "testing"}


def test_cli_import_does_not_load_heavy_libraries():
    code = "import sys, danlu, danlu.cli, danlu.config; heavy = [m for m in ('torch', 'pandas', 'sklearn', 'numpy', 'onnxruntime', 'optuna') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_runs_without_torch():
    code = "import sys; from danlu.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\nassert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "validate" in out.stdout


def test_no_print_in_library_code():
    offenders = []
    for path in _modules():
        if _layer(path) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders


def test_no_pickle_anywhere():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "import pickle" in text or "torch.load(" in text:
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders
