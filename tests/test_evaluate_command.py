"""`python -m backend evaluate` fits the instant model as the service does and prints its scores as one JSON line."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import repo_root
from tests.test_calibration import tickets


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def backend(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", "evaluate", *args], cwd=repo_root(), capture_output=True, text=True, timeout=300)


def test_the_json_line_holds_the_scores_of_a_model_fitted_on_the_training_file(tmp_path):
    texts, labels = tickets(120, seed=0, noise=0.1)
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in zip(texts[:80], labels[:80])])
    # "department" is accepted for "label": the export's and Label Studio's name for it.
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"text": t, "department": y} for t, y in zip(texts[80:], labels[80:])])
    done = backend("--train", train, "--eval", evaluation, "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n"] == 40 and result["labels"] == 80 and result["departments"] == 4
    assert result["accuracy"] > 0.8 and 0 < result["macro_f1"] <= 1
    assert 0 <= result["ece"] <= 1 and result["fit_seconds"] > 0
    assert result["method"] in ("prototype", "svm") and result["temperature"] > 0

    table = backend("--train", train, "--eval", evaluation)
    assert table.returncode == 0 and "| ece |" in table.stdout


def test_a_missing_file_or_a_bad_row_exits_2_with_a_message(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "路灯坏了", "label": "甲单位"}])
    missing = backend("--train", train, "--eval", str(tmp_path / "nowhere.jsonl"), "--json")
    assert missing.returncode == 2 and "nowhere.jsonl" in missing.stderr and not missing.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "路灯坏了"}])
    wrong = backend("--train", train, "--eval", bad)
    assert wrong.returncode == 2 and "bad.jsonl, line 1" in wrong.stderr
