"""Finding label errors: the quality report's ranking against the usual out-of-fold LinearSVC margin, on real
labelled sets with injected label noise.

    nice -n 10 .venv/bin/python -m bench.noise --out bench/results/noise.json

Each set (units with at least --min-per-label letters) gets 5 % and 10 % of its labels replaced by a uniformly
random other label of the set (seeded). Both rankings see the same noisy labels; precision@K is the share of
injected errors among the K most doubted labels, K being the number injected. Ours is the product path
(tools.quality.cross_validate: the instant model's SVM with the department names as seed texts, texts grouped in
folds, then each SuspectRanking method); the reference is 5-fold out-of-fold TF-IDF char 1-3 + LinearSVC ranked
by the margin of its decision scores, score(predicted) - score(gold).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from statistics import mean, pstdev

from tools.quality import SuspectRanking, cross_validate, labels_from_rows, rank_suspects

DATA = Path("../shared/data")
SETS = {"shanghai": "shanghai_xinfang/dev.jsonl", "dalian": "dalian_gov/dev.jsonl", "tipdm": "tipdm2020c/dev.jsonl"}
FOLDS = 5
REFERENCE = "reference: OOF LinearSVC, margin"
BEFORE = "before: p(predicted) - p(gold)"  # the report's ranking before issue 10, on the tempered softmax


def load(path: Path, min_per_label: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    counts = Counter(r["label"] for r in rows)
    return [r for r in rows if counts[r["label"]] >= min_per_label]


def inject_noise(rows: list[dict], rate: float, seed: int) -> tuple[list[dict], set[str]]:
    """A copy of `rows` with round(rate * n) labels replaced by another label of the set, and the ids changed."""
    rng = random.Random(seed)
    labels = sorted({r["label"] for r in rows})
    flipped = set(rng.sample(range(len(rows)), round(rate * len(rows))))
    noisy = [{**r, "label": rng.choice([l for l in labels if l != r["label"]])} if i in flipped else r
             for i, r in enumerate(rows)]
    return noisy, {rows[i]["id"] for i in flipped}


def reference_ranking(rows: list[dict], seed: int) -> list[str]:
    """Ids, most doubted first: the textbook recipe the issue measured against."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    texts, gold = [r["text"] for r in rows], np.array([r["label"] for r in rows])
    margin = np.zeros(len(rows))
    for train, test in StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed).split(texts, gold):
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
        svm = LinearSVC(C=1.0, random_state=0).fit(vectorizer.fit_transform([texts[i] for i in train]), gold[train])
        scores = svm.decision_function(vectorizer.transform([texts[i] for i in test]))
        # A unit with fewer rows than folds can be missing from a fold's training rows: the SVM has no score for it,
        # so its label gets the fold's lowest score (no evidence for it), as cleanlab gives such a class probability 0.
        seen = np.isin(gold[test], svm.classes_)
        gold_score = scores.min(axis=1)
        gold_score[seen] = scores[np.flatnonzero(seen), np.searchsorted(svm.classes_, gold[test][seen])]
        margin[test] = scores.max(axis=1) - gold_score
    return [rows[i]["id"] for i in sorted(range(len(rows)), key=lambda i: (-margin[i], i))]


def precision_at_k(ranked_ids: list[str], errors: set[str]) -> float:
    return len(set(ranked_ids[:len(errors)]) & errors) / len(errors)


def measure(name: str, rows: list[dict], rate: float, seed: int) -> dict:
    """One run: `rate` of the labels of `rows` flipped with `seed`, precision@K of every ranking and the reference."""
    noisy, errors = inject_noise(rows, rate, seed)
    labels, ids = labels_from_rows(noisy)
    started = time.perf_counter()
    judged, _, _ = cross_validate(labels, sorted({l.department for l in labels}), FOLDS, seed)
    ours_seconds = time.perf_counter() - started
    run = {"set": name, "rate": rate, "seed": seed, "errors": len(errors), "ours_seconds": round(ours_seconds, 1)}
    for method in SuspectRanking.METHODS:
        ranked = [ids[j.label.annotation_id] for j, _ in rank_suspects(judged, method)]
        run[method] = round(precision_at_k(ranked, errors), 4)
    before = sorted((j for j in judged if j.predicted != j.label.department),
                    key=lambda j: (j.p_gold - j.p_predicted, j.label.annotation_id))
    run[BEFORE] = round(precision_at_k([ids[j.label.annotation_id] for j in before], errors), 4)
    started = time.perf_counter()
    run[REFERENCE] = round(precision_at_k(reference_ranking(noisy, seed), errors), 4)
    run["reference_seconds"] = round(time.perf_counter() - started, 1)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS), help="labelled sets (default: all)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the sets (default: %(default)s)")
    parser.add_argument("--min-per-label", type=int, default=20, help="keep units with at least this many letters (default: %(default)s)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.10], help="noise rates (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise and fold seeds (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write every run and the summary as JSON here")
    args = parser.parse_args(argv)

    methods = [*SuspectRanking.METHODS, BEFORE, REFERENCE]
    runs = []
    for name in args.sets:
        rows = load(args.data / SETS[name], args.min_per_label)
        print(f"{name}: {len(rows)} rows, {len({r['label'] for r in rows})} labels", flush=True)
        for rate in args.rates:
            for seed in args.seeds:
                run = measure(name, rows, rate, seed)
                runs.append(run)
                print(json.dumps(run, ensure_ascii=False), flush=True)

    summary = []
    print("\n| set | noise | K | " + " | ".join(methods) + " |\n|---|---|---|" + "---|" * len(methods))
    for name in args.sets:
        for rate in args.rates:
            group = [r for r in runs if r["set"] == name and r["rate"] == rate]
            row = {"set": name, "rate": rate, "errors": group[0]["errors"],
                   **{m: [round(mean(r[m] for r in group), 4), round(pstdev(r[m] for r in group), 4)] for m in methods}}
            summary.append(row)
            print(f"| {name} | {rate:.0%} | {row['errors']} | " + " | ".join(f"{row[m][0]:.3f} ± {row[m][1]:.3f}" for m in methods) + " |")
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
