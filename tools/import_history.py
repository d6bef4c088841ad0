"""A centre's past tickets into the gold-label store (issue 16): 10^5–10^6 tickets already handled, each with the
department that handled it, from a JSONL, CSV or Excel (.xlsx) file.

    python -m backend import-history tickets.xlsx --project 3 --dry-run    # only the report
    python -m backend import-history tickets.xlsx --project 3

Each row becomes a gold label of the project with source ``history``. Its id is negative, derived from the project
and the ticket's id (or, in a file without an id column, its text): Label Studio's ids are positive, so the two can
never collide, and importing the same file again finds the same rows and stores nothing new. The file is streamed
and written CHUNK_ROWS rows per transaction, so memory stays flat at 10^6 rows and an import that is stopped resumes
by running it again. Rows are skipped, counted and reported, never stored, when their department is not one of the
project's (names and the catalog's aliases), their text is empty or too long, or a row with their ticket id was
already kept.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import hashlib
import json
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from annotation_config.catalog import CatalogError, load_catalog
from core.labeling import LabelConfigError, parse_label_config
from core.settings import Settings, SettingsError
from core.store import HISTORY, Label, Store, StoreMissing, open_store, text_key
from core.text import brief, clean, has_content

# Rows per transaction: one fsync each, and the most rows held in memory at once. A transaction holds the store's
# write lock, and Label Studio gives a webhook 1 s, so one must stay well under that beside a live backend.
CHUNK_ROWS = 1_000
DETECT_BYTES = 1 << 20  # the start of a text file that decides between UTF-8 and GB18030
ID_BITS = 62  # two of 10^6 tickets share an id with probability about 10^12 / 2^63 = 1e-7
EXAMPLES = 3  # rows quoted per skip reason
TOP_DEPARTMENTS = 10
MAX_UNKNOWN_NAMES = 1_000  # distinct unknown department names counted; a file of free text must not fill memory
EXAMPLE_CHARS = 60

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".xlsx": "xlsx", ".xlsm": "xlsx"}
ENCODINGS = ("auto", "utf-8", "gb18030")
# Column names tried in order when no --*-field option names one: English, then what 12345 systems export.
TEXT_FIELDS = ("text", "Question", "内容", "诉求内容", "工单内容", "来电内容", "问题描述", "诉求描述")
DEPARTMENT_FIELDS = ("department", "Response", "承办单位", "处理部门", "承办部门", "办理单位", "处理单位", "责任单位")
ID_FIELDS = ("id", "ticket_id", "工单编号", "工单号", "编号")
SKIPS = {
    "unreadable": "not a JSON object",
    "missing_id": "empty ticket id",
    "empty_text": "empty ticket text",
    "text_too_long": "ticket text longer than MAX_TEXT_CHARS",
    "unknown_department": "department empty or not one of the project's (names and catalog aliases)",
    "duplicate_id": "same ticket id as an earlier row that was kept",
}
_SPACE = re.compile(r"\s+")


class HistoryError(ValueError):
    """The import cannot run as asked; the message says what to change."""


# -- where a row goes ------------------------------------------------------------------------------------------
def history_id(project_id: int, ticket_id: str) -> int:
    """The label id of a past ticket: negative (Label Studio's ids are positive), the same in every run."""
    digest = hashlib.blake2b(f"{project_id}\x1f{ticket_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return -1 - (int.from_bytes(digest) >> (64 - ID_BITS))


def _name_key(name: str) -> str:
    """Department names compare without whitespace and with full-width forms folded (（ ） as ( ))."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", name))


def department_lookup(departments: tuple[str, ...], aliases: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Written name -> department of the label space: each department's name and its catalog aliases; a name wins
    over another department's alias."""
    lookup = {_name_key(alias): name for name in departments for alias in aliases.get(name, ())}
    lookup.update({_name_key(name): name for name in departments})
    return lookup


def project_lookup(settings: Settings, store: Store, project_id: int) -> dict[str, str]:
    """The department names a project's rows may carry: its labeling config's departments (LABEL_CONFIG's until Label
    Studio sent one, as the service does) and their aliases in the project's catalog."""
    project = store.project(project_id)
    if project is None:
        known = ", ".join(str(p.project_id) for p in store.projects()) or "none"
        raise HistoryError(f"project {project_id} is unknown to the store at {store.location} (known: {known}); connect the "
                           "Label Studio project to this backend first, so that its departments are known")
    try:
        departments = project.departments or parse_label_config(settings.labeling_config.read_text(encoding="utf-8")).departments
        catalog = load_catalog(settings.catalog_of(project_id))
    except (OSError, LabelConfigError, CatalogError) as exc:
        raise HistoryError(f"project {project_id}'s departments cannot be read: {exc}") from None
    return department_lookup(departments, {d.name: d.aliases for d in catalog.departments})


# -- reading the file ------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A file's rows as {column: text}, numbered as a person finds them (line of a text file, row of a sheet)."""
    columns: tuple[str, ...]
    rows: Iterator[tuple[int, dict[str, str] | None]]  # None: a row that could not be read
    done: Callable[[], int]  # progress, in `unit`s
    total: int | None
    unit: str
    encoding: str | None
    close: Callable[[], None]


def detect_encoding(sample: bytes) -> str:
    """UTF-8 (a byte-order mark is dropped) when the sample decodes as UTF-8, else GB18030, which Chinese Windows
    and most 12345 systems write."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)  # the sample may end inside a character
        return "utf-8-sig"
    except UnicodeDecodeError:
        return "gb18030"


class UnreadableFile(ValueError):
    """The file stops being readable part-way (a line in another encoding, broken CSV quoting)."""


@dataclass
class TextLines:
    """A text file's lines, decoded one at a time so that a line in another encoding is reported by its number, after
    every line before it was read."""
    raw: BinaryIO
    encoding: str

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self.raw, 1):
            try:
                yield line.decode(self.encoding)  # a newline byte is never part of a UTF-8 or GB18030 character
            except UnicodeDecodeError as exc:
                raise UnreadableFile(f"line {number} is not {self.encoding} text ({exc.reason})") from None


def _text_lines(path: Path, encoding: str) -> TextLines:
    raw = path.open("rb")
    if encoding == "auto":
        encoding = detect_encoding(raw.read(DETECT_BYTES))
        raw.seek(0)
    return TextLines(raw, "utf-8-sig" if encoding == "utf-8" else encoding)


def _cell(value: object) -> str:
    """A cell as text: Excel keeps long ticket numbers as numbers, and 2024010100012.0 must read as the id it was."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return clean(str(value)).strip()


def _json_row(line: str) -> dict[str, str] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return {clean(k).strip(): _cell(v) for k, v in row.items()} if isinstance(row, dict) else None


def _read_jsonl(path: Path, encoding: str) -> Table:
    lines = _text_lines(path, encoding)
    first = next((row for line in lines if line.strip() and (row := _json_row(line)) is not None), None)  # its keys are the columns
    lines.raw.seek(0)

    def rows():
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, _json_row(line)
    return Table(tuple(first or ()), rows(), lines.raw.tell, path.stat().st_size, "B", lines.encoding, lines.raw.close)


def _read_csv(path: Path, encoding: str) -> Table:
    lines = _text_lines(path, encoding)
    reader = csv.reader(lines)
    header = tuple(clean(h).strip() for h in next(reader, ()))

    def rows():
        for values in reader:
            if any(v.strip() for v in values):
                yield reader.line_num, dict(zip(header, (clean(v).strip() for v in values)))
    return Table(header, rows(), lines.raw.tell, path.stat().st_size, "B", lines.encoding, lines.raw.close)


def _read_xlsx(path: Path, sheet: str | None) -> Table:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)  # read-only streams the sheet's XML
    except Exception as exc:  # openpyxl raises zipfile, XML and its own errors for files it cannot open
        raise HistoryError(f"{path} cannot be opened as an Excel workbook: {exc}") from None
    if sheet is not None and sheet not in book.sheetnames:
        book.close()
        raise HistoryError(f"{path} has no sheet {sheet!r}; its sheets: {', '.join(book.sheetnames)}")
    worksheet = book[sheet] if sheet is not None else book.active
    cells = worksheet.iter_rows(values_only=True)
    header = tuple(_cell(h) for h in next(cells, ()))
    last = 1

    def rows():
        nonlocal last
        for last, values in enumerate(cells, 2):
            if any(v is not None and str(v).strip() for v in values):
                yield last, {column: _cell(v) for column, v in zip(header, values) if column}
    return Table(header, rows(), lambda: last, worksheet.max_row, "row", None, book.close)


def open_table(path: Path, encoding: str = "auto", sheet: str | None = None) -> Table:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise HistoryError(f"{path}: the file name must end in one of {', '.join(FORMATS)} (JSON Lines, CSV or Excel)")
    if not path.is_file():
        raise HistoryError(f"there is no file {path}")
    if kind == "xlsx":
        return _read_xlsx(path, sheet)
    return _read_jsonl(path, encoding) if kind == "jsonl" else _read_csv(path, encoding)


def choose_columns(columns: tuple[str, ...], text: str | None, department: str | None, ticket_id: str | None) -> dict:
    """The file's text, department and id columns: the ones named, else the first known name present. Without an
    id column a ticket is known by its text, so identical texts are imported once."""
    chosen = {}
    for role, named, candidates in (("text", text, TEXT_FIELDS), ("department", department, DEPARTMENT_FIELDS), ("id", ticket_id, ID_FIELDS)):
        if named is not None and named not in columns:
            raise HistoryError(f"there is no column {named!r} (--{role}-field); the file's columns: {', '.join(columns) or 'none'}")
        chosen[role] = named if named is not None else next((c for c in candidates if c in columns), None)
        if chosen[role] is None and role != "id":
            raise HistoryError(f"no {role} column found among {', '.join(columns) or 'no columns'}; name it with --{role}-field "
                               f"(tried {', '.join(candidates)})")
    return chosen


# -- the import ------------------------------------------------------------------------------------------------
class SeenIds:
    """The label ids met so far in this file, to skip repeated tickets. A sorted int64 array, merged once per chunk,
    holds 10^6 ids in 8 MB where a Python set of them takes about 75 MB."""

    def __init__(self) -> None:
        self._merged = np.empty(0, dtype=np.int64)
        self._recent: set[int] = set()

    def add(self, value: int) -> bool:
        """Remember `value`; False when it was met before."""
        if value in self._recent:
            return False
        at = int(np.searchsorted(self._merged, value))
        if at < len(self._merged) and self._merged[at] == value:
            return False
        self._recent.add(value)
        return True

    def merge(self) -> None:
        new = np.sort(np.fromiter(self._recent, dtype=np.int64, count=len(self._recent)))
        self._merged = np.insert(self._merged, np.searchsorted(self._merged, new), new)
        self._recent.clear()


@dataclass
class Report:
    rows: int = 0
    stored: Counter = field(default_factory=Counter)  # the store's outcomes: created, updated, unchanged...
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    departments: Counter = field(default_factory=Counter)
    unknown_departments: Counter = field(default_factory=Counter)
    longest_write: float = 0.0  # seconds of the longest transaction: what a webhook arriving meanwhile may wait

    def skip(self, reason: str, row: int, ticket_id: str | None, value: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append({"row": row, "id": ticket_id, "value": brief(value, EXAMPLE_CHARS)})
        if reason == "unknown_department" and (value in self.unknown_departments or len(self.unknown_departments) < MAX_UNKNOWN_NAMES):
            self.unknown_departments[value] += 1


def import_history(store: Store, project_id: int, table: Table, lookup: dict[str, str], columns: dict, max_text_chars: int,
                   dry_run: bool = False, progress: Callable[[int], None] = lambda done: None) -> Report:
    """Read every row of `table`, skip and count the unusable ones, and store the rest as gold labels of the project
    CHUNK_ROWS at a time (with `dry_run`, only ask the store which of them it already holds). `progress` is called
    after each chunk with table.done()."""
    report, seen, chunk = Report(), SeenIds(), []

    def flush():
        if dry_run:
            stored = store.stored_ids(label.annotation_id for label in chunk)
            report.stored.update({"unchanged": len(stored), "created": len(chunk) - len(stored)})
        else:
            started = time.perf_counter()
            report.stored.update(store.upsert_labels(chunk))
            report.longest_write = max(report.longest_write, time.perf_counter() - started)
        seen.merge()
        chunk.clear()
        progress(table.done())

    text_column, department_column, id_column = columns["text"], columns["department"], columns["id"]
    try:
        for number, row in table.rows:
            report.rows += 1
            if row is None:
                report.skip("unreadable", number, None, "")
                continue
            text, written = row.get(text_column, ""), row.get(department_column, "")
            ticket_id = row.get(id_column, "") if id_column else None
            if ticket_id == "":
                report.skip("missing_id", number, None, text)
                continue
            if not has_content(text):
                report.skip("empty_text", number, ticket_id, text)
                continue
            if len(text) > max_text_chars:
                report.skip("text_too_long", number, ticket_id, text)
                continue
            department = lookup.get(_name_key(written))
            if department is None:
                report.skip("unknown_department", number, ticket_id, written)
                continue
            label_id = history_id(project_id, ticket_id if ticket_id is not None else "text:" + text_key(text))
            if not seen.add(label_id):
                report.skip("duplicate_id", number, ticket_id, text)
                continue
            report.departments[department] += 1
            chunk.append(Label(annotation_id=label_id, project_id=project_id, task_id=label_id, text=text, department=department,
                               source=HISTORY))
            if len(chunk) >= CHUNK_ROWS:
                flush()
    except (UnreadableFile, csv.Error):
        flush()  # the rows read before the file turned unreadable are kept: running it again goes on after them
        raise
    flush()
    return report


# -- command line ----------------------------------------------------------------------------------------------
def summary(report: Report, path: Path, project_id: int, table: Table, columns: dict, dry_run: bool, seconds: float) -> dict:
    return {
        "file": str(path), "project": project_id, "dry_run": dry_run, "encoding": table.encoding, "columns": columns,
        "rows": report.rows, "seconds": round(seconds, 1), "rows_per_second": round(report.rows / seconds) if seconds else None,
        "imported": report.stored["created"], "updated": report.stored["updated"], "already_stored": report.stored["unchanged"],
        "refused_by_store": report.stored["stale"] + report.stored["deleted"], "longest_write_s": round(report.longest_write, 3),
        "skipped": {reason: report.skipped[reason] for reason in SKIPS if report.skipped[reason]},
        "examples": {reason: report.examples[reason] for reason in SKIPS if reason in report.examples},
        "unknown_departments": dict(report.unknown_departments.most_common(TOP_DEPARTMENTS)),
        "departments": dict(report.departments.most_common(TOP_DEPARTMENTS)),
        "department_count": len(report.departments),
    }


def print_summary(result: dict) -> None:
    would = "would be " if result["dry_run"] else ""
    print(f"{result['file']} → project {result['project']}: {result['rows']:,} rows in {result['seconds']} s "
          f"({result['rows_per_second'] or 0:,} rows/s); columns {json.dumps(result['columns'], ensure_ascii=False)}"
          + (f", {result['encoding']}" if result["encoding"] else ""))
    print(f"  {would}imported: {result['imported']:,} new gold labels; already stored: {result['already_stored']:,}"
          + (f"; updated (department or text changed): {result['updated']:,}" if result["updated"] else "")
          + (f"; refused by the store (deleted earlier): {result['refused_by_store']:,}" if result["refused_by_store"] else "")
          + (f"; longest transaction {result['longest_write_s']} s" if not result["dry_run"] else ""))
    print(f"  skipped: {sum(result['skipped'].values()):,}")
    for reason, count in result["skipped"].items():
        examples = "; ".join(f"row {e['row']}" + (f" id {e['id']}" if e["id"] else "") + f": {e['value']!r}" for e in result["examples"][reason])
        print(f"    {SKIPS[reason]}: {count:,}  (e.g. {examples})")
    if result["unknown_departments"]:
        print("  most frequent unknown departments (add them as aliases to the catalog, or fix the file): "
              + ", ".join(f"{name or '(empty)'} {count:,}" for name, count in result["unknown_departments"].items()))
    if result["departments"]:
        print(f"  departments (top {len(result['departments'])} of {result['department_count']}): "
              + ", ".join(f"{name} {count:,}" for name, count in result["departments"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend import-history",
        description="Import a centre's past tickets, each with the department that handled it, as gold labels of a project "
        "(source 'history'), into the store under MODEL_DIR (or STORE_URL). Reads JSON Lines, CSV (UTF-8 or GB18030) and "
        ".xlsx; department names may be the project's names or their catalog aliases. Rows with an unknown department, "
        "an empty text or a repeated ticket id are skipped and reported. Running it again stores nothing twice, so an "
        "interrupted import resumes. Label Studio never sees these labels, and reconciling with it keeps them.",
        epilog=f"Columns tried when not named: text {', '.join(TEXT_FIELDS)}; department {', '.join(DEPARTMENT_FIELDS)}; "
        f"id {', '.join(ID_FIELDS)} (without an id column, identical texts are imported once).")
    parser.add_argument("file", type=Path, metavar="FILE", help="the tickets: .jsonl, .csv or .xlsx, with a header (CSV, Excel)")
    parser.add_argument("--project", type=int, required=True, metavar="ID", help="the Label Studio project whose gold labels they become")
    parser.add_argument("--text-field", metavar="COLUMN", help="the column holding the ticket text")
    parser.add_argument("--department-field", metavar="COLUMN", help="the column holding the department that handled it")
    parser.add_argument("--id-field", metavar="COLUMN", help="the column holding the ticket's id (工单编号)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="auto",
                        help="of a CSV or JSONL file (default: %(default)s, UTF-8 if the file's start decodes as UTF-8, else GB18030)")
    parser.add_argument("--sheet", metavar="NAME", help="the Excel sheet to read (default: the sheet the workbook opens at)")
    parser.add_argument("--dry-run", action="store_true", help="read and check every row and report, storing nothing")
    parser.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    table = None
    try:
        try:
            store = open_store(settings, must_exist=True)
        except StoreMissing as exc:
            raise HistoryError(str(exc)) from None
        lookup = project_lookup(settings, store, args.project)
        table = open_table(args.file, args.encoding, args.sheet)
        columns = choose_columns(table.columns, args.text_field, args.department_field, args.id_field)
        started = time.monotonic()
        with tqdm(total=table.total, unit=table.unit, unit_scale=True, desc=args.file.name, disable=None) as bar:
            report = import_history(store, args.project, table, lookup, columns, settings.max_text_chars, args.dry_run,
                                    progress=lambda done: bar.update(done - bar.n))
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (UnreadableFile, csv.Error) as exc:
        print(f"error: {args.file} could not be read to the end: {exc}. The rows before it were "
              f"{'checked' if args.dry_run else 'imported'}; fix the file or name its encoding (--encoding) and run it again: "
              "rows already imported are not stored twice", file=sys.stderr)
        return 2
    finally:
        if table is not None:
            table.close()
    result = summary(report, args.file, args.project, table, columns, args.dry_run, time.monotonic() - started)
    if args.report:
        args.report.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print_summary(result)
    if result["imported"] or result["updated"]:
        print(f"a running backend fits project {args.project}'s model on them at its next label or restart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
