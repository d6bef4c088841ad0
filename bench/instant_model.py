"""The instant model against the dataset READMEs' TF-IDF + LinearSVC baseline, on a real labelled set.

    .venv/bin/python -m bench.instant_model --data ../shared/data/shanghai_xinfang/dev.jsonl --min-per-label 20

Both see the same stratified 80 % as gold labels and are scored on the same 20 %. The instant model goes through
the product's own path: the labels enter a label store (which freezes a fifth of them as its evaluation split),
the method is picked on that split and refitted on every label (``learning.instant_model.fit_on_labels``), exactly as
in the service.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from core.classifier import summarize
from tools.evaluate import fit_like_the_service


def load(path: Path, min_per_label: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    counts = Counter(r["label"] for r in rows)
    rows = [r for r in rows if counts[r["label"]] >= min_per_label]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def baseline(train_x, train_y, test_x):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    return list(LinearSVC(C=1.0).fit(vectorizer.fit_transform(train_x), train_y).predict(vectorizer.transform(test_x)))


def instant(train_x, train_y, test_x, departments):
    clf, metrics, fit_seconds = fit_like_the_service(train_x, train_y, departments)
    predicted = [p.department for p in summarize(clf.predict_proba(test_x), clf.departments, k=1)]
    return predicted, {"method": clf.method, "fit_seconds": round(fit_seconds, 2),
                       "store_split": {"train": metrics["train_labels"], "eval": metrics["n"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instant_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/shanghai_xinfang/dev.jsonl"), help="labelled JSONL with text and label")
    parser.add_argument("--min-per-label", type=int, default=20, help="keep units with at least this many letters (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="split seeds; one row each (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    texts, labels = load(args.data, args.min_per_label)
    departments = sorted(set(labels))
    print(f"{args.data}: {len(texts)} letters, {len(departments)} units with >= {args.min_per_label} letters; 80/20 stratified split")
    print("| seed | model | accuracy | macro-F1 | notes |\n|---|---|---|---|---|")
    results = []
    for seed in args.seeds:
        train_x, test_x, train_y, test_y = train_test_split(texts, labels, test_size=0.2, stratify=labels, random_state=seed)
        rows = {"baseline: char 1-3 TF-IDF + LinearSVC": (baseline(train_x, train_y, test_x), {})}
        predicted, notes = instant(train_x, train_y, test_x, departments)
        rows["instant model (product path)"] = (predicted, notes)
        for name, (pred, info) in rows.items():
            acc, f1 = accuracy_score(test_y, pred), f1_score(test_y, pred, average="macro")
            results.append({"seed": seed, "model": name, "accuracy": round(acc, 4), "macro_f1": round(f1, 4), **info})
            print(f"| {seed} | {name} | {acc:.4f} | {f1:.4f} | {json.dumps(info, ensure_ascii=False) if info else ''} |")
    if args.out:
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
