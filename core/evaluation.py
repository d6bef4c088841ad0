"""Scores a model on the frozen evaluation split: the numbers the promotion gate compares and people read."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from core.classifier import Classifier

if TYPE_CHECKING:
    from core.routing import AutoRouting


class GoldLabel(Protocol):
    text: str
    department: str


def evaluate(clf: Classifier, held_out: Sequence[GoldLabel], routing: AutoRouting | None = None) -> dict:
    """The report of `clf` on held-out gold labels: the one routine behind the promotion gate, the instant model's
    scores and every benchmark. Labels of departments the classifier does not know are left out.

    With `routing`, the report also holds the version's auto-routing thresholds (``"routing"``), proven on these
    rows: they are its calibration rows, which it never trained on."""
    known = set(clf.departments)
    held_out = [label for label in held_out if label.department in known]
    if not held_out:
        report = classification_report([], [])
        return {**report, "routing": routing.thresholds([], []).to_dict()} if routing else report
    probs = clf.predict_proba([label.text for label in held_out]).probs
    top = probs.argmax(axis=1)
    gold = [label.department for label in held_out]
    predicted = [clf.departments[i] for i in top]
    report = classification_report(gold, predicted)
    if routing is not None:
        correct = [g == p for g, p in zip(gold, predicted)]
        report["routing"] = routing.thresholds(probs.max(axis=1), correct, predicted).to_dict()
    return report


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
