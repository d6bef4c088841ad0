"""Fits the instant model on a labelled file exactly as the service fits it, and scores it on another.

    python -m backend evaluate --train train.jsonl --eval eval.jsonl [--json]

The training rows enter a throwaway label store, which freezes its own selection split; the method is chosen on
it, its temperature fitted out of fold, and the chosen method refitted on every row (``fit_on_labels``, with only
the department names as catalog seeds, as ``python -m backend simulate`` does). The evaluation file is scored by
the one evaluation routine (``core.evaluation.evaluate``): accuracy, macro-F1 and the expected calibration error
of the top-1 probabilities. Rows are JSON objects with ``text`` and ``label`` (or ``department``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from core.evaluation import evaluate
from core.settings import Settings
from learning.instant_model import fit_on_labels
from tools.simulation import PROJECT, SimulationInputError, ThrowawayProject, read_tickets

SHOWN = ("n", "labels", "departments", "method", "temperature", "temperature_fitted", "accuracy", "macro_f1", "macro_precision",
         "macro_recall", "ece", "fit_seconds")


def fit_like_the_service(texts: Sequence[str], labels: Sequence[str], departments: Sequence[str]):
    """(classifier, metrics, fit seconds) of the instant model fitted on these rows through a throwaway label store,
    as the service fits it from its own (the store freezes the selection split)."""
    project = ThrowawayProject(departments, Settings())
    try:
        project.annotate(texts, labels)
        started = time.perf_counter()
        clf, metrics = fit_on_labels("evaluate", project.space.departments, project.store.labels(PROJECT), project.catalog.seed_texts(),
                                     project.settings.max_text_chars)
        return clf, metrics, time.perf_counter() - started
    finally:
        project.close()


def run(train_path: Path, eval_path: Path) -> dict:
    train, evaluation = read_tickets(train_path), read_tickets(eval_path)
    if not len(train) or not len(evaluation):
        raise SimulationInputError(f"{train_path if not len(train) else eval_path} holds no rows")
    # The evaluation file's departments too, as a catalog would list them: the model ranks them from their names.
    departments = sorted(set(train.labels) | set(evaluation.labels))
    clf, metrics, fit_seconds = fit_like_the_service(train.texts, train.labels, departments)
    report = evaluate(clf, [SimpleNamespace(text=t, department=y) for t, y in zip(evaluation.texts, evaluation.labels)])
    return {"train": str(train_path), "eval": str(eval_path), "n": report["n"], "labels": len(train), "departments": len(departments),
            "method": clf.method, "temperature": metrics["calibration"]["temperature"], "temperature_fitted": metrics["calibration"]["fitted"],
            **{k: report[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "ece")}, "fit_seconds": round(fit_seconds, 3),
            "confused_pairs": report["confused_pairs"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="prints a table, or with --json one JSON line: n (evaluation rows), labels (training rows),\n"
                                            "departments, method, temperature (and whether it was fitted), accuracy, macro_f1,\n"
                                            "macro_precision, macro_recall, ece (15 bins), fit_seconds, confused_pairs.\n"
                                            "Exit status 2 when a file is missing or a row is not usable.")
    parser.add_argument("--train", type=Path, required=True, metavar="PATH", help="labelled JSONL (text, label) the model is fitted on")
    parser.add_argument("--eval", type=Path, required=True, metavar="PATH", help="labelled JSONL (text, label) the model is scored on")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args(argv)
    try:
        result = run(args.train, args.eval)
    except SimulationInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print("| measure | value |\n|---|---|")
        for key in SHOWN:
            print(f"| {key} | {result[key]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
