"""A label-quality report for the team: which gold labels a cross-validated model doubts, which departments are
confused with each other, and how often annotators agree when they label the same ticket.

The model is the instant linear SVM (learning/instant_model.py): it refits in a fraction of a second, so K folds
cost seconds even for thousands of labels. A doubted label is not necessarily wrong; it is the best place to
start a review.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from html import escape
from pathlib import Path
from statistics import mean

from core.settings import Settings, SettingsError
from core.store import StoredLabel, StoreMissing, open_store
from learning.instant_model import LinearSvmClassifier

TEXT_CHARS = 200
TOP_PAIRS = 20
UNKNOWN_ANNOTATOR = "unknown"


# -- cross-validation --------------------------------------------------------------------------------------------
def _cross_validate(labels: Sequence[StoredLabel], departments: Sequence[str], folds: int, seed: int
                    ) -> tuple[list[tuple[StoredLabel, str, float, float]], int, str | None]:
    """(judged, folds used, note): each judged label with the department predicted by a model fitted on the other
    folds, that model's probability for it and its probability for the gold department.

    Identical texts share a fold, so a copy cannot vouch for itself. A department's only label trains in every
    fold and is not judged: a model that never saw the department could not predict it."""
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    counts = Counter(label.department for label in labels)
    judged = [label for label in labels if counts[label.department] >= 2]
    always_train = [label for label in labels if counts[label.department] < 2]
    if len(counts) < 2:
        return [], 0, "cross-validation skipped: it needs gold labels of at least 2 departments"
    folds_used = min(folds, max((counts[label.department] for label in judged), default=0),
                     len({label.text_key for label in judged}))
    if folds_used < 2:
        return [], 0, "cross-validation skipped: no department has 2 labels with different texts yet"
    space = tuple(dict.fromkeys([*departments, *sorted(counts)]))
    column = {department: i for i, department in enumerate(space)}
    splitter = StratifiedGroupKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "fewer members than n_splits" is expected for small departments
        for train_rows, held_out_rows in splitter.split(judged, [l.department for l in judged], [l.text_key for l in judged]):
            train = always_train + [judged[i] for i in train_rows]
            model = LinearSvmClassifier("quality-cv", space).fit(
                [l.text for l in train], [l.department for l in train], seed_texts={d: d for d in space})
            held_out = [judged[i] for i in held_out_rows]
            for label, probs in zip(held_out, model.predict_proba([l.text for l in held_out]).probs):
                best = int(np.argmax(probs))
                results.append((label, space[best], float(probs[best]), float(probs[column[label.department]])))
    note = (f"cross-validated with {folds_used} folds instead of {folds}: there are too few labels per department"
            if folds_used < folds else None)
    return results, folds_used, note


def _suspected_errors(judged) -> list[dict]:
    doubted = [(label, predicted, p_predicted, p_gold) for label, predicted, p_predicted, p_gold in judged
               if predicted != label.department]
    doubted.sort(key=lambda item: (item[3] - item[2], item[0].annotation_id))
    return [{"annotation_id": label.annotation_id, "task_id": label.task_id, "text": label.text[:TEXT_CHARS],
             "gold": label.department, "predicted": predicted, "p_predicted": round(p_predicted, 4),
             "p_gold": round(p_gold, 4), "annotator": label.annotator}
            for label, predicted, p_predicted, p_gold in doubted]


def _confusable_pairs(judged) -> list[dict]:
    confusions = Counter((label.department, predicted) for label, predicted, _, _ in judged if predicted != label.department)
    pairs = {tuple(sorted(pair)) for pair in confusions}
    rows = []
    for a, b in pairs:
        if confusions[(a, b)] < confusions[(b, a)]:  # name the direction with more confusions first
            a, b = b, a
        rows.append({"a": a, "b": b, "a_predicted_as_b": confusions[(a, b)], "b_predicted_as_a": confusions[(b, a)],
                     "total": confusions[(a, b)] + confusions[(b, a)]})
    rows.sort(key=lambda row: (-row["total"], row["a"], row["b"]))
    return rows[:TOP_PAIRS]


# -- agreement between annotators --------------------------------------------------------------------------------
def _multiply_labelled(labels: Sequence[StoredLabel]) -> list[list[StoredLabel]]:
    """Groups of labels of one ticket, a ticket being a task, or a text met again in another task or project."""
    parent = list(range(len(labels)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, label in enumerate(labels):
        for key in (("task", label.project_id, label.task_id), ("text", label.text_key)):
            parent[root(i)] = root(first.setdefault(key, i))
    groups: dict[int, list[StoredLabel]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[root(i)].append(label)
    return [group for group in groups.values() if len(group) > 1]


def _kappa(observed: float, expected: float) -> float | None:
    """Agreement beyond chance; undefined when chance alone agrees always (everyone used one department)."""
    return round((observed - expected) / (1 - expected), 4) if expected < 1 else None


def _cohen_kappa(tickets: list[list[StoredLabel]], pair: Sequence[str]) -> float | None:
    """Cohen's kappa of two annotators over the tickets both labelled (an annotator's latest label counts)."""
    answers = []
    for ticket in tickets:
        latest = {(l.annotator or UNKNOWN_ANNOTATOR): l.department for l in sorted(ticket, key=lambda l: l.seq)}
        if all(who in latest for who in pair):
            answers.append((latest[pair[0]], latest[pair[1]]))
    if not answers:
        return None
    first, second = Counter(a for a, _ in answers), Counter(b for _, b in answers)
    expected = sum(first[d] * second[d] for d in first) / len(answers) ** 2
    return _kappa(sum(a == b for a, b in answers) / len(answers), expected)


def annotator_agreement(labels: Sequence[StoredLabel]) -> dict:
    """Agreement on tickets with more than one label.

    pairwise_agreement: share of agreeing pairs among all pairs of labels of the same ticket.
    fleiss_kappa: Fleiss' kappa, in its form for tickets with different numbers of labels (mean per-ticket pair
    agreement against the chance agreement of the pooled department shares). It ignores who labelled, so it
    works for any number of annotators.
    cohen_kappa: Cohen's kappa, given only when exactly two annotators labelled these tickets; it takes each
    annotator's own department shares as chance. Kappas are None when undefined (one department throughout)."""
    tickets = _multiply_labelled(labels)
    agreeing = pairs = 0
    per_ticket, pooled, disagreements = [], Counter(), []
    for ticket in tickets:
        counts = Counter(label.department for label in ticket)
        n = len(ticket)
        same = sum(c * (c - 1) for c in counts.values())
        agreeing, pairs = agreeing + same // 2, pairs + n * (n - 1) // 2
        per_ticket.append(same / (n * (n - 1)))
        pooled.update(counts)
        if len(counts) > 1:
            disagreements.append({"project_id": ticket[0].project_id, "task_id": ticket[0].task_id, "text": ticket[0].text[:TEXT_CHARS],
                                  "labels": [{"annotation_id": l.annotation_id, "task_id": l.task_id, "annotator": l.annotator,
                                              "department": l.department} for l in ticket]})
    annotators = sorted({label.annotator or UNKNOWN_ANNOTATOR for ticket in tickets for label in ticket})
    total = sum(pooled.values())
    return {
        "tickets": len(tickets),
        "labels": total,
        "annotators": annotators,
        "pairwise_agreement": round(agreeing / pairs, 4) if pairs else None,
        "fleiss_kappa": _kappa(mean(per_ticket), sum((c / total) ** 2 for c in pooled.values())) if tickets else None,
        "cohen_kappa": _cohen_kappa(tickets, annotators) if len(annotators) == 2 else None,
        "disagreements": disagreements,
    }


# -- the report --------------------------------------------------------------------------------------------------
def quality_report(labels: Sequence[StoredLabel], departments: Sequence[str], folds: int = 5, seed: int = 0) -> dict:
    """Suspected label errors, confusable department pairs and annotator agreement (see annotator_agreement).

    suspected_errors: labels whose gold department differs from the prediction of a LinearSvmClassifier fitted
    on the other folds (seed texts: the department names), the most doubted first (the model's probability for
    its prediction minus its probability for the gold department). confusable_pairs: the department pairs most
    often mistaken for each other in those predictions, both directions counted. With too few labels the
    cross-validation runs fewer folds or is skipped; summary["notes"] says so."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    judged, folds_used, note = _cross_validate(labels, departments, folds, seed)
    suspected = _suspected_errors(judged)
    return {
        "summary": {
            "labels": len(labels),
            "departments": len({label.department for label in labels}),
            "judged": len(judged),
            "folds": folds_used,
            "cv_accuracy": round(1 - len(suspected) / len(judged), 4) if judged else None,
            "suspected_errors": len(suspected),
            "notes": [note] if note else [],
        },
        "suspected_errors": suspected,
        "confusable_pairs": _confusable_pairs(judged),
        "annotator_agreement": annotator_agreement(labels),
    }


def _cell(value) -> str:
    if value is None:
        return ""
    return escape(f"{value:.3f}" if isinstance(value, float) else str(value))


def _table(headers: Sequence[str], rows: list[Sequence]) -> str:
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(report: dict) -> str:
    summary, agreement = report["summary"], report["annotator_agreement"]
    notes = "".join(f"<li>{escape(note)}</li>" for note in summary["notes"])
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Label quality report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}</style>
</head><body>
<h1>Label quality report</h1>
{_table(["measure", "value"], [(k, v) for k, v in summary.items() if k != "notes"])}
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Suspected label errors</h2>
<p>The gold department differs from what a model trained on the other labels predicts. The most doubted come first;
check them in Label Studio and correct those that are wrong.</p>
{_table(["annotation", "task", "text", "gold", "predicted", "p(predicted)", "p(gold)", "annotator"],
        [(e["annotation_id"], e["task_id"], e["text"], e["gold"], e["predicted"], e["p_predicted"], e["p_gold"], e["annotator"])
         for e in report["suspected_errors"]])}
<h2>Most confused department pairs</h2>
<p>Candidates for clearer guidelines or merged choices.</p>
{_table(["department A", "department B", "A predicted as B", "B predicted as A", "total"],
        [(p["a"], p["b"], p["a_predicted_as_b"], p["b_predicted_as_a"], p["total"]) for p in report["confusable_pairs"]])}
<h2>Annotator agreement</h2>
{_table(["measure", "value"], [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in agreement.items() if k != "disagreements"])}
<h3>Tickets the annotators disagree on</h3>
{_table(["project", "task", "text", "labels"],
        [(d["project_id"], d["task_id"], d["text"],
          "; ".join(f"{l['department']} ({l['annotator'] or UNKNOWN_ANNOTATOR}, #{l['annotation_id']})" for l in d["labels"]))
         for d in agreement["disagreements"]])}
</body></html>
"""


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """quality_report.json and a self-contained quality_report.html in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "quality_report.json", out_dir / "quality_report.html"
    json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    html_path.write_text(_html(report), encoding="utf-8")
    return json_path, html_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend quality-report",
        description="Check the gold labels of the store under MODEL_DIR: labels a cross-validated model doubts "
        "(suspected errors, most doubted first), the department pairs most often confused, and how well annotators "
        "agree on tickets labelled more than once. Writes quality_report.json and quality_report.html.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--project", type=int, metavar="ID", help="only this Label Studio project's labels (default: all projects)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, at least 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(settings, must_exist=True)
    except StoreMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = store.labels(project_id=args.project)
    if not labels:
        where = f"project {args.project}" if args.project is not None else "the store"
        print(f"error: {where} has no gold labels yet: annotate tasks in Label Studio first", file=sys.stderr)
        return 2
    project = store.project(args.project) if args.project is not None else None
    departments = project.departments if project is not None and project.departments else sorted({l.department for l in labels})
    report = quality_report(labels, departments, args.folds, args.seed)
    json_path, html_path = write_report(report, args.out)
    summary, agreement = report["summary"], report["annotator_agreement"]
    print(f"{summary['labels']} labels, {summary['departments']} departments: {summary['suspected_errors']} suspected errors"
          f" among {summary['judged']} cross-validated labels (accuracy {summary['cv_accuracy']})")
    print(f"tickets labelled more than once: {agreement['tickets']} (pairwise agreement {agreement['pairwise_agreement']},"
          f" Fleiss' kappa {agreement['fleiss_kappa']}, disagreements: {len(agreement['disagreements'])})")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"report: {html_path} (data: {json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
