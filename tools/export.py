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
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

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


class NothingToExport(ExportError):
    """No label matches the selection."""


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


class Selection:
    """The store's gold labels of `project` (None: every project) by one of `annotators` (None: anyone), labelled
    from `since` up to `until`, read from the store in batches each time it is iterated (in store order): an export
    of a million labels holds one batch, not the million. Both bounds are ISO dates or date-times compared with the
    label's created_at (stored_at when Label Studio sent none); `since` is inclusive, `until` is not, but a bare
    `until` date includes its whole day."""

    def __init__(self, store: Store, project: int | None = None, since: str | None = None, until: str | None = None,
                 annotators: set[str] | None = None):
        self.store, self.project, self.annotators = store, project, annotators
        self.start = _bound("since", since) if since else None
        self.end = _bound("until", until, end_of_day=True) if until else None

    def __iter__(self) -> Iterator[StoredLabel]:
        for label in self.store.iter_labels(project_id=self.project):
            if self.annotators and label.annotator not in self.annotators:
                continue
            moment = _time_of(label, "created_at") if self.start or self.end else None
            if (self.start and moment < self.start) or (self.end and moment >= self.end):
                continue
            yield label

    def upper_bound(self) -> int:
        """How many labels a pass reads at most (the progress bar's total)."""
        return self.store.count_labels(self.project)


def select_labels(store: Store, project: int | None = None, since: str | None = None, until: str | None = None,
                  annotators: set[str] | None = None) -> Selection:
    return Selection(store, project, since, until, annotators)


# -- shaping the data set ----------------------------------------------------------------------------------------
def _brief(label: StoredLabel) -> dict:
    return {"annotation_id": label.annotation_id, "department": label.department, "annotator": label.annotator,
            "updated_at": label.updated_at}


@dataclass
class Plan:
    """What the export writes, worked out from one pass over the labels and held as arrays of a few bytes a label:
    the store positions (seq) kept after de-duplication and those of them in test, both sorted."""
    labels: int
    last_seq: int
    kept: np.ndarray
    test: np.ndarray
    departments: dict[str, dict[str, int]]
    conflict_groups: list[np.ndarray]  # the seqs of each conflicting text, its kept (newest) label last

    @property
    def splits(self) -> dict[str, int]:
        return {"train": len(self.kept) - len(self.test), "test": len(self.test)}


def plan_export(labels: Iterable[StoredLabel], test_fraction: float, seed: int, dedupe: bool, progress: bool = False,
                total: int | None = None) -> Plan:
    """De-duplicate and split in one streaming pass.

    De-duplication: one label per text (whitespace does not make a new text), the most recently updated one; a
    text whose copies disagree on the department is a conflict. The split is seeded and stratified by department:
    a department with n >= 2 kept rows puts round(n * test_fraction) of them into test, but at least one and never
    all; a department's single row trains. Per department rather than sklearn's stratified train_test_split, which
    refuses outright when the test set has fewer rows than there are departments (70 departments, a few hundred
    labels) and may leave a small department out of test altogether."""
    keys, moments, seqs, codes = array("Q"), array("d"), array("q"), array("l")
    department_code: dict[str, int] = {}
    for label in tqdm(labels, total=total, desc="reading labels", unit="label", disable=not progress):
        keys.append(int(label.text_key[:16], 16))  # 64 bits of the text's SHA-1: a collision is a 1-in-10^7 event at 10^6 texts
        moments.append(_time_of(label, "updated_at", "created_at").timestamp())
        seqs.append(label.seq)
        codes.append(department_code.setdefault(label.department, len(department_code)))
    key, moment, seq, code = (np.frombuffer(a, dtype=t) if len(a) else np.zeros(0, t)
                              for a, t in ((keys, np.uint64), (moments, np.float64), (seqs, np.int64), (codes, np.int64)))
    conflict_groups = []
    if dedupe and len(seq):
        order = np.lexsort((seq, moment, key))  # by text, then time, then store position: each text's newest last
        last = np.r_[key[order][1:] != key[order][:-1], True]
        first = np.r_[True, last[:-1]]
        starts, ends = np.flatnonzero(first), np.flatnonzero(last) + 1
        mixed = np.flatnonzero(np.maximum.reduceat(code[order], starts) != np.minimum.reduceat(code[order], starts))
        conflict_groups = sorted((seq[order[starts[g]:ends[g]]] for g in mixed), key=lambda group: group[-1])
        keep = np.sort(order[last])
    else:
        keep = np.arange(len(seq))
    kept_seq, kept_code = seq[keep], code[keep]
    rng = random.Random(seed)
    names = {c: name for name, c in department_code.items()}
    test, departments = [], {}
    for c in sorted(set(kept_code.tolist()), key=names.get):
        rows = kept_seq[kept_code == c].tolist()  # in store order, as the split has always drawn them
        n_test = min(len(rows) - 1, max(1, math.floor(len(rows) * test_fraction + 0.5))) if len(rows) >= 2 else 0
        test.extend(rng.sample(rows, n_test))
        departments[names[c]] = {"train": len(rows) - n_test, "test": n_test}
    return Plan(labels=len(seq), last_seq=int(seq.max()) if len(seq) else 0, kept=kept_seq,
                test=np.sort(np.array(test, dtype=np.int64)), departments=departments, conflict_groups=conflict_groups)


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    i = np.searchsorted(sorted_values, value)
    return bool(i < len(sorted_values) and sorted_values[i] == value)


def _row(label: StoredLabel, split: str) -> dict:
    return {"Question": label.text, "Complex_CoT": label.rationale or "", "Response": label.department,
            **{column: getattr(label, column) for column in PROVENANCE_COLUMNS[:-2]},
            "accepted": ACCEPTED[label.accepted], "split": split}


# -- writers: each opens its files in the folder, takes rows one split at a time, and returns the names it wrote --
class _JsonlWriter:
    def __init__(self, out_dir: Path):
        self.files = {name: (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS}

    def write(self, split: str, rows: list[dict]) -> None:
        self.files[split].writelines(json.dumps({c: row[c] for c in RECIPE_COLUMNS}, ensure_ascii=False) + "\n" for row in rows)

    def close(self) -> list[str]:
        for f in self.files.values():
            f.close()
        return [f"{name}.jsonl" for name in SPLITS]


class _CsvWriter:
    def __init__(self, out_dir: Path):
        # the byte-order mark makes Excel read the file as UTF-8 instead of the local code page
        self.files = {name: (out_dir / f"{name}.csv").open("w", encoding="utf-8-sig", newline="") for name in SPLITS}
        self.writers = {name: csv.DictWriter(f, fieldnames=COLUMNS) for name, f in self.files.items()}
        for writer in self.writers.values():
            writer.writeheader()

    def write(self, split: str, rows: list[dict]) -> None:
        self.writers[split].writerows(rows)

    def close(self) -> list[str]:
        for f in self.files.values():
            f.close()
        return [f"{name}.csv" for name in SPLITS]


class _HfWriter:
    """Parquet written a row group at a time; the DatasetDict is then built from those files by Arrow, which reads
    them in batches (memory-mapped), so neither step holds the data set."""

    def __init__(self, out_dir: Path):
        import pyarrow as pa

        self.out_dir = out_dir
        self.schema = pa.schema([(c, pa.int64() if COLUMN_TYPES.get(c) == "int64" else pa.float64() if c in COLUMN_TYPES else pa.string())
                                 for c in COLUMNS])
        self.writers: dict = {}
        for name in SPLITS:
            (out_dir / f"{name}.parquet").unlink(missing_ok=True)

    def write(self, split: str, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if split not in self.writers:
            self.writers[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", self.schema)
        table = pa.Table.from_pylist([{c: (str(v) if v is not None and c not in COLUMN_TYPES else v) for c, v in row.items()}
                                      for row in rows], schema=self.schema)
        self.writers[split].write_table(table)

    def close(self) -> list[str]:
        from datasets import Dataset, DatasetDict, Features, Value

        for writer in self.writers.values():
            writer.close()
        features = Features({c: Value(COLUMN_TYPES.get(c, "string")) for c in COLUMNS})
        written = [name for name in SPLITS if name in self.writers]  # datasets cannot load back a split with no rows
        shutil.rmtree(self.out_dir / "hf", ignore_errors=True)  # a split left from an earlier export must not linger
        with tempfile.TemporaryDirectory(dir=self.out_dir, prefix=".hf-cache-") as cache:
            DatasetDict({name: Dataset.from_parquet(str(self.out_dir / f"{name}.parquet"), features=features, cache_dir=cache)
                         for name in written}).save_to_disk(str(self.out_dir / "hf"))
        return ["hf", *(f"{name}.parquet" for name in written)]


SPLITS = ("train", "test")
WRITERS = {"jsonl": _JsonlWriter, "hf": _HfWriter, "csv": _CsvWriter}
BATCH = 5000


def export_gold(labels: Iterable[StoredLabel], out_dir: str | Path, formats: Sequence[str] = FORMATS,
                test_fraction: float = 0.2, seed: int = 3407, dedupe: bool = True, progress: bool = False) -> dict:
    """Write `labels` (a selection such as ``select_labels`` returns, read twice) under `out_dir` in `formats`:

    * jsonl: train.jsonl / test.jsonl, one {"Question", "Complex_CoT", "Response"} object a line (the recipe's);
    * hf: a DatasetDict saved in out_dir/hf, and train.parquet / test.parquet;
    * csv: train.csv / test.csv in UTF-8 with a byte-order mark.

    hf and csv rows carry provenance columns too (PROVENANCE_COLUMNS). The first pass plans (de-duplication, the
    split), the second writes in batches; a label changed in the store between the passes is left out and
    counted. Returns a report of what was done."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"unknown format {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    if not 0 < test_fraction < 1:
        raise ExportError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    total = labels.upper_bound() if isinstance(labels, Selection) else None
    plan = plan_export(labels, test_fraction, seed, dedupe, progress, total)
    if not plan.labels:
        raise NothingToExport("there are no labels to export")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = [WRITERS[fmt](out_dir) for fmt in dict.fromkeys(formats)]
    in_conflict = {int(s): i for i, group in enumerate(plan.conflict_groups) for s in group}
    briefs: dict[int, dict] = {}
    written = 0
    batch: dict[str, list[dict]] = {name: [] for name in SPLITS}

    def flush():
        for name, rows in batch.items():
            if rows:
                for writer in writers:
                    writer.write(name, rows)
                rows.clear()

    with tqdm(total=len(plan.kept), desc="writing", unit="row", disable=not progress) as bar:
        for label in labels:
            if label.seq > plan.last_seq:
                continue
            if label.seq in in_conflict:
                briefs[label.seq] = {**_brief(label), "text": label.text[:200]}
            if not _contains(plan.kept, label.seq):
                continue
            split = "test" if _contains(plan.test, label.seq) else "train"
            batch[split].append(_row(label, split))
            written += 1
            bar.update()
            if written % BATCH == 0:
                flush()
        flush()
    files = [name for writer in writers for name in writer.close()]
    conflicts = []
    for group in plan.conflict_groups:
        seen = [briefs[int(s)] for s in group if int(s) in briefs]
        if len(seen) == len(group):  # a copy changed between the passes: no longer the conflict planned
            kept = seen.pop()
            conflicts.append({"text": kept.pop("text"), "kept": kept, "dropped": [{k: v for k, v in b.items() if k != "text"} for b in seen]})
    return {
        "labels": plan.labels,
        "exported": written,
        "duplicates_removed": plan.labels - len(plan.kept),
        "changed_during_export": len(plan.kept) - written,
        "conflicts": conflicts,
        "splits": plan.splits,
        "departments": dict(sorted(plan.departments.items())),
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
        comparison = _compare(settings, store, args.from_label_studio) if args.from_label_studio is not None else None
        try:
            report = export_gold(labels, args.out, args.formats or FORMATS, args.test_fraction, args.seed, args.dedupe,
                                 progress=True)
        except NothingToExport:
            raise ExportError(_nothing_selected(store, args)) from None
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
