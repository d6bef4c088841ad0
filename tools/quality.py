"""A label-quality report for the team: which gold labels a cross-validated model doubts, which departments are
confused with each other, and how often annotators agree when they label the same ticket.

The model is the instant linear SVM (learning/instant_model.py): it refits in a fraction of a second, so K folds
cost seconds even for thousands of labels. Doubted labels are ranked as confident learning ranks them (Northcutt,
Jiang and Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, and cleanlab's
label-quality scores). A doubted label is not necessarily wrong; it is the best place to start a review.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from statistics import mean

from core.settings import Settings, SettingsError
from core.store import StoredLabel, StoreMissing, open_store, text_key
from learning.instant_model import LinearSvmClassifier, newest_per_department

TEXT_CHARS = 200
TOP_PAIRS = 20
UNKNOWN_ANNOTATOR = "unknown"
SCORE_CHUNK = 2048  # held-out rows scored at a time: a chunk x departments block, never all tickets at once
HTML_SUSPECTS = 500  # suspects shown in the HTML (all of them are in the JSON)
PAGE_ROWS = 50


# -- cross-validation --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judged:
    """A label and what a model fitted on the other folds makes of its text."""
    label: StoredLabel
    predicted: str
    p_predicted: float  # the served model's (tempered softmax) probabilities, as annotators see them
    p_gold: float
    gold_score: float  # decision scores before the softmax: what the ranking uses
    best_other_score: float


class SuspectRanking:
    """How doubtful gold labels are, from out-of-fold decision scores; higher is more doubtful. One method per
    measure, like small-text's query strategies; `doubts` scores a set of labels by name.

    Self-confidence and normalized margin are confident learning's label-quality scores (Northcutt et al. 2021;
    cleanlab's rank module) with the sign flipped. They are computed on the SVM's decision scores rather than on its
    probabilities: the tempered softmax saturates at 0 and 1, so p(predicted) - p(gold) ties the confident mistakes
    that matter most. Neither wins everywhere (Kuan & Mueller 2022 compare them across datasets): self-confidence
    is fooled by a long tail, whose small departments' scores are low for their own correct labels too, the margin
    by a department the model confuses with a strong neighbour. The rank average asks both."""
    METHODS = ("rank_average", "self_confidence", "normalized_margin")

    @staticmethod
    def normalized_margin(judged: Judged) -> float:
        """The best other department's score above the gold one's (cleanlab: p(gold) - max other p)."""
        return judged.best_other_score - judged.gold_score

    @staticmethod
    def self_confidence(judged: Judged) -> float:
        """How little the gold department's one-vs-rest score believes in the label (cleanlab: p(gold))."""
        return -judged.gold_score

    @classmethod
    def rank_average(cls, judged: Sequence[Judged]) -> list[float]:
        """The mean of each label's place (0 to 1) in the self-confidence and the normalized-margin rankings."""
        from scipy.stats import rankdata

        places = [(rankdata([measure(j) for j in judged]) - 1) / max(len(judged) - 1, 1)
                  for measure in (cls.self_confidence, cls.normalized_margin)]
        return list((places[0] + places[1]) / 2)

    @classmethod
    def doubts(cls, method: str, judged: Sequence[Judged]) -> list[float]:
        if method not in cls.METHODS:
            raise ValueError(f"unknown ranking {method!r}; choose one of {', '.join(cls.METHODS)}")
        if method == "rank_average":
            return cls.rank_average(judged) if judged else []
        return [getattr(cls, method)(j) for j in judged]


# On the dev sets with 5 % and 10 % of labels flipped, the rank average's first K held at least as many of them as the
# reference (out-of-fold LinearSVC ranked by margin) on every row; self-confidence alone did not on the 549 Shanghai
# units at 5 % (BENCHMARKS.md section 9).
DEFAULT_RANKING = "rank_average"


def _judge(model: LinearSvmClassifier, held_out: Sequence[StoredLabel], column: dict[str, int]) -> list[Judged]:
    import numpy as np

    judged = []
    for start in range(0, len(held_out), SCORE_CHUNK):
        chunk = held_out[start:start + SCORE_CHUNK]
        scores = model.decision_scores([label.text for label in chunk])
        probs = model.probabilities(scores)
        for label, row, p in zip(chunk, scores, probs):
            best, gold = int(np.argmax(row)), column[label.department]
            others = np.delete(row, gold)
            judged.append(Judged(label, model.departments[best], float(p[best]), float(p[gold]), float(row[gold]),
                                 float(others.max())))
    return judged


def cross_validate(labels: Sequence[StoredLabel], departments: Sequence[str], folds: int, seed: int,
                   max_train_labels: int | None = None) -> tuple[list[Judged], int, str | None]:
    """(judged, folds used, note): each judged label with what a model fitted on the other folds makes of it.

    Identical texts share a fold, so a copy cannot vouch for itself. A department's only label trains in every
    fold and is not judged: a model that never saw the department could not predict it. With `max_train_labels`,
    each fold's model learns at most that many of the other folds' labels, newest per department, as a refit does
    (``newest_per_department``): at 10^5 labels and more, every label is still judged, by a fit of bounded cost."""
    import warnings

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
            if max_train_labels and len(train) > max_train_labels:
                train = newest_per_department(train, max_train_labels)
            model = LinearSvmClassifier("quality-cv", space).fit(
                [l.text for l in train], [l.department for l in train], seed_texts={d: d for d in space})
            results += _judge(model, [judged[i] for i in held_out_rows], column)
    note = (f"cross-validated with {folds_used} folds instead of {folds}: there are too few labels per department"
            if folds_used < folds else None)
    return results, folds_used, note


def rank_suspects(judged: Sequence[Judged], ranking: str = DEFAULT_RANKING) -> list[tuple[Judged, float]]:
    """The labels whose out-of-fold prediction is another department, most doubtful first, with their doubt."""
    disputed = [j for j in judged if j.predicted != j.label.department]
    doubted = list(zip(disputed, SuspectRanking.doubts(ranking, disputed)))
    doubted.sort(key=lambda item: (-item[1], item[0].label.annotation_id))
    return doubted


def _suspected_errors(judged: Sequence[Judged], ranking: str, ids: Mapping[int, str] | None) -> list[dict]:
    """With `ids` (labels read from a file), each suspect carries its row's id instead of the store's identities."""
    suspects = []
    for j, doubt in rank_suspects(judged, ranking):
        where = ({"id": ids[j.label.annotation_id]} if ids is not None else
                 {"annotation_id": j.label.annotation_id, "project_id": j.label.project_id, "task_id": j.label.task_id})
        suspects.append({**where, "text": j.label.text[:TEXT_CHARS], "gold": j.label.department, "predicted": j.predicted,
                         "doubt": round(doubt, 4), "p_predicted": round(j.p_predicted, 4), "p_gold": round(j.p_gold, 4),
                         **({} if ids is not None else {"annotator": j.label.annotator})})
    return suspects


def _confusable_pairs(judged: Sequence[Judged]) -> list[dict]:
    confusions = Counter((j.label.department, j.predicted) for j in judged if j.predicted != j.label.department)
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
    """Tickets labelled by more than one annotator, each annotator's latest label once; a ticket is a task, or a
    text met again in another task or project. One annotator meeting the same text twice is not agreement
    between annotators, so such copies count once."""
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
    groups: dict[int, dict[str, StoredLabel]] = defaultdict(dict)
    for i, label in sorted(enumerate(labels), key=lambda item: item[1].seq):
        groups[root(i)][label.annotator or UNKNOWN_ANNOTATOR] = label
    return [list(latest.values()) for latest in groups.values() if len(latest) > 1]


def _kappa(observed: float, expected: float) -> float | None:
    """Agreement beyond chance; undefined when chance alone agrees always (everyone used one department)."""
    return round((observed - expected) / (1 - expected), 4) if expected < 1 else None


def _cohen_kappa(tickets: list[list[StoredLabel]], pair: Sequence[str]) -> float | None:
    """Cohen's kappa of two annotators over the tickets both labelled."""
    answers = []
    for ticket in tickets:
        latest = {(l.annotator or UNKNOWN_ANNOTATOR): l.department for l in ticket}
        if all(who in latest for who in pair):
            answers.append((latest[pair[0]], latest[pair[1]]))
    if not answers:
        return None
    first, second = Counter(a for a, _ in answers), Counter(b for _, b in answers)
    expected = sum(first[d] * second[d] for d in first) / len(answers) ** 2
    return _kappa(sum(a == b for a, b in answers) / len(answers), expected)


def annotator_agreement(labels: Sequence[StoredLabel]) -> dict:
    """Agreement on tickets labelled by more than one annotator (each annotator's latest label counts).

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
def quality_report(labels: Sequence[StoredLabel], departments: Sequence[str], folds: int = 5, seed: int = 0,
                   ranking: str = DEFAULT_RANKING, ids: Mapping[int, str] | None = None, max_train_labels: int | None = None) -> dict:
    """Suspected label errors, confusable department pairs and annotator agreement (see annotator_agreement).

    suspected_errors: labels whose gold department differs from the prediction of a LinearSvmClassifier fitted
    on the other folds (seed texts: the department names), the most doubted first by `ranking` (a SuspectRanking
    method; `doubt` is its score). With `ids` (annotation id -> row id, labels read from a file) each suspect
    names its row by `id`. confusable_pairs: the department pairs most often mistaken for each other in those
    predictions, both directions counted. With too few labels the cross-validation runs fewer folds or is
    skipped; summary["notes"] says so."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if ranking not in SuspectRanking.METHODS:
        raise ValueError(f"unknown ranking {ranking!r}; choose one of {', '.join(SuspectRanking.METHODS)}")
    judged, folds_used, note = cross_validate(labels, departments, folds, seed, max_train_labels)
    suspected = _suspected_errors(judged, ranking, ids)
    return {
        "summary": {
            "labels": len(labels),
            "departments": len({label.department for label in labels}),
            "judged": len(judged),
            "folds": folds_used,
            "cv_accuracy": round(1 - len(suspected) / len(judged), 4) if judged else None,
            "suspected_errors": len(suspected),
            "ranking": ranking,
            "notes": [note] if note else [],
        },
        "suspected_errors": suspected,
        "confusable_pairs": _confusable_pairs(judged),
        "annotator_agreement": annotator_agreement(labels),
    }


# What the HTML summary calls the JSON's fields.
SUMMARY_NAMES = {
    "labels": "gold labels",
    "departments": "departments used",
    "judged": "labels checked by cross-validation",
    "folds": "cross-validation folds",
    "cv_accuracy": "labels the model agrees with (share)",
    "suspected_errors": "suspected errors",
    "ranking": "suspects ordered by",
}
AGREEMENT_NAMES = {
    "tickets": "tickets labelled by more than one annotator",
    "labels": "their labels",
    "annotators": "annotators",
    "pairwise_agreement": "pairs of labels that agree (share)",
    "fleiss_kappa": "Fleiss' kappa (1 = full agreement, 0 = chance)",
    "cohen_kappa": "Cohen's kappa (two annotators)",
}

DOUBT_MEANS = {
    "normalized_margin": "how far the model's score for its suggestion is above its score for the label given",
    "self_confidence": "how low the model's score for the label given is",
    "rank_average": "how doubtful the label is among the suspects, 0 to 1, on both measures (its own score, the suggestion's lead)",
}


def _cell(value) -> str:
    if value is None:
        return ""
    return escape(f"{value:.3f}" if isinstance(value, float) else str(value))


class _Html(str):
    """Markup built here, put into a cell as it is."""


def _table(headers: Sequence[str], rows: list[Sequence], table_id: str = "") -> str:
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{v if isinstance(v, _Html) else _cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    table = f'<table id="{table_id}">' if table_id else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ticket(suspect: dict, label_studio_url: str | None) -> str:
    """The suspect's task in Label Studio's data manager when the URL is known, else its id."""
    if "id" in suspect:
        return suspect["id"]
    if label_studio_url:
        href = f"{label_studio_url.rstrip('/')}/projects/{suspect['project_id']}/data?task={suspect['task_id']}"
        return _Html(f'<a href="{escape(href)}">task {_cell(suspect["task_id"])}</a>')
    return f"task {suspect['task_id']}"


# Without JavaScript every row shows; with it, PAGE_ROWS at a time.
_PAGER = """<p id="pager"><button type="button" id="prev">previous</button> <span id="page"></span>
<button type="button" id="next">next</button></p>
<script>
(function () {
  var rows = document.querySelectorAll("#suspects tbody tr"), size = %d, page = 0, pages = Math.ceil(rows.length / size);
  function show() {
    rows.forEach(function (row, i) { row.hidden = Math.floor(i / size) !== page; });
    document.getElementById("page").textContent = "page " + (page + 1) + " of " + pages;
  }
  document.getElementById("prev").onclick = function () { if (page > 0) { page--; show(); } };
  document.getElementById("next").onclick = function () { if (page < pages - 1) { page++; show(); } };
  show();
})();
</script>"""


def _suspects_section(suspects: list[dict], top: int, label_studio_url: str | None) -> str:
    shown = suspects[:top]
    annotated = any("annotator" in e for e in shown)  # rows of a file name no annotator
    rows = [(rank, _ticket(e, label_studio_url), e["text"], e["gold"], e["predicted"], e["doubt"], e["p_predicted"],
             e["p_gold"], *([e["annotator"]] if annotated else [])) for rank, e in enumerate(shown, start=1)]
    table = _table(["#", "ticket", "text", "label given", "model suggests", "doubt", "p(suggested)", "p(label given)",
                    *(["annotator"] if annotated else [])], rows, table_id="suspects")
    more = (f"<p>The {len(shown)} most doubtful of {len(suspects)} are shown; quality_report.json lists them all.</p>"
            if len(suspects) > len(shown) else "")
    return more + table + (_PAGER % PAGE_ROWS if len(shown) > PAGE_ROWS else "")


def _agreement_section(agreement: dict) -> str:
    if not agreement["tickets"]:  # one annotator, or nobody labelled a ticket someone else labelled
        return ""
    disagreements = _table(["project", "task", "text", "labels"], [
        (d["project_id"], d["task_id"], d["text"],
         "; ".join(f"{l['department']} ({l['annotator'] or UNKNOWN_ANNOTATOR}, #{l['annotation_id']})" for l in d["labels"]))
        for d in agreement["disagreements"]])
    return f"""<h2>Annotator agreement</h2>
<p>Tickets labelled by more than one annotator (each annotator's latest label counts).</p>
{_table(["measure", "value"], [(AGREEMENT_NAMES[k], ", ".join(v) if isinstance(v, list) else v)
                               for k, v in agreement.items() if k in AGREEMENT_NAMES])}
<h3>Tickets the annotators disagree on</h3>
{disagreements}"""


def _html(report: dict, top: int, label_studio_url: str | None) -> str:
    summary = report["summary"]
    notes = "".join(f"<li>{escape(note)}</li>" for note in summary["notes"])
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Label quality report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}</style>
</head><body>
<h1>Label quality report</h1>
{_table(["measure", "value"], [(SUMMARY_NAMES[k], v) for k, v in summary.items() if k in SUMMARY_NAMES])}
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Suspected label errors</h2>
<p>The label given differs from what a model trained on the other labels suggests. The most doubtful come first
(doubt: {escape(DOUBT_MEANS[summary["ranking"]])}); check them in Label Studio and correct those that are wrong.</p>
{_suspects_section(report["suspected_errors"], top, label_studio_url)}
<h2>Most confused department pairs</h2>
<p>Candidates for clearer guidelines or merged choices.</p>
{_table(["department A", "department B", "A predicted as B", "B predicted as A", "total"],
        [(p["a"], p["b"], p["a_predicted_as_b"], p["b_predicted_as_a"], p["total"]) for p in report["confusable_pairs"]])}
{_agreement_section(report["annotator_agreement"])}
</body></html>
"""


def write_report(report: dict, out_dir: str | Path, top: int = HTML_SUSPECTS,
                 label_studio_url: str | None = None) -> tuple[Path, Path]:
    """quality_report.json and a self-contained quality_report.html in `out_dir`; the HTML shows the `top` most
    doubtful suspects, each linked to its Label Studio task when `label_studio_url` is given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "quality_report.json", out_dir / "quality_report.html"
    json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    html_path.write_text(_html(report, top, label_studio_url), encoding="utf-8")
    return json_path, html_path


def labels_from_rows(rows: Sequence[dict]) -> tuple[list[StoredLabel], dict[int, str]]:
    """Gold labels from plain rows (id, text, and label or department), numbered in file order, and the row id of
    each number. A row's label counts once, by no known annotator and in no Label Studio task."""
    labels, ids = [], {}
    for number, row in enumerate(rows, start=1):
        department = row.get("label", row.get("department"))
        if not isinstance(row.get("text"), str) or not isinstance(department, str) or "id" not in row:
            raise ValueError(f"row {number} needs id, text and label (or department)")
        labels.append(StoredLabel(annotation_id=number, project_id=0, task_id=number, text=row["text"], department=department,
                                  source="jsonl", text_key=text_key(row["text"]), seq=number))
        ids[number] = str(row["id"])
    return labels, ids


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number} is not JSON ({exc.msg})") from None
    return rows


def _store_labels(project_id: int | None) -> tuple[list[StoredLabel], list[str], str] | str:
    """(labels, departments, Label Studio URL) of the store under MODEL_DIR, or what is wrong."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return f"configuration error: {exc}"
    try:
        store = open_store(settings, must_exist=True)
    except StoreMissing as exc:
        return f"error: {exc}"
    labels = store.labels(project_id=project_id)
    if not labels:
        where = f"project {project_id}" if project_id is not None else "the store"
        return f"error: {where} has no gold labels yet: annotate tasks in Label Studio first"
    project = store.project(project_id) if project_id is not None else None
    departments = project.departments if project is not None and project.departments else sorted({l.department for l in labels})
    return labels, departments, settings.label_studio_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend quality-report",
        description="Check gold labels, from the store under MODEL_DIR or from a JSONL file: labels a cross-validated "
        "model doubts (suspected errors, most doubtful first), the department pairs most often confused, and how well "
        "annotators agree on tickets more than one of them labelled. Writes quality_report.json and "
        "quality_report.html; with LABEL_STUDIO_URL set, each suspect links to its task in Label Studio.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--project", type=int, metavar="ID", help="only this Label Studio project's labels (default: all projects)")
    parser.add_argument("--from-jsonl", type=Path, metavar="FILE",
                        help="check the labels of this file instead of the store: one JSON object a line with id, text "
                        "and label (or department); the suspects then carry their row's id")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, at least 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    parser.add_argument("--ranking", choices=SuspectRanking.METHODS, default=DEFAULT_RANKING,
                        help="how suspects are ordered, by confident learning's scores: self_confidence (how "
                        "low the label's own score is), normalized_margin (the suggestion's score above the label's) "
                        "or rank_average (the mean of a suspect's places in both) (default: %(default)s)")
    parser.add_argument("--max-train-labels", type=int, metavar="N",
                        help="each fold's model learns at most N labels, newest per department, as the service's refits "
                        "do; every label is still checked (default: the INSTANT_MAX_LABELS setting; 0: no cap)")
    parser.add_argument("--top", type=int, default=HTML_SUSPECTS, metavar="N",
                        help=f"suspects shown in the HTML, {PAGE_ROWS} a page; the JSON lists all (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if args.from_jsonl is not None and args.project is not None:
        parser.error("--project selects labels of the store; a --from-jsonl file has no projects")

    ids, label_studio_url = None, None
    if args.from_jsonl is not None:
        try:
            labels, ids = labels_from_rows(_read_jsonl(args.from_jsonl))
        except (OSError, ValueError) as exc:
            print(f"error: {args.from_jsonl}: {exc}", file=sys.stderr)
            return 2
        if not labels:
            print(f"error: {args.from_jsonl} has no rows", file=sys.stderr)
            return 2
        departments = sorted({label.department for label in labels})
    else:
        found = _store_labels(args.project)
        if isinstance(found, str):
            print(found, file=sys.stderr)
            return 2
        labels, departments, label_studio_url = found
    if args.max_train_labels is None:
        try:
            args.max_train_labels = Settings.from_env().instant_max_labels
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    report = quality_report(labels, departments, args.folds, args.seed, args.ranking, ids, args.max_train_labels)
    json_path, html_path = write_report(report, args.out, args.top, label_studio_url)
    summary, agreement = report["summary"], report["annotator_agreement"]
    print(f"{summary['labels']} labels, {summary['departments']} departments: {summary['suspected_errors']} suspected errors"
          f" among {summary['judged']} cross-validated labels (accuracy {summary['cv_accuracy']})")
    if agreement["tickets"]:
        print(f"tickets labelled by more than one annotator: {agreement['tickets']} (pairwise agreement "
              f"{agreement['pairwise_agreement']}, Fleiss' kappa {agreement['fleiss_kappa']}, disagreements: "
              f"{len(agreement['disagreements'])})")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"report: {html_path} (data: {json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
