"""The import layering docs/design.md states, checked on the source (no imports executed).

    cluster  <-  rfnet  <-  engine  <-  toy, rfft  <-  jobs

- ``cluster`` imports none of the other project packages;
- ``rfnet`` never imports ``engine`` or ``rfft`` (training and inference meet through files);
- ``engine`` never imports ``rfft`` (a fine-tuned ControlNet reaches it as a folder on disk) or ``toy``
  (the toy world's trained models reach it as shipped folders);
- nothing but ``jobs`` imports ``jobs``;
- stage modules (what Ray Data calls) do not import ray, so tests can call them directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "rfnet", "engine", "toy", "rfft", "jobs")
FORBIDDEN = {
    "cluster": {"rfnet", "engine", "toy", "rfft", "jobs"},
    "rfnet": {"engine", "toy", "rfft", "jobs"},
    "engine": {"toy", "rfft", "jobs"},
    "toy": {"rfft", "jobs"},
    "rfft": {"jobs"},
    "jobs": set(),
}
# Modules whose classes Ray Data or Ray Serve instantiate: they must stay importable without ray.
RAY_FREE = [
    "engine/conditioning.py",
    "engine/models.py",
    "engine/model_paths.py",
    "engine/generate.py",
    "engine/prepare.py",
    "engine/refresh_stages.py",
    "engine/pool_actors.py",
    "engine/columns.py",
    "engine/commit.py",
    "engine/torch_thread.py",
    "engine/score.py",
    "engine/outputs.py",
    "engine/report.py",
    "engine/report_html.py",
    "engine/review.py",
    "engine/review_app.py",
    "engine/review_export.py",
    "rfnet/scorer.py",
]


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_exists():
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = []
    for path in _sources(package):
        illegal = _imported_top_levels(path) & FORBIDDEN[package]
        bad += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(illegal)]
    assert not bad, "layering violations:\n" + "\n".join(bad)


@pytest.mark.parametrize("relpath", RAY_FREE)
def test_stage_modules_do_not_import_ray(relpath):
    path = ROOT / relpath
    assert "ray" not in _imported_top_levels(path), f"{relpath} imports ray"


# Module -> heavy modules importing it must not load. Scoring actors import engine.score and
# engine.pool_actors, which must not drag in diffusers (the generator) or ray. Every task worker of a refresh
# round imports engine.task_calls and engine.refresh_stages (the functions and stage objects it runs):
# diffusers or torch there would cost each new worker seconds of imports, again every round. The refresh's
# driver (engine.pipeline) checks model paths and starts the pools but runs no model: it imports neither, also
# when it checks an RFNet checkpoint folder (rfnet.checkpoint_files).
LIGHT_IMPORTS = {
    "engine.pipeline": ("diffusers", "torch"),
    "rfnet.checkpoint_files": ("torch",),
    "engine.score": ("diffusers", "ray"),
    "engine.refresh_stages": ("diffusers", "torch"),
    "engine.task_calls": ("diffusers", "torch"),
    "engine.pool_actors": ("diffusers", "ray"),
}


@pytest.mark.parametrize("module", sorted(LIGHT_IMPORTS))
def test_light_modules_do_not_load_heavy_ones(module):
    import subprocess
    import sys

    heavy = LIGHT_IMPORTS[module]
    probe = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"
