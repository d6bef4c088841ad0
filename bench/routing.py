"""Auto-routing on the dev sets: is the promised precision kept on tickets the threshold never saw, and what share
of tickets goes without a person, against the number of labels?

    nice -n 10 .venv/bin/python -m bench.routing --out bench/results/routing.json

For each set and each number of labels N, `--models` times: N random tickets are the gold labels; (1 - share) of
them train the model (the instant model through the product's own path, ``fit_on_labels``: method chosen on the
store's frozen split, refitted on every training label), the rest of the labels calibrate. The model scores every
ticket outside its training labels once; then `--splits` times the calibration labels are drawn afresh from those
tickets and every other one is a test ticket. On each split, per target precision, the threshold is chosen on the
calibration labels (``core.routing``: global, and per department) and the test tickets at or above it are
"auto-routed": their share is the coverage, the share of them the model got right is the realised precision.
The promise is that realised precision >= target in at least `confidence` of the splits (a split that auto-routes
nothing keeps it). The realised precision is measured on a finite test part, so a split can miss by test-set noise
alone; "proven below" counts the misses where even the exact upper bound on the test part's precision is below the
target.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from annotation_config.catalog import Catalog, Department
from core.classifier import Classifier
from core.routing import choose_department_thresholds, clopper_pearson_lower
from core.store import Label, Store
from learning.instant_model import fit_on_labels

SETS = {  # name: (dev file under --data, keep units with at least this many letters)
    "shanghai": ("shanghai_xinfang/dev.jsonl", 20),
    "dalian": ("dalian_gov/dev.jsonl", 20),
    "tipdm": ("tipdm2020c/dev.jsonl", 1),
    "shanghai-all": ("shanghai_xinfang/dev.jsonl", 1),
    "dalian-all": ("dalian_gov/dev.jsonl", 1),
}
MIN_TEST_TICKETS = 300

Fit = Callable[[Sequence[str], Sequence[str], Sequence[str]], Classifier]


def fit_instant(texts: Sequence[str], labels: Sequence[str], departments: Sequence[str]) -> Classifier:
    """The instant model as the service fits it from its label store; the catalog is the set's unit names."""
    catalog = Catalog(title="units", departments=tuple(Department(name=d) for d in departments))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.sqlite3")
        for i, (text, label) in enumerate(zip(texts, labels), start=1):
            store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=text, department=label))
        clf, _ = fit_on_labels("bench", catalog.names, store.labels(), catalog.seed_texts())
    return clf


def load(path: Path, min_per_label: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    counts = Counter(r["label"] for r in rows)
    rows = [r for r in rows if counts[r["label"]] >= min_per_label]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def run_set(name: str, texts: list[str], labels: list[str], sizes: Sequence[int], args, fit: Fit) -> list[dict]:
    departments = sorted(set(labels))
    gold = np.asarray(labels, dtype=object)
    rows = []
    for n_labels in sizes:
        n_calibration = round(n_labels * args.calibration_share)
        n_train = n_labels - n_calibration
        if len(texts) - n_labels < MIN_TEST_TICKETS:
            print(f"  {name}: {n_labels} labels leave fewer than {MIN_TEST_TICKETS} test tickets; skipped", flush=True)
            continue
        for model_seed in range(args.models):
            rng = np.random.default_rng([model_seed, n_labels])
            order = rng.permutation(len(texts))
            train, unseen = order[:n_train], order[n_train:]
            started = time.perf_counter()
            clf = fit([texts[i] for i in train], [labels[i] for i in train], departments)
            fit_seconds = time.perf_counter() - started
            probs = clf.predict_proba([texts[i] for i in unseen]).probs
            top = probs.argmax(axis=1)
            score = probs[np.arange(len(unseen)), top]
            predicted = np.asarray(clf.departments, dtype=object)[top]
            correct = predicted == gold[unseen]
            print(f"  {name}: {n_labels} labels ({n_train} train / {n_calibration} calibration), model {model_seed}: "
                  f"{getattr(clf, 'method', type(clf).__name__)}, fitted in {fit_seconds:.1f} s, accuracy on unseen {correct.mean():.3f}", flush=True)
            for split in range(args.splits):
                perm = np.random.default_rng([model_seed, n_labels, split, 1]).permutation(len(unseen))
                cal, test = perm[:n_calibration], perm[n_calibration:]
                for target in args.targets:
                    for variant, min_rows in (("global", 0), ("per-department", args.min_department_rows)):
                        thresholds = choose_department_thresholds(score[cal], correct[cal], predicted[cal], target, args.confidence, min_rows)
                        cut = np.array([thresholds.threshold_for(d) for d in predicted[test]], dtype=float)  # None -> nan: never auto
                        auto = score[test] >= cut
                        rows.append({"set": name, "labels": n_labels, "train": n_train, "calibration": n_calibration, "model": model_seed,
                                     "split": split, "target": target, "confidence": args.confidence, "variant": variant,
                                     "accuracy": round(float(correct.mean()), 4), "calibration_coverage": round(thresholds.coverage, 4),
                                     "test": int(len(test)), "auto": int(auto.sum()), "right": int(correct[test][auto].sum()),
                                     "coverage": round(float(auto.mean()), 4),
                                     "precision": round(float(correct[test][auto].mean()), 4) if auto.any() else None})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["labels"], r["target"], r["variant"]), []).append(r)
    out = []
    for (name, n_labels, target, variant), rs in groups.items():
        coverage = np.array([r["coverage"] for r in rs])
        routed = [r for r in rs if r["auto"]]
        kept = sum(r["precision"] is None or r["precision"] >= r["target"] for r in rs)
        # a miss the test part proves: even the exact upper bound on its precision is below the target
        upper = 1 - clopper_pearson_lower([r["auto"] - r["right"] for r in routed], [r["auto"] for r in routed], rs[0]["confidence"])
        proven_misses = int(np.sum(upper < target))
        out.append({"set": name, "labels": n_labels, "train": rs[0]["train"], "calibration": rs[0]["calibration"], "target": target,
                    "confidence": rs[0]["confidence"], "variant": variant, "splits": len(rs), "kept": kept / len(rs),
                    "proven_misses": proven_misses / len(rs),
                    "off": sum(not r["auto"] for r in rs) / len(rs), "coverage_mean": float(coverage.mean()), "coverage_sd": float(coverage.std()),
                    "precision_mean": float(np.mean([r["precision"] for r in routed])) if routed else None,
                    "auto_tickets_mean": float(np.mean([r["auto"] for r in rs])), "accuracy": float(np.mean([r["accuracy"] for r in rs]))})
    return out


def table(summary: list[dict]) -> str:
    """One row per set, number of labels and target: the global threshold, and the per-department thresholds."""
    by_key = {(s["set"], s["labels"], s["target"], s["variant"]): s for s in summary}
    lines = ["| set | labels (train / calibration) | model accuracy | target | splits | precision >= target (proven below) | auto-routing off | "
             "coverage (share auto-routed), mean ± sd | realised precision, mean | per department: precision >= target (proven below) | "
             "per department: coverage |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted((k for k in by_key if k[3] == "global"), key=lambda k: (k[0], -k[2], k[1])):
        cells = [f"{key[0]}"]
        for variant in ("global", "per-department"):
            s = by_key.get((*key[:3], variant))
            kept = f"{s['kept']:.0%} ({s['proven_misses']:.0%})"
            coverage = f"{s['coverage_mean']:.3f} ± {s['coverage_sd']:.3f}"
            if variant == "global":
                precision = f"{s['precision_mean']:.3f}" if s["precision_mean"] is not None else "—"
                cells += [f"{s['labels']} ({s['train']} / {s['calibration']})", f"{s['accuracy']:.3f}", f"{s['target']:.2f}", str(s["splits"]),
                          kept, f"{s['off']:.0%}", coverage, precision]
            else:
                cells += [kept, coverage]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, fit: Fit = fit_instant) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the sets' dev.jsonl (default: %(default)s)")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["shanghai", "dalian", "tipdm"], help="default: %(default)s")
    parser.add_argument("--labels", type=int, nargs="+", default=[200, 400, 800, 1600], help="numbers of gold labels (default: %(default)s)")
    parser.add_argument("--calibration-share", type=float, default=0.2,
                        help="share of the labels held out to calibrate (default: %(default)s, as EVAL_FRACTION)")
    parser.add_argument("--models", type=int, default=3,
                        help="models fitted per set and number of labels, on different random labels (default: %(default)s)")
    parser.add_argument("--splits", type=int, default=10, help="calibration/test splits per model (default: %(default)s)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.9], help="target precisions (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="default: %(default)s")
    parser.add_argument("--min-department-rows", type=int, default=100,
                        help="calibration rows a department needs for its own threshold (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write every split's result and the summary here (JSON)")
    args = parser.parse_args(argv)

    rows = []
    for name in args.sets:
        path, min_per_label = SETS[name]
        texts, labels = load(args.data / path, min_per_label)
        print(f"{name}: {len(texts)} tickets, {len(set(labels))} units with >= {min_per_label} tickets", flush=True)
        rows += run_set(name, texts, labels, args.labels, args, fit)
    summary = summarize(rows)
    print(table(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": settings, "summary": summary, "splits": rows}, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
