"""Calibration of the instant model: ECE with the method's fixed temperature against the one fitted out of fold.

    nice -n 10 .venv/bin/python -m bench.calibration --min-per-label 20 --seeds 0 1 2 --out bench/results/calibration.json

Per data set and seed, a stratified 80/20 split: the 80 % enter a label store as gold labels and the instant model
is fitted through the product's own path (``fit_on_labels``: frozen split, method choice, temperature fitted out of
fold on the split's training rows, refit on every label). The 20 % it never saw score it twice, the same fitted
model with its fitted temperature and with its method's constant: ECE (15 bins), negative log-likelihood, and the
refit's seconds with the part the out-of-fold pass adds (it also chooses the method).

    nice -n 10 .venv/bin/python -m bench.calibration --refit-time ../shared/data/shanghai_xinfang/dev.jsonl

times instead one refit on every row of a file (4.5k labels / 549 departments for Shanghai's), the SVM serving,
with the out-of-fold pass (both methods scored on the training labels: the choice and the fitted temperature) and
then without it (the choice on the split alone, the method's constant temperature).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import learning.instant_model
from annotation_config.catalog import Catalog, Department
from bench.instant_model import load
from core.evaluation import evaluate
from core.store import Label, Store
from learning.instant_model import fit_on_labels
from tools.evaluate import fit_like_the_service

DATA = Path("../shared/data")
DEFAULT_DATA = [DATA / "shanghai_xinfang/dev.jsonl", DATA / "dalian_gov/dev.jsonl", DATA / "tipdm2020c/dev.jsonl"]


def nll(clf, texts, labels) -> float:
    probs = clf.predict_proba(texts).probs
    gold = np.array([clf.departments.index(y) for y in labels])
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(gold)), gold], 1e-12))))


def run_one(texts, labels, seed: int) -> dict:
    from sklearn.model_selection import train_test_split

    train_x, test_x, train_y, test_y = train_test_split(texts, labels, test_size=0.2, stratify=labels, random_state=seed)
    return {"seed": seed, **score_split(train_x, test_x, train_y, test_y, sorted(set(labels)))}


def score_split(train_x, test_x, train_y, test_y, departments) -> dict:
    """The instant model fitted on (train_x, train_y) through the product's path, scored on the test rows with its
    fitted temperature and with its method's constant."""
    test = [SimpleNamespace(text=t, department=y) for t, y in zip(test_x, test_y)]
    clf, metrics, refit = fit_like_the_service(train_x, train_y, departments)
    fitted = evaluate(clf, test)
    fitted_nll = nll(clf, test_x, test_y)
    clf.temperature = type(clf).temperature  # the same model with the method's constant
    fixed = evaluate(clf, test)
    calibration = metrics["calibration"]
    return {"method": clf.method, "accuracy": fitted["accuracy"], "macro_f1": fitted["macro_f1"], "fixed_temperature": clf.temperature,
            "fitted_temperature": calibration["temperature"], "ece_fixed": fixed["ece"], "ece_fitted": fitted["ece"],
            "nll_fixed": round(nll(clf, test_x, test_y), 4), "nll_fitted": round(fitted_nll, 4), "refit_seconds": round(refit, 2),
            "calibration_seconds": calibration["seconds"], "refit_ratio": round(refit / (refit - calibration["seconds"]), 3)}


def refit_time(path: Path) -> None:
    texts, labels = load(path, 1)
    catalog = Catalog(title="units", departments=tuple(Department(name=d) for d in sorted(set(labels))))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.sqlite3")
        for i, (text, label) in enumerate(zip(texts, labels), start=1):
            store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=text, department=label))
        gold = store.labels()
    out_of_fold = learning.instant_model.out_of_fold
    print(f"{path}: {len(texts)} labels, {len(catalog.names)} departments\n| temperature | refit s | of which out-of-fold s | "
          "split ECE |\n|---|---|---|---|")
    for fitted in (True, False):
        learning.instant_model.out_of_fold = out_of_fold if fitted else lambda *args, **kwargs: None
        started = time.perf_counter()
        _, metrics = fit_on_labels("bench", catalog.names, gold, catalog.seed_texts(), serving_method="svm")
        seconds = time.perf_counter() - started
        print(f"| {metrics['calibration']['temperature']} ({metrics['method']}, {'fitted' if fitted else 'constant'}) | {seconds:.1f} | "
              f"{metrics['calibration']['seconds']:.1f} | {metrics['ece']} |", flush=True)
    learning.instant_model.out_of_fold = out_of_fold


def mean_std(rows: list[dict], key: str, digits: int = 3) -> str:
    values = [r[key] for r in rows]
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, help="labelled JSONL files with text and label "
                        "(default: the Shanghai, Dalian and TipDM dev sets under ../shared/data)")
    parser.add_argument("--min-per-label", type=int, default=20, help="keep labels with at least this many rows (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write every run as JSON here")
    parser.add_argument("--refit-time", type=Path, metavar="PATH", help="instead, time one refit on every row of this file, "
                        "calibrated and not")
    args = parser.parse_args(argv)
    if args.refit_time:
        refit_time(args.refit_time)
        return 0

    results = {}
    print("| data | rows, labels | method | temperature: fixed → fitted | ECE fixed | ECE fitted | NLL fixed | NLL fitted "
          "| accuracy | refit s | of which out-of-fold s | refit / without it |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.data:
        texts, labels = load(path, args.min_per_label)
        rows = [run_one(texts, labels, seed) for seed in args.seeds]
        results[str(path)] = {"rows": len(texts), "labels": len(set(labels)), "runs": rows}
        fitted = ", ".join(f"{r['fitted_temperature']:.3g}" for r in rows)
        fixed = "/".join(f"{t:g}" for t in sorted({r["fixed_temperature"] for r in rows}))
        print(f"| {path.parent.name} | {len(texts)}, {len(set(labels))} | {'/'.join(sorted({r['method'] for r in rows}))} | "
              f"{fixed} → {fitted} | {mean_std(rows, 'ece_fixed')} | {mean_std(rows, 'ece_fitted')} | "
              f"{mean_std(rows, 'nll_fixed')} | {mean_std(rows, 'nll_fitted')} | {mean_std(rows, 'accuracy')} | "
              f"{mean_std(rows, 'refit_seconds', 1)} | {mean_std(rows, 'calibration_seconds', 1)} | {mean_std(rows, 'refit_ratio', 2)} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"min_per_label": args.min_per_label, "seeds": args.seeds, "data": results}, ensure_ascii=False,
                                       indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
