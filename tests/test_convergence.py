"""The stopping signal reads the registry and the served predictions."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from core.store import Store
from tests.helpers import repo_root
from tools.convergence import convergence_report


def add(store, name, labels, f1, kind="instant"):
    store.add_version(1, name, kind, status="retired", data={"labels": labels}, metrics={"accuracy": f1 + 0.05, "macro_f1": f1, "n": 50})


def predictions(store, version, departments):
    store.save_predictions([{"project_id": 1, "task_id": i + 1, "model_version": version, "department": d, "score": 0.5,
                             "margin": 0.1, "entropy": 1.0, "top": [[d, 0.5]], "truncated": 0} for i, d in enumerate(departments)])


def test_a_flat_curve_and_stable_suggestions_say_converging(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    for i, (labels, f1) in enumerate([(100, 0.40), (200, 0.60), (300, 0.700), (400, 0.702), (500, 0.703), (600, 0.704)]):
        add(store, f"instant-{i + 1}", labels, f1)
    predictions(store, "instant-5", ["甲"] * 40)
    predictions(store, "instant-6", ["甲"] * 39 + ["乙"])
    report = convergence_report(store, 1)
    assert [p["labels"] for p in report["series"]["instant"]] == [100, 200, 300, 400, 500, 600]
    assert report["churn"] == {"from": "instant-5", "to": "instant-6", "tickets": 40, "changed": 1, "share": 0.025}
    assert 0 <= report["instant_macro_f1_per_100_labels"] < 0.01
    assert report["advice"].startswith("converging")


def test_a_rising_curve_says_still_improving_and_the_cli_writes_json_and_plot(tmp_path):
    model_dir = tmp_path / "model"
    store = Store(model_dir / "store.sqlite3")
    for i, (labels, f1) in enumerate([(100, 0.3), (200, 0.4), (300, 0.5), (400, 0.6)]):
        add(store, f"instant-{i + 1}", labels, f1)
    assert convergence_report(store, 1)["advice"].startswith("still improving: macro-F1 +0.100 per 100 labels")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "backend", "convergence", "--out", str(out)], cwd=repo_root(), timeout=120,
                          env={**os.environ, "MODEL_DIR": str(model_dir)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "convergence-1.json").read_text())["series"]["instant"][-1]["macro_f1"] == 0.6
    assert (out / "convergence-1.png").read_bytes()[:4] == b"\x89PNG"
