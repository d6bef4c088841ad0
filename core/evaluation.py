"""Scores a model on the frozen evaluation split: the numbers the promotion gate compares and people read."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.classifier import Classifier

if TYPE_CHECKING:
    from core.routing import AutoRouting

ECE_BINS = 15  # Guo et al. 2017's choice: fine enough to see over-confidence, coarse enough for a few hundred rows


class GoldLabel(Protocol):
    text: str
    department: str


def evaluate(clf: Classifier, held_out: Sequence[GoldLabel], routing: AutoRouting | None = None, rows: bool = False) -> dict:
    """The report of `clf` on held-out gold labels: the one routine behind the promotion gate, the instant model's
    scores and every benchmark. Labels of departments the classifier does not know are left out.

    ``ece`` is the expected calibration error of the top-1 probabilities: how far the score annotators see and
    auto-routing trusts is from the accuracy it claims.

    With `routing`, the report also holds the version's auto-routing thresholds (``"routing"``), proven on these
    rows: they are its calibration rows, which it never trained on. With `rows`, ``"correct"`` says for each row
    whether the classifier answered it right (to compare two classifiers row by row)."""
    known = set(clf.departments)
    held_out = [label for label in held_out if label.department in known]
    if not held_out:
        report = {**classification_report([], []), "ece": None, **({"correct": []} if rows else {})}
        return {**report, "routing": routing.thresholds([], []).to_dict()} if routing else report
    probs = clf.predict_proba([label.text for label in held_out]).probs
    top = probs.argmax(axis=1)
    gold = [label.department for label in held_out]
    predicted = [clf.departments[i] for i in top]
    correct = [g == p for g, p in zip(gold, predicted)]
    report = {**classification_report(gold, predicted), "ece": round(expected_calibration_error(probs.max(axis=1), correct), 4)}
    if routing is not None:
        report["routing"] = routing.thresholds(probs.max(axis=1), correct, predicted).to_dict()
    if rows:
        report["correct"] = correct
    return report


def expected_calibration_error(probs_top1: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the top-1
    probabilities are put into `bins` equal-width bins (0, 1/bins], ..., and each bin's gap between its accuracy and
    its mean probability is weighted by its share of the rows. 0 when a probability of p is right p of the time."""
    p = np.asarray(probs_top1, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if len(p) != len(hit) or not len(p):
        raise ValueError("need one correct flag per probability, and at least one")
    which = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    gap = np.abs(np.bincount(which, hit, minlength=bins) - np.bincount(which, p, minlength=bins))
    return float(gap.sum() / len(p))  # sum over bins of n_b/n * |acc_b - conf_b| = sum |hits_b - probs_b| / n


def classification_report(gold: Sequence[str], predicted: Sequence[str], top_confusions: int = 10) -> dict:
    """Accuracy, macro precision/recall/F1, per-department F1 and the most confused (gold, predicted) pairs.

    Macro averages run over the departments present in the gold labels, so a department the split has no
    example of cannot drag the score down or up."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if len(gold) != len(predicted):
        raise ValueError("gold and predicted must have the same length")
    if not gold:
        return {"n": 0, "accuracy": None, "macro_precision": None, "macro_recall": None, "macro_f1": None,
                "per_department": {}, "confused_pairs": []}
    present = sorted(set(gold))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=present, average=None, zero_division=0)
    per_department = {
        d: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
        for d, p, r, f, s in zip(present, precision, recall, f1, support)
    }
    confusions = Counter((g, p) for g, p in zip(gold, predicted) if g != p)
    return {
        "n": len(gold),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "macro_precision": round(float(precision.mean()), 4),
        "macro_recall": round(float(recall.mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "per_department": per_department,
        "confused_pairs": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(top_confusions)],
    }
