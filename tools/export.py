"""Gold labels out of the store for people who build data sets: the original recipe's JSONL, a Hugging Face
DatasetDict with Parquet copies, and CSV for spreadsheets, all with the same seeded train/test split.

The store is only read. ``compare_with_label_studio`` shows where the store and a Label Studio project differ
(lost webhooks, edits since the last pull) without reconciling them: reconciling is the service's job.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from core.annotations import NotGold, gold_label
from core.label_studio import LabelStudioRejected, LabelStudioUnavailable
from core.labeling import AnnotationError, LabelConfigError, parse_label_config
from core.settings import Settings, SettingsError
from core.store import Label, Store, StoredLabel, StoreMissing, open_store

FORMATS = ("jsonl", "hf", "csv")
RECIPE_COLUMNS = ("Question", "Complex_CoT", "Response")
PROVENANCE_COLUMNS = ("annotation_id", "task_id", "project_id", "annotator", "created_at", "updated_at", "lead_time",
                      "shown_model_version", "shown_department", "shown_score", "accepted", "split")
COLUMNS = RECIPE_COLUMNS + PROVENANCE_COLUMNS
COLUMN_TYPES = {"annotation_id": "int64", "task_id": "int64", "project_id": "int64", "lead_time": "float64",
                "shown_score": "float64"}  # every other column is a string
ACCEPTED = {1: "accepted", 0: "corrected", None: ""}


class ExportError(ValueError):
    """The export cannot run as asked; the message says what to change."""


# -- choosing labels ---------------------------------------------------------------------------------------------
def _moment(value: str, end_of_day: bool = False) -> datetime:
    """An ISO date or date-time as an aware datetime (UTC when it names no zone, as the store writes times).
    A bare date means its first instant, or with `end_of_day` the first instant of the next day."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        moment = datetime.fromisoformat(value)
    else:
        moment = datetime.combine(day + timedelta(days=int(end_of_day)), time())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _bound(name: str, value: str, end_of_day: bool = False) -> datetime:
    try:
        return _moment(value, end_of_day)
    except ValueError:
        raise ExportError(f"{name} must be an ISO date or time such as 2026-01-31 or 2026-01-31T08:00:00+08:00, got {value!r}") from None


def _time_of(label: StoredLabel, *fields: str) -> datetime:
    """The first of the label's `fields` that holds a readable time; when Label Studio sent none, the time the
    store received the label."""
    for field in fields:
        try:
            return _moment(getattr(label, field))
        except (TypeError, ValueError):
            continue
    return _moment(label.stored_at)


def select_labels(store: Store, project: int | None = None, since: str | None = None, until: str | None = None,
                  annotators: set[str] | None = None) -> list[StoredLabel]:
    """The store's gold labels of `project` (None: every project) by one of `annotators` (None: anyone), labelled
    from `since` up to `until`. Both are ISO dates or date-times compared with the label's created_at (stored_at
    when Label Studio sent none); `since` is inclusive, `until` is not, but a bare `until` date includes its whole day."""
    start = _bound("since", since) if since else None
    end = _bound("until", until, end_of_day=True) if until else None
    selected = []
    for label in store.labels(project_id=project):
        if annotators and label.annotator not in annotators:
            continue
        moment = _time_of(label, "created_at") if start or end else None
        if (start and moment < start) or (end and moment >= end):
            continue
        selected.append(label)
    return selected


# -- shaping the data set ----------------------------------------------------------------------------------------
def _brief(label: StoredLabel) -> dict:
    return {"annotation_id": label.annotation_id, "department": label.department, "annotator": label.annotator,
            "updated_at": label.updated_at}


def remove_duplicates(labels: Sequence[StoredLabel]) -> tuple[list[StoredLabel], int, list[dict]]:
    """One label per text (whitespace does not make a new text): the most recently updated one.

    Returns (kept labels in store order, number removed, conflicts); a conflict is a text whose copies disagree
    on the department, reported with the label kept and those dropped."""
    groups: dict[str, list[StoredLabel]] = defaultdict(list)
    for label in labels:
        groups[label.text_key].append(label)
    kept, conflicts = [], []
    for group in groups.values():
        newest = max(group, key=lambda l: (_time_of(l, "updated_at", "created_at"), l.seq))
        kept.append(newest)
        if len({l.department for l in group}) > 1:
            conflicts.append({"text": newest.text[:200], "kept": _brief(newest),
                              "dropped": [_brief(l) for l in group if l is not newest]})
    kept.sort(key=lambda l: l.seq)
    return kept, len(labels) - len(kept), conflicts


def stratified_split(labels: Sequence[StoredLabel], test_fraction: float, seed: int) -> dict[str, list[StoredLabel]]:
    """A seeded train/test split, stratified by department: a department with n >= 2 rows puts round(n *
    test_fraction) of them into test, but at least one and never all; a department's single row trains.

    Per department rather than sklearn's stratified train_test_split, which refuses outright when the test set
    has fewer rows than there are departments (70 departments, a few hundred labels) and may leave a small
    department out of test altogether."""
    rng = random.Random(seed)
    by_department: dict[str, list[StoredLabel]] = defaultdict(list)
    for label in labels:
        by_department[label.department].append(label)
    test_ids = set()
    for department in sorted(by_department):
        rows = by_department[department]
        if len(rows) >= 2:
            n_test = min(len(rows) - 1, max(1, math.floor(len(rows) * test_fraction + 0.5)))
            test_ids.update(l.annotation_id for l in rng.sample(rows, n_test))
    return {"train": [l for l in labels if l.annotation_id not in test_ids],
            "test": [l for l in labels if l.annotation_id in test_ids]}


def _row(label: StoredLabel, split: str) -> dict:
    return {"Question": label.text, "Complex_CoT": label.rationale or "", "Response": label.department,
            **{column: getattr(label, column) for column in PROVENANCE_COLUMNS[:-2]},
            "accepted": ACCEPTED[label.accepted], "split": split}


# -- writers: each takes {split: rows} and the folder, and returns the names it wrote ---------------------------
def _write_jsonl(splits: dict[str, list[dict]], out_dir: Path) -> list[str]:
    for name, rows in splits.items():
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({c: row[c] for c in RECIPE_COLUMNS}, ensure_ascii=False) + "\n" for row in rows)
    return [f"{name}.jsonl" for name in splits]


def _write_hf(splits: dict[str, list[dict]], out_dir: Path) -> list[str]:
    from datasets import Dataset, DatasetDict, Features, Value

    features = Features({c: Value(COLUMN_TYPES.get(c, "string")) for c in COLUMNS})
    # datasets cannot load back a split saved with no rows, so an empty split is left out
    dataset = DatasetDict({name: Dataset.from_dict({c: [row[c] for row in rows] for c in COLUMNS}, features=features)
                           for name, rows in splits.items() if rows})
    shutil.rmtree(out_dir / "hf", ignore_errors=True)  # a split left from an earlier export must not linger
    dataset.save_to_disk(str(out_dir / "hf"))
    for name in splits:
        parquet = out_dir / f"{name}.parquet"
        if name in dataset:
            dataset[name].to_parquet(str(parquet))
        else:
            parquet.unlink(missing_ok=True)
    return ["hf", *(f"{name}.parquet" for name in dataset)]


def _write_csv(splits: dict[str, list[dict]], out_dir: Path) -> list[str]:
    for name, rows in splits.items():
        # the byte-order mark makes Excel read the file as UTF-8 instead of the local code page
        with (out_dir / f"{name}.csv").open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return [f"{name}.csv" for name in splits]


WRITERS = {"jsonl": _write_jsonl, "hf": _write_hf, "csv": _write_csv}


def export_gold(labels: Sequence[StoredLabel], out_dir: str | Path, formats: Sequence[str] = FORMATS,
                test_fraction: float = 0.2, seed: int = 3407, dedupe: bool = True) -> dict:
    """Write `labels` (already selected, e.g. by ``select_labels``) under `out_dir` in `formats`:

    * jsonl: train.jsonl / test.jsonl, one {"Question", "Complex_CoT", "Response"} object a line (the recipe's);
    * hf: a DatasetDict saved in out_dir/hf, and train.parquet / test.parquet;
    * csv: train.csv / test.csv in UTF-8 with a byte-order mark.

    hf and csv rows carry provenance columns too (PROVENANCE_COLUMNS). Returns a report of what was done."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"unknown format {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    if not 0 < test_fraction < 1:
        raise ExportError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    if not labels:
        raise ExportError("there are no labels to export")
    kept, removed, conflicts = remove_duplicates(labels) if dedupe else (list(labels), 0, [])
    split = stratified_split(kept, test_fraction, seed)
    rows = {name: [_row(label, name) for label in part] for name, part in split.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [name for fmt in dict.fromkeys(formats) for name in WRITERS[fmt](rows, out_dir)]
    per_split = {name: Counter(l.department for l in part) for name, part in split.items()}
    return {
        "labels": len(labels),
        "exported": len(kept),
        "duplicates_removed": removed,
        "conflicts": conflicts,
        "splits": {name: len(part) for name, part in split.items()},
        "departments": {d: {name: per_split[name][d] for name in split} for d in sorted({l.department for l in kept})},
        "test_fraction": test_fraction,
        "seed": seed,
        "dedupe": dedupe,
        "formats": list(dict.fromkeys(formats)),
        "files": files,
    }


# -- store against Label Studio ----------------------------------------------------------------------------------
def compare_with_label_studio(store: Store, client, project_id: int, max_text_chars: int = 20_000) -> dict:
    """How the store's labels of a project differ from Label Studio's annotations of it, read through `client`
    (a LabelStudioClient). Annotation ids only in Label Studio, only in the store, and those whose department
    or text differ, with both values. Nothing is written."""
    space = parse_label_config(client.project(project_id)["label_config"])
    remote: dict[int, Label] = {}
    skipped, invalid = 0, []
    for task in client.annotated_tasks(project_id):
        for annotation in task["annotations"]:
            try:
                label = gold_label(annotation, task, space, project_id, "pull", max_text_chars)
            except AnnotationError as exc:
                invalid.append({"annotation_id": annotation.get("id"), "task_id": task.get("id"), "error": str(exc)})
                continue
            if isinstance(label, NotGold):
                skipped += 1
            else:
                remote[label.annotation_id] = label
    local = {label.annotation_id: label for label in store.labels(project_id=project_id)}
    different = []
    for annotation_id in sorted(remote.keys() & local.keys()):
        changes = {field: {"store": getattr(local[annotation_id], field), "label_studio": getattr(remote[annotation_id], field)}
                   for field in ("department", "text")
                   if getattr(local[annotation_id], field) != getattr(remote[annotation_id], field)}
        if changes:
            different.append({"annotation_id": annotation_id, **changes})
    return {
        "project_id": project_id,
        "label_studio_labels": len(remote),
        "store_labels": len(local),
        "only_in_label_studio": sorted(remote.keys() - local.keys()),
        "only_in_store": sorted(local.keys() - remote.keys()),
        "different": different,
        "skipped_in_label_studio": skipped,
        "invalid_in_label_studio": invalid,
    }


# -- command line ------------------------------------------------------------------------------------------------
def _nothing_selected(store: Store, args: argparse.Namespace) -> str:
    total = store.count_labels()
    if not total:
        return f"the store at {store.path} has no gold labels yet: annotate tasks in Label Studio first"
    filters = ", ".join(f"--{name} {value}" for name, value in (
        ("project", args.project), ("since", args.since), ("until", args.until),
        ("annotator", " ".join(args.annotator or []) or None)) if value is not None)
    return f"none of the {total} gold labels match {filters}"


def _compare(settings: Settings, store: Store, project_id: int) -> dict:
    from core.label_studio import LabelStudioClient

    if not (settings.label_studio_url and settings.label_studio_api_key):
        raise ExportError("--from-label-studio needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to be set")
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    return compare_with_label_studio(store, client, project_id, settings.max_text_chars)


def _ids(ids: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _print_summary(report: dict, out_dir: Path) -> None:
    print(f"exported {report['exported']} of {report['labels']} labels: {report['splits']['train']} train, "
          f"{report['splits']['test']} test, {len(report['departments'])} departments; duplicate texts removed: "
          f"{report['duplicates_removed']}, of them with conflicting departments: {len(report['conflicts'])}")
    print(f"wrote {', '.join(report['files'])} in {out_dir}")
    diff = report.get("label_studio")
    if diff:
        print(f"Label Studio project {diff['project_id']}: {len(diff['only_in_label_studio'])} annotations only in Label Studio"
              f" [{_ids(diff['only_in_label_studio'])}], {len(diff['only_in_store'])} only in the store"
              f" [{_ids(diff['only_in_store'])}], {len(diff['different'])} different"
              f" [{_ids([d['annotation_id'] for d in diff['different']])}]")
    print(f"report: {out_dir / 'export_report.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend export",
        description="Export the gold labels of the store under MODEL_DIR as a data set with a seeded train/test split, "
        "stratified by department: train/test.jsonl in the fine-tuning recipe's Question/Complex_CoT/Response format, "
        "a Hugging Face DatasetDict (hf/) with train/test.parquet, and train/test.csv for Excel. Identical texts are "
        "exported once (the most recent label wins). A summary goes to export_report.json in the output folder.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--format", action="append", choices=FORMATS, dest="formats",
                        help=f"format to write; repeat for several (default: all of {', '.join(FORMATS)})")
    parser.add_argument("--test-fraction", type=float, default=0.2, metavar="FRACTION",
                        help="share of each department's texts in test (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=3407, help="seed of the train/test split (default: %(default)s)")
    parser.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="keep every label of identical texts")
    parser.add_argument("--project", type=int, metavar="ID", help="only this Label Studio project's labels (default: all projects)")
    parser.add_argument("--since", metavar="DATE", help="only labels created on or after this ISO date/time, e.g. 2026-01-01")
    parser.add_argument("--until", metavar="DATE", help="only labels created before this ISO date/time; a date includes that whole day")
    parser.add_argument("--annotator", action="append", metavar="ID",
                        help="only labels by this Label Studio user id (the annotation's completed_by); repeat for several")
    parser.add_argument("--from-label-studio", type=int, metavar="PROJECT_ID",
                        help="also pull this project from Label Studio (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY) and report "
                        "how it differs from the store; the export itself still comes from the store")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # the summary says what was written

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            store = open_store(settings, must_exist=True)
        except StoreMissing as exc:
            raise ExportError(str(exc)) from None
        labels = select_labels(store, args.project, args.since, args.until, set(args.annotator or ()))
        if not labels:
            raise ExportError(_nothing_selected(store, args))
        comparison = _compare(settings, store, args.from_label_studio) if args.from_label_studio is not None else None
        report = export_gold(labels, args.out, args.formats or FORMATS, args.test_fraction, args.seed, args.dedupe)
    except (ExportError, LabelConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (LabelStudioUnavailable, LabelStudioRejected) as exc:
        print(f"error: could not read Label Studio, nothing was exported: {exc}", file=sys.stderr)
        return 1
    report["filters"] = {"project": args.project, "since": args.since, "until": args.until, "annotators": args.annotator}
    if comparison is not None:
        report["label_studio"] = comparison
    (args.out / "export_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    _print_summary(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
