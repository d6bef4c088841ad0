"""The folders are the product's parts and their imports run one way (README, "Layout"):

    annotation_config  ←  core  ←  learning  ←  tools  ←  backend
                           ↑          ↑                     │
                        training ─────┘ (never backend)  ←──┘ (lazily, only where the LLM is used)

and importing the service never loads the heavy ML libraries: they load when a model is first fitted or loaded.
"""
from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import repo_root

PARTS = ("annotation_config", "core", "learning", "training", "backend", "tools")
ALLOWED = {
    "annotation_config": set(),
    "core": {"annotation_config"},
    "learning": {"core", "annotation_config"},
    "training": {"core", "annotation_config"},
    "tools": {"core", "learning", "training", "annotation_config"},
    "backend": {"core", "learning", "training", "tools", "annotation_config"},
}


def imported_parts(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names} & set(PARTS)


def test_imports_run_one_way_between_the_parts():
    wrong = []
    for part in PARTS:
        for path in sorted((repo_root() / part).rglob("*.py")):
            for target in imported_parts(path) - ALLOWED[part] - {part}:
                wrong.append(f"{path.relative_to(repo_root())} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_importing_the_service_loads_no_heavy_ml_library():
    probe = ("import sys, backend.app, backend.__main__; "
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'sklearn', 'unsloth') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=repo_root(), capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
