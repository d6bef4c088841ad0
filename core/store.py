"""The durable store under MODEL_DIR: gold labels, the frozen evaluation split, served predictions, model versions,
jobs and projects, in one SQLite database (WAL, synchronous=FULL: a label acknowledged is a label kept).

Everything belongs to a Label Studio project: its labels, its evaluation split, its version line (``instant-3``,
``lora-2``) and its jobs. Every write is one transaction, so a process killed at any point leaves either the old or
the new state. Label writes are idempotent and order-tolerant: duplicates change nothing, a stale update is ignored,
and an annotation deleted before its creation arrives stays deleted (a tombstone remembers it). Counters that
/status and /metrics read are kept in the same transactions, so reading them never scans the labels.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from core.db import open_database, postgres_ddl
from core.jobs import UNFINISHED, JobStatus
from core.routing import AUTO

SCHEMA_VERSION = 2
DEFAULT_PROJECT = 0  # requests that name no Label Studio project (the routing API, tools, old clients)
UNKNOWN_ANNOTATOR = "unknown"
HISTORY = "history"  # the source of labels imported from a centre's past tickets: they have no Label Studio task

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    annotation_id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    text_key TEXT NOT NULL,
    department TEXT NOT NULL,
    rationale TEXT,
    annotator TEXT,
    created_at TEXT,
    updated_at TEXT,
    lead_time REAL,
    shown_model_version TEXT,
    shown_department TEXT,
    shown_score REAL,
    accepted INTEGER,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_seq ON labels(seq);
CREATE INDEX IF NOT EXISTS labels_project_seq ON labels(project_id, seq);
CREATE INDEX IF NOT EXISTS labels_task ON labels(project_id, task_id);
CREATE INDEX IF NOT EXISTS labels_project_text ON labels(project_id, text_key);
CREATE TABLE IF NOT EXISTS deleted_annotations (
    annotation_id INTEGER PRIMARY KEY,
    project_id INTEGER,
    deleted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS splits (
    project_id INTEGER NOT NULL,
    text_key TEXT NOT NULL,
    department TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'eval')),
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (project_id, text_key)
);
CREATE TABLE IF NOT EXISTS split_counts (
    project_id INTEGER NOT NULL,
    department TEXT NOT NULL,
    texts INTEGER NOT NULL,
    eval INTEGER NOT NULL,
    PRIMARY KEY (project_id, department)
);
CREATE TABLE IF NOT EXISTS project_stats (
    project_id INTEGER PRIMARY KEY,
    labels INTEGER NOT NULL DEFAULT 0,
    eval INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    corrected INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS annotator_stats (
    annotator TEXT PRIMARY KEY,
    labels INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS predictions (
    project_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    department TEXT NOT NULL,
    score REAL NOT NULL,
    margin REAL NOT NULL,
    entropy REAL NOT NULL,
    top TEXT NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, task_id, model_version)
);
CREATE TABLE IF NOT EXISTS versions (
    project_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT,
    status TEXT NOT NULL,
    path TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    promoted_at TEXT,
    note TEXT,
    PRIMARY KEY (project_id, name)
);
CREATE INDEX IF NOT EXISTS versions_serving ON versions(project_id, kind, status);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    project_id INTEGER NOT NULL,
    label_seq INTEGER,
    requested_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    pid INTEGER,
    progress TEXT NOT NULL DEFAULT '{}',
    version TEXT,
    error TEXT,
    claimed_by TEXT,
    heartbeat_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(kind, status, project_id);
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    label_config TEXT,
    departments TEXT,
    catalog TEXT,
    model_version TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS routes (
    project_id INTEGER NOT NULL,
    ticket_id TEXT NOT NULL,
    text_key TEXT NOT NULL,
    department TEXT NOT NULL,
    probability REAL NOT NULL,
    model_version TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('auto', 'review')),
    threshold REAL,
    audit INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    text TEXT,
    top TEXT,
    task_id INTEGER,
    reviewed_department TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, ticket_id)
);
CREATE INDEX IF NOT EXISTS routes_task ON routes(project_id, task_id);
CREATE INDEX IF NOT EXISTS routes_to_push ON routes(project_id) WHERE task_id IS NULL AND (decision = 'review' OR audit = 1);
CREATE TABLE IF NOT EXISTS route_stats (
    project_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    auto INTEGER NOT NULL DEFAULT 0,
    review INTEGER NOT NULL DEFAULT 0,
    audit_selected INTEGER NOT NULL DEFAULT 0,
    audited INTEGER NOT NULL DEFAULT 0,
    correct INTEGER NOT NULL DEFAULT 0,
    stopped_at TEXT,
    stop_reason TEXT,
    PRIMARY KEY (project_id, model_version)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreMissing(FileNotFoundError):
    """A command that reads the store found none where the settings point."""


def open_store(settings, must_exist: bool = False) -> Store:
    """The store the settings name (STORE_URL, else MODEL_DIR/store.sqlite3), with their evaluation-split rules.
    With `must_exist`, a SQLite file that is not there raises StoreMissing instead of creating an empty store."""
    location = settings.store_location
    if must_exist and "://" not in location and not Path(location).exists():
        raise StoreMissing(f"there is no label store at {location}; set MODEL_DIR to the backend's model folder (or STORE_URL)")
    return Store(location, eval_fraction=settings.eval_fraction, eval_max_per_department=settings.eval_max_per_department)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_SPACE = re.compile(r"\s+")
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def text_key(text: str) -> str:
    """Identity of a ticket text for de-duplication and the split: whitespace does not make a new ticket."""
    return hashlib.sha1(_SPACE.sub("", text).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Label:
    annotation_id: int
    project_id: int
    task_id: int
    text: str
    department: str
    rationale: str | None = None
    annotator: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    lead_time: float | None = None
    shown_model_version: str | None = None
    shown_department: str | None = None
    shown_score: float | None = None
    source: str = "webhook"

    @property
    def accepted(self) -> int | None:
        if not self.shown_department:
            return None
        return int(self.shown_department == self.department)


@dataclass
class StoredLabel(Label):
    text_key: str = ""
    seq: int = 0
    stored_at: str = ""
    split: str = "train"


@dataclass
class Job:
    id: int
    kind: str
    status: str
    reason: str | None
    project_id: int
    label_seq: int | None
    requested_at: str
    started_at: str | None
    finished_at: str | None
    pid: int | None
    progress: dict
    version: str | None
    error: str | None
    claimed_by: str | None = None
    heartbeat_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED

    def to_dict(self) -> dict:
        return {**asdict(self), "finished": self.finished}


@dataclass
class Version:
    project_id: int
    name: str
    kind: str
    parent: str | None
    status: str
    path: str | None
    data: dict
    metrics: dict
    created_at: str
    promoted_at: str | None
    note: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Project:
    project_id: int
    label_config: str | None
    departments: tuple[str, ...] | None
    catalog: str | None
    model_version: str | None
    updated_at: str


class Store:
    """The store of one backend, on SQLite (a path: the file under MODEL_DIR) or PostgreSQL (a postgresql:// URL,
    shared by replicas and workers)."""

    def __init__(self, location: Path | str, eval_fraction: float = 0.2, eval_max_per_department: int = 40):
        self.location = str(location)
        self.eval_fraction = eval_fraction
        self.eval_max_per_department = eval_max_per_department
        self.db = open_database(self.location)
        if self.db.dialect == "sqlite":
            conn = self.db.connection()
            if _columns(conn, "splits") and "project_id" not in _columns(conn, "splits"):
                _migrate_v1(conn)
        with self.db.transaction() as tx:  # on PostgreSQL, replicas starting together create the tables once
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(postgres_ddl(statement) if self.db.dialect == "postgresql" else statement)
            tx.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (str(SCHEMA_VERSION),))

    @property
    def path(self) -> Path:
        return Path(self.location)

    def _tx(self, serialize: bool = True):
        return self.db.transaction(serialize)

    def _read(self, sql: str, params: Iterable = ()) -> list:
        return self.db.read(sql, tuple(params))

    def close(self) -> None:
        self.db.close()

    # -- the label sequence: every change of gold anywhere moves it by one ----------------------------------
    def label_seq(self) -> int:
        rows = self._read("SELECT value FROM counters WHERE name = 'label_seq'")
        return int(rows[0]["value"]) if rows else 0

    @staticmethod
    def _next_seq(db) -> int:
        return db.execute("INSERT INTO counters(name, value) VALUES ('label_seq', 1) ON CONFLICT(name)"
                          " DO UPDATE SET value = counters.value + 1 RETURNING value").fetchone()["value"]

    # -- projects -------------------------------------------------------------------------------------------
    def remember_project(self, project_id: int, label_config: str | None = None, departments: tuple[str, ...] | None = None,
                         catalog: str | None = None) -> None:
        """Record a project; a config (with its department list, for readers that do not parse XML) replaces the
        one remembered."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO projects(project_id, label_config, departments, catalog, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(project_id) DO UPDATE SET label_config = COALESCE(excluded.label_config, projects.label_config),"
                " departments = COALESCE(excluded.departments, projects.departments),"
                " catalog = COALESCE(excluded.catalog, projects.catalog), updated_at = excluded.updated_at",
                (project_id, label_config, json.dumps(list(departments), ensure_ascii=False) if departments else None, catalog, now()))

    def project(self, project_id: int) -> Project | None:
        rows = self._read("SELECT * FROM projects WHERE project_id = ?", (project_id,))
        return _project(rows[0]) if rows else None

    def projects(self) -> list[Project]:
        return [_project(r) for r in self._read("SELECT * FROM projects ORDER BY project_id")]

    def set_project_model_version(self, project_id: int, model_version: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE projects SET model_version = ?, updated_at = ? WHERE project_id = ?", (model_version, now(), project_id))

    # -- gold labels ----------------------------------------------------------------------------------------
    def upsert_label(self, label: Label) -> str:
        """Store one gold label. Returns what happened: created, updated, unchanged, stale or deleted."""
        with self._tx() as db:
            return self._upsert(db, label)

    def upsert_labels(self, labels: Iterable[Label]) -> dict[str, int]:
        """Many labels in one transaction (history import): the same rules as one by one, one fsync."""
        counts = {"created": 0, "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
        with self._tx() as db:
            for label in labels:
                counts[self._upsert(db, label)] += 1
        return counts

    def _upsert(self, db, label: Label) -> str:
        if db.execute("SELECT 1 FROM deleted_annotations WHERE annotation_id = ?", (label.annotation_id,)).fetchone():
            return "deleted"
        old = db.execute("SELECT * FROM labels WHERE annotation_id = ?", (label.annotation_id,)).fetchone()
        if old is not None and old["updated_at"] and label.updated_at and label.updated_at < old["updated_at"]:
            return "stale"
        if old is not None:
            # The prediction shown when the annotator first answered stays the one on record; a later delivery
            # (an update, or a pull) only fills what an earlier one lacked.
            label = replace(
                label,
                annotator=label.annotator or old["annotator"],
                created_at=old["created_at"] or label.created_at,
                updated_at=label.updated_at or old["updated_at"],
                lead_time=label.lead_time if label.lead_time is not None else old["lead_time"],
                shown_model_version=old["shown_model_version"] or label.shown_model_version,
                shown_department=old["shown_department"] or label.shown_department,
                shown_score=old["shown_score"] if old["shown_score"] is not None else label.shown_score,
            )
        same_gold = old is not None and (old["department"], old["text"], old["rationale"]) == (label.department, label.text, label.rationale)
        seq = old["seq"] if same_gold else self._next_seq(db)
        key = text_key(label.text)
        split = self._assign_split(db, label.project_id, key, label.department)
        if old is not None:
            self._count(db, old["project_id"], old["accepted"], self._split_of(db, old["project_id"], old["text_key"]), -1, old["annotator"])
        db.execute(
            "INSERT INTO labels(annotation_id, project_id, task_id, text, text_key, department, rationale, annotator, created_at,"
            " updated_at, lead_time, shown_model_version, shown_department, shown_score, accepted, source, seq, stored_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(annotation_id) DO UPDATE SET project_id = excluded.project_id,"
            " task_id = excluded.task_id, text = excluded.text, text_key = excluded.text_key, department = excluded.department,"
            " rationale = excluded.rationale, annotator = excluded.annotator, created_at = excluded.created_at,"
            " updated_at = excluded.updated_at, lead_time = excluded.lead_time, shown_model_version = excluded.shown_model_version,"
            " shown_department = excluded.shown_department, shown_score = excluded.shown_score, accepted = excluded.accepted,"
            " source = excluded.source, seq = excluded.seq, stored_at = excluded.stored_at",
            (label.annotation_id, label.project_id, label.task_id, label.text, key, label.department, label.rationale,
             label.annotator, label.created_at, label.updated_at, label.lead_time, label.shown_model_version,
             label.shown_department, label.shown_score, label.accepted, old["source"] if same_gold else label.source,
             seq, old["stored_at"] if same_gold else now()),
        )
        self._count(db, label.project_id, label.accepted, split, +1, label.annotator)
        if not same_gold:
            self._touch(db, label.project_id, seq)
        if old is None:
            return "created"
        return "unchanged" if same_gold else "updated"

    def _assign_split(self, db, project_id: int, key: str, department: str) -> str:
        """Freeze a text into train or eval the first time it is labelled in a project, stratified by department:
        the n-th new text of a department goes to eval when round(n * f) steps up (the 3rd, 8th, 13th... for
        f = 0.2), until the department holds EVAL_MAX_PER_DEPARTMENT evaluation texts: the split the gate scores
        on stays the same size however many labels arrive."""
        row = db.execute("SELECT split FROM splits WHERE project_id = ? AND text_key = ?", (project_id, key)).fetchone()
        if row:
            return row["split"]
        counts = db.execute("SELECT texts, eval FROM split_counts WHERE project_id = ? AND department = ?",
                            (project_id, department)).fetchone()
        n, held = (counts["texts"] + 1, counts["eval"]) if counts else (1, 0)
        f = self.eval_fraction
        steps_up = math.floor(n * f + 0.5) > math.floor((n - 1) * f + 0.5)
        split = "eval" if steps_up and held < self.eval_max_per_department else "train"
        db.execute("INSERT INTO splits(project_id, text_key, department, split, assigned_at) VALUES (?,?,?,?,?)",
                   (project_id, key, department, split, now()))
        db.execute("INSERT INTO split_counts(project_id, department, texts, eval) VALUES (?,?,1,?) ON CONFLICT(project_id, department)"
                   " DO UPDATE SET texts = split_counts.texts + 1, eval = split_counts.eval + excluded.eval",
                   (project_id, department, int(split == "eval")))
        return split

    @staticmethod
    def _split_of(db, project_id: int, key: str) -> str:
        row = db.execute("SELECT split FROM splits WHERE project_id = ? AND text_key = ?", (project_id, key)).fetchone()
        return row["split"] if row else "train"

    @staticmethod
    def _count(db, project_id: int, accepted: int | None, split: str, sign: int, annotator: str | None) -> None:
        db.execute("INSERT INTO annotator_stats(annotator, labels) VALUES (?, ?) ON CONFLICT(annotator)"
                   " DO UPDATE SET labels = annotator_stats.labels + excluded.labels", (annotator or UNKNOWN_ANNOTATOR, sign))
        db.execute(
            "INSERT INTO project_stats(project_id, labels, eval, accepted, corrected) VALUES (?,?,?,?,?) ON CONFLICT(project_id)"
            " DO UPDATE SET labels = project_stats.labels + excluded.labels, eval = project_stats.eval + excluded.eval,"
            " accepted = project_stats.accepted + excluded.accepted, corrected = project_stats.corrected + excluded.corrected",
            (project_id, sign, sign * (split == "eval"), sign * (accepted == 1), sign * (accepted == 0)))

    @staticmethod
    def _touch(db, project_id: int, seq: int) -> None:
        db.execute("UPDATE project_stats SET last_seq = ? WHERE project_id = ?", (seq, project_id))

    def project_seq(self, project_id: int) -> int:
        """The label sequence number of the project's last change of gold (0: none yet): a model fitted at this
        number has seen every label of the project."""
        rows = self._read("SELECT last_seq FROM project_stats WHERE project_id = ?", (project_id,))
        return rows[0]["last_seq"] if rows else 0

    def delete_labels(self, annotation_ids: Iterable[int], project_id: int | None = None) -> int:
        """Remove labels and remember the ids, so a creation delivered late cannot bring them back."""
        removed = 0
        with self._tx() as db:
            for annotation_id in annotation_ids:
                db.execute(
                    "INSERT INTO deleted_annotations(annotation_id, project_id, deleted_at) VALUES (?,?,?)"
                    " ON CONFLICT(annotation_id) DO NOTHING", (annotation_id, project_id, now()))
                removed += self._remove(db, annotation_id)
        return removed

    def name_annotators(self, names: dict[str, str]) -> int:
        """Replace annotator ids by the people's names (emails) in the stored labels; the label data is unchanged,
        so the label sequence does not move and no model refits."""
        renamed = 0
        with self._tx() as db:
            for annotator, name in names.items():
                moved = db.execute("UPDATE labels SET annotator = ? WHERE annotator = ?", (name, annotator)).rowcount
                if moved:
                    db.execute("UPDATE annotator_stats SET labels = labels - ? WHERE annotator = ?", (moved, annotator))
                    db.execute("INSERT INTO annotator_stats(annotator, labels) VALUES (?, ?) ON CONFLICT(annotator)"
                               " DO UPDATE SET labels = annotator_stats.labels + excluded.labels", (name, moved))
                renamed += moved
        return renamed

    def annotator_counts(self) -> dict[str, int]:
        """Gold labels per annotator, most first (maintained by every write: no scan)."""
        return {r["annotator"]: int(r["labels"]) for r in self._read("SELECT annotator, labels FROM annotator_stats WHERE labels > 0"
                                                                      " ORDER BY labels DESC, annotator")}

    def discard_label(self, annotation_id: int) -> int:
        """A label that stopped being gold (cancelled/skipped) without being deleted: it may come back."""
        with self._tx() as db:
            return self._remove(db, annotation_id)

    def _remove(self, db, annotation_id: int) -> int:
        old = db.execute("SELECT project_id, text_key, accepted, annotator FROM labels WHERE annotation_id = ?", (annotation_id,)).fetchone()
        if old is None:
            return 0
        db.execute("DELETE FROM labels WHERE annotation_id = ?", (annotation_id,))
        self._count(db, old["project_id"], old["accepted"], self._split_of(db, old["project_id"], old["text_key"]), -1, old["annotator"])
        self._touch(db, old["project_id"], self._next_seq(db))
        return 1

    def reconcile_project(self, project_id: int, labels: list[Label], cancelled: set[int], pulled_since: str) -> dict:
        """Make the project's labels equal to a full pull from Label Studio, in one transaction.

        Labels stored after the pull began are kept even if the pull did not see them, and so are imported past
        tickets (source HISTORY): Label Studio never had them."""
        counts = {"created": 0, "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0, "removed": 0}
        seen = {label.annotation_id for label in labels}
        with self._tx() as db:
            for label in labels:
                counts[self._upsert(db, label)] += 1
            for annotation_id in cancelled:
                counts["removed"] += self._remove(db, annotation_id)
            for row in db.execute(
                "SELECT annotation_id FROM labels WHERE project_id = ? AND stored_at < ? AND source <> ?", (project_id, pulled_since, HISTORY)
            ).fetchall():
                if row["annotation_id"] not in seen:
                    counts["removed"] += self._remove(db, row["annotation_id"])
        return counts

    _LABELS = ("SELECT l.*, COALESCE(s.split, 'train') AS split FROM labels l"
               " LEFT JOIN splits s ON s.project_id = l.project_id AND s.text_key = l.text_key WHERE 1=1")

    def _label_query(self, split: str | None, project_id: int | None, since_seq: int | None) -> tuple[str, list]:
        sql, params = self._LABELS, []
        if split:
            sql += " AND COALESCE(s.split, 'train') = ?"
            params.append(split)
        if project_id is not None:
            sql += " AND l.project_id = ?"
            params.append(project_id)
        if since_seq is not None:
            sql += " AND l.seq > ?"
            params.append(since_seq)
        return sql, params

    def labels(self, project_id: int | None = None, split: str | None = None, since_seq: int | None = None) -> list[StoredLabel]:
        """Gold labels in the order they last changed; every project's when `project_id` is None."""
        sql, params = self._label_query(split, project_id, since_seq)
        return [_stored_label(row) for row in self._read(sql + " ORDER BY l.seq", params)]

    def iter_labels(self, project_id: int | None = None, split: str | None = None, batch: int = 5000) -> Iterator[StoredLabel]:
        """The same labels, read in batches (keyset on the sequence number), so exports and reports of a million
        labels hold one batch in memory, not all of them."""
        after = 0
        while True:
            sql, params = self._label_query(split, project_id, after)
            rows = self._read(sql + " ORDER BY l.seq LIMIT ?", [*params, batch])
            for row in rows:
                yield _stored_label(row)
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    def training_sample(self, project_id: int, departments: Sequence[str], limit: int | None) -> tuple[list[StoredLabel], int]:
        """(labels, how many the project holds for `departments`): every evaluation label of those departments and
        at most `limit` training labels, taken round-robin over the departments, newest first within each
        (``learning.instant_model.newest_per_department``, chosen here by the database so that a refit over 10^6
        labels reads the 2 % it fits, not the 10^6)."""
        if not departments:
            return [], 0
        names = ",".join("?" * len(departments))
        scope = (f" FROM labels l LEFT JOIN splits s ON s.project_id = l.project_id AND s.text_key = l.text_key"
                 f" WHERE l.project_id = ? AND l.department IN ({names})")
        params = [project_id, *departments]
        total = self._read("SELECT COUNT(*) AS n" + scope, params)[0]["n"]
        held_out = self._read(self._LABELS + f" AND l.project_id = ? AND l.department IN ({names})"
                              " AND COALESCE(s.split, 'train') = 'eval' ORDER BY l.seq", params)
        turns = self._read(f"SELECT seq FROM (SELECT l.seq, ROW_NUMBER() OVER (PARTITION BY l.department ORDER BY l.seq DESC)"
                           f" AS turn{scope} AND COALESCE(s.split, 'train') = 'train') ranked ORDER BY turn, seq DESC"
                           + (" LIMIT ?" if limit is not None else ""), [*params, *([limit] if limit is not None else [])])
        seqs = [row["seq"] for row in turns]
        train = []
        for start in range(0, len(seqs), 900):  # SQLite's bound on one statement's parameters is 999 on old builds
            chunk = seqs[start:start + 900]
            train += self._read(self._LABELS + f" AND l.seq IN ({','.join('?' * len(chunk))})", chunk)
        return [_stored_label(row) for row in sorted(train, key=lambda row: row["seq"]) + held_out], total

    def stored_ids(self, annotation_ids: Iterable[int]) -> set[int]:
        """Which of these ids the store holds a label for (a chunk at a time: one query, not one per id)."""
        ids = list(annotation_ids)
        if not ids:
            return set()
        rows = self._read(f"SELECT annotation_id FROM labels WHERE annotation_id IN ({','.join('?' * len(ids))})", ids)
        return {row["annotation_id"] for row in rows}

    def get_label(self, annotation_id: int) -> StoredLabel | None:
        rows = self._read(self._LABELS + " AND l.annotation_id = ?", (annotation_id,))
        return _stored_label(rows[0]) if rows else None

    def count_labels(self, project_id: int | None = None, since_seq: int = 0, at_most: int | None = None,
                     until_seq: int | None = None) -> int:
        """Labels changed after `since_seq` (and, with `until_seq`, not after it); with `at_most`, counting stops there
        (a bounded read of the index)."""
        where, params = ("seq > ?", [since_seq]) if project_id is None else ("project_id = ? AND seq > ?", [project_id, since_seq])
        if until_seq is not None:
            where, params = where + " AND seq <= ?", [*params, until_seq]
        if at_most is None:
            return self._read(f"SELECT COUNT(*) AS n FROM labels WHERE {where}", params)[0]["n"]
        return self._read(f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM labels WHERE {where} LIMIT ?) bounded", [*params, at_most])[0]["n"]

    def label_stats(self, project_id: int | None = None) -> dict:
        """labels, eval, accepted, corrected: kept up to date by every write, so this never scans the labels."""
        where, params = ("WHERE project_id = ?", (project_id,)) if project_id is not None else ("", ())
        row = self._read("SELECT COALESCE(SUM(labels), 0) AS labels, COALESCE(SUM(eval), 0) AS eval, COALESCE(SUM(accepted), 0)"
                         f" AS accepted, COALESCE(SUM(corrected), 0) AS corrected FROM project_stats {where}", params)[0]
        return {key: int(row[key]) for key in ("labels", "eval", "accepted", "corrected")}  # PostgreSQL sums are decimals

    def integrity_errors(self) -> list[str]:
        """Checks a restarted store must pass: SQLite's own check, every label split, no deleted annotation
        revived, the maintained counters equal to a count of the rows."""
        errors = [r[0] for r in self._read("PRAGMA integrity_check") if r[0] != "ok"] if self.db.dialect == "sqlite" else []
        orphans = self._read("SELECT COUNT(*) AS n FROM labels l LEFT JOIN splits s ON s.project_id = l.project_id"
                             " AND s.text_key = l.text_key WHERE s.text_key IS NULL")[0]["n"]
        if orphans:
            errors.append(f"{orphans} labels have no split")
        resurrected = self._read("SELECT COUNT(*) AS n FROM labels WHERE annotation_id IN (SELECT annotation_id FROM deleted_annotations)")[0]["n"]
        if resurrected:
            errors.append(f"{resurrected} deleted annotations are stored as labels")
        counted = self._read(
            "SELECT l.project_id, COUNT(*) AS labels, SUM(CASE WHEN s.split = 'eval' THEN 1 ELSE 0 END) AS eval,"
            " SUM(CASE WHEN l.accepted = 1 THEN 1 ELSE 0 END) AS accepted, SUM(CASE WHEN l.accepted = 0 THEN 1 ELSE 0 END) AS corrected"
            " FROM labels l LEFT JOIN splits s ON s.project_id = l.project_id AND s.text_key = l.text_key GROUP BY l.project_id")
        kept = {r["project_id"]: (r["labels"], r["eval"], r["accepted"], r["corrected"]) for r in self._read("SELECT * FROM project_stats")}
        per_annotator = {r["annotator"]: int(r["n"]) for r in self._read(
            "SELECT COALESCE(annotator, ?) AS annotator, COUNT(*) AS n FROM labels GROUP BY 1", (UNKNOWN_ANNOTATOR,))}
        if per_annotator != self.annotator_counts():
            errors.append(f"annotator counters {self.annotator_counts()} but the labels say {per_annotator}")
        for row in counted:
            actual = tuple(int(row[k]) for k in ("labels", "eval", "accepted", "corrected"))
            if kept.get(row["project_id"], (0, 0, 0, 0)) != actual:
                errors.append(f"project {row['project_id']}: counters {kept.get(row['project_id'])} but the labels say {actual}")
        return errors

    # -- predictions ----------------------------------------------------------------------------------------
    def save_predictions(self, rows: list[dict]) -> None:
        if not rows:
            return
        stamp = now()
        with self._tx(serialize=False) as db:
            db.executemany(
                "INSERT INTO predictions(project_id, task_id, model_version, department, score, margin, entropy, top,"
                " truncated, created_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(project_id, task_id, model_version) DO UPDATE SET"
                " department = excluded.department, score = excluded.score, margin = excluded.margin,"
                " entropy = excluded.entropy, top = excluded.top, truncated = excluded.truncated,"
                " created_at = excluded.created_at",
                [(r["project_id"], r["task_id"], r["model_version"], r["department"], r["score"], r["margin"], r["entropy"],
                  json.dumps(r["top"], ensure_ascii=False), r["truncated"], stamp) for r in rows])

    def predictions(self, project_id: int | None = None, model_version: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM predictions WHERE 1=1", []
        if model_version:
            sql += " AND model_version = ?"
            params.append(model_version)
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        return [{**dict(r), "top": json.loads(r["top"])} for r in self._read(sql + " ORDER BY task_id", params)]

    def prediction_versions(self, project_id: int) -> list[str]:
        return [r["model_version"] for r in self._read(
            "SELECT model_version, MIN(created_at) AS first FROM predictions WHERE project_id = ? GROUP BY model_version"
            " ORDER BY first", (project_id,))]

    # -- model versions: one line per project ---------------------------------------------------------------
    def add_version(self, project_id: int, name: str, kind: str, status: str, parent: str | None = None, path: str | None = None,
                    data: dict | None = None, metrics: dict | None = None, note: str | None = None) -> Version:
        if not VERSION_NAME.fullmatch(name):
            raise ValueError(f"invalid version name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
        with self._tx() as db:
            db.execute(
                "INSERT INTO versions(project_id, name, kind, parent, status, path, data, metrics, created_at, note)"
                " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(project_id, name) DO UPDATE SET status = excluded.status,"
                " path = excluded.path, data = excluded.data, metrics = excluded.metrics, note = excluded.note",
                (project_id, name, kind, parent, status, path, json.dumps(data or {}), json.dumps(metrics or {}), now(), note))
        return self.get_version(project_id, name)

    def update_version(self, project_id: int, name: str, **changes) -> None:
        allowed = {"status", "metrics", "note", "path", "data"}
        if not changes or not set(changes) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        values = {k: json.dumps(v) if k in {"metrics", "data"} else v for k, v in changes.items()}
        with self._tx() as db:
            db.execute(f"UPDATE versions SET {', '.join(f'{k} = ?' for k in values)} WHERE project_id = ? AND name = ?",
                       (*values.values(), project_id, name))

    def promote_version(self, project_id: int, name: str) -> None:
        """Make `name` the serving version of its kind in the project; the previous one is retired, never deleted."""
        with self._tx() as db:
            row = db.execute("SELECT kind FROM versions WHERE project_id = ? AND name = ?", (project_id, name)).fetchone()
            if row is None:
                raise KeyError(name)
            db.execute("UPDATE versions SET status = 'retired' WHERE project_id = ? AND kind = ? AND status = 'serving' AND name != ?",
                       (project_id, row["kind"], name))
            db.execute("UPDATE versions SET status = 'serving', promoted_at = ? WHERE project_id = ? AND name = ?", (now(), project_id, name))

    def get_version(self, project_id: int, name: str) -> Version | None:
        rows = self._read("SELECT * FROM versions WHERE project_id = ? AND name = ?", (project_id, name))
        return _version(rows[0]) if rows else None

    def serving_version(self, project_id: int, kind: str) -> Version | None:
        rows = self._read("SELECT * FROM versions WHERE project_id = ? AND kind = ? AND status = 'serving'"
                          " ORDER BY promoted_at DESC LIMIT 1", (project_id, kind))
        return _version(rows[0]) if rows else None

    def versions(self, project_id: int | None = None, kind: str | None = None, limit: int | None = None, offset: int = 0,
                 newest_first: bool = False) -> list[Version]:
        sql, params = "SELECT * FROM versions WHERE 1=1", []
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY created_at DESC, name DESC" if newest_first else " ORDER BY created_at, name"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [_version(r) for r in self._read(sql, params)]

    def projects_with_versions(self) -> list[int]:
        return [r["project_id"] for r in self._read("SELECT DISTINCT project_id FROM versions ORDER BY project_id")]

    def count_versions(self, project_id: int | None = None, kind: str | None = None) -> int:
        sql, params = "SELECT COUNT(*) AS n FROM versions WHERE 1=1", []
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        return self._read(sql, params)[0]["n"]

    def version_by_data(self, project_id: int, kind: str, **data) -> Version | None:
        """The newest version of `kind` whose data holds these values (e.g. the fit of a label sequence)."""
        for version in self.versions(project_id, kind, limit=20, newest_first=True):
            if all(version.data.get(k) == v for k, v in data.items()):
                return version
        return None

    def prune_versions(self, project_id: int, kind: str, keep: int) -> list[str]:
        """Delete retired versions of `kind` beyond the newest `keep` (serving, candidate and rejected versions
        stay): the instant model refits all day, and its history must not grow without bound."""
        with self._tx() as db:
            retired = db.execute("SELECT name FROM versions WHERE project_id = ? AND kind = ? AND status = 'retired'"
                                 " ORDER BY created_at DESC, name DESC", (project_id, kind)).fetchall()[keep:]
            for row in retired:
                db.execute("DELETE FROM versions WHERE project_id = ? AND name = ?", (project_id, row["name"]))
        return [row["name"] for row in retired]

    # -- jobs -----------------------------------------------------------------------------------------------
    def request_job(self, kind: str, reason: str, project_id: int, join_running: bool = True) -> tuple[Job, bool]:
        """Queue a job unless an unfinished one of the same kind exists for the project: requests coalesce per
        project. With `join_running` False they coalesce only into a queued job, for jobs that read their input
        when they start (a refit: labels stored while one runs need the next). Returns (job, created)."""
        joinable = UNFINISHED if join_running else (JobStatus.QUEUED,)
        with self._tx() as db:
            row = db.execute(f"SELECT * FROM jobs WHERE kind = ? AND project_id = ? AND status IN ({','.join('?' * len(joinable))})"
                             " ORDER BY id LIMIT 1", (kind, project_id, *joinable)).fetchone()
            if row is not None:
                return _job(row), False
            job_id = db.execute(
                "INSERT INTO jobs(kind, status, reason, project_id, label_seq, requested_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (kind, JobStatus.QUEUED, reason, project_id, _current_seq(db), now())).fetchone()["id"]
        return self.get_job(job_id), True

    _NEXT = ("SELECT id FROM (SELECT q.id, (SELECT MAX(r.started_at) FROM jobs r WHERE r.kind = q.kind AND r.project_id = q.project_id)"
             " AS last_started FROM jobs q WHERE q.kind = ? AND q.status = ?) AS waiting"
             " ORDER BY CASE WHEN last_started IS NULL THEN 0 ELSE 1 END, last_started, id")

    def next_queued_job(self, kind: str) -> Job | None:
        """The queued job to run next, fair between projects: the project whose last job of this kind started
        longest ago (or never) goes first, so a busy project cannot starve the others."""
        rows = self._read(self._NEXT + " LIMIT 1", (kind, JobStatus.QUEUED))
        return self.get_job(rows[0]["id"]) if rows else None

    def claim_job(self, job_id: int | None, kind: str, claimed_by: str) -> Job | None:
        """Mark a queued job running for `claimed_by` (a worker: host and pid) — `job_id`, or the next fair one when
        None — in one transaction; None when it is not queued any more (another worker took it). On PostgreSQL
        the row is locked with SKIP LOCKED, so competing workers never wait on each other or take the same job."""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        with self._tx(serialize=False) as db:
            if job_id is None:
                # The status is checked again on the locked row: PostgreSQL re-reads a row another worker just
                # committed, but not the subquery that picked it.
                row = db.execute(f"SELECT id FROM jobs WHERE id = ({self._NEXT} LIMIT 1) AND status = ?{skip_locked}",
                                 (kind, JobStatus.QUEUED, JobStatus.QUEUED)).fetchone()
            else:
                row = db.execute(f"SELECT id FROM jobs WHERE id = ? AND kind = ? AND status = ?{skip_locked}",
                                 (job_id, kind, JobStatus.QUEUED)).fetchone()
            if row is None:
                return None
            stamp = now()
            claimed = db.execute("UPDATE jobs SET status = ?, started_at = ?, claimed_by = ?, heartbeat_at = ? WHERE id = ? AND status = ?",
                                 (JobStatus.RUNNING, stamp, claimed_by, stamp, row["id"], JobStatus.QUEUED)).rowcount
        return self.get_job(row["id"]) if claimed else None

    # -- routing: decisions per ticket, and the audit of auto-routed ones ------------------------------------
    def routes(self, project_id: int, ticket_ids: Iterable[str]) -> dict[str, Route]:
        ids = list(ticket_ids)
        found = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start: start + 500]
            for row in self._read(f"SELECT * FROM routes WHERE project_id = ? AND ticket_id IN ({','.join('?' * len(chunk))})",
                                  (project_id, *chunk)):
                found[row["ticket_id"]] = Route(**dict(row))
        return found

    def save_routes(self, routes: list[Route]) -> dict[str, Route]:
        """Store decisions and count them per model version; a ticket id decided meanwhile (another replica) keeps
        its first decision and is not counted again. Returns what is stored for each id."""
        if not routes:
            return {}
        project_id = routes[0].project_id
        with self._tx() as db:
            ids = [r.ticket_id for r in routes]
            taken = {row["ticket_id"] for row in db.execute(
                f"SELECT ticket_id FROM routes WHERE project_id = ? AND ticket_id IN ({','.join('?' * len(ids))})", (project_id, *ids))}
            new = [r for r in routes if r.ticket_id not in taken]
            db.executemany("INSERT INTO routes(project_id, ticket_id, text_key, department, probability, model_version, decision, threshold,"
                           " audit, reason, text, top, task_id, reviewed_department, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           [(r.project_id, r.ticket_id, r.text_key, r.department, r.probability, r.model_version, r.decision, r.threshold,
                             r.audit, r.reason, r.text, r.top, r.task_id, r.reviewed_department, r.created_at) for r in new])
            for version in sorted({r.model_version for r in new}):
                mine = [r for r in new if r.model_version == version]
                auto = sum(r.decision == AUTO for r in mine)
                db.execute("INSERT INTO route_stats(project_id, model_version, auto, review, audit_selected) VALUES (?, ?, ?, ?, ?)"
                           " ON CONFLICT(project_id, model_version) DO UPDATE SET auto = route_stats.auto + excluded.auto,"
                           " review = route_stats.review + excluded.review, audit_selected = route_stats.audit_selected + excluded.audit_selected",
                           (project_id, version, auto, len(mine) - auto, sum(bool(r.audit) for r in mine)))
        return self.routes(project_id, ids)

    def routes_to_push(self, project_id: int, limit: int = 500) -> list[Route]:
        """Routed tickets a person must see (review, or audit) that have no Label Studio task yet, oldest first."""
        return [Route(**dict(row)) for row in self._read(
            "SELECT * FROM routes WHERE project_id = ? AND task_id IS NULL AND (decision = 'review' OR audit = 1)"
            " ORDER BY created_at, ticket_id LIMIT ?", (project_id, limit))]

    def set_route_tasks(self, project_id: int, tasks: dict[str, int]) -> None:
        """Ticket id -> the Label Studio task that now shows it."""
        with self._tx(serialize=False) as db:
            db.executemany("UPDATE routes SET task_id = ? WHERE project_id = ? AND ticket_id = ?",
                           [(task_id, project_id, ticket_id) for ticket_id, task_id in tasks.items()])

    def record_review(self, project_id: int, task_id: int, department: str) -> Route | None:
        """People answered a routed ticket's task: the first answer is its review; for an audited one it counts
        towards its model version's realised precision. Returns the route, or None when the task is no route's."""
        if not self._read("SELECT 1 FROM routes WHERE project_id = ? AND task_id = ?", (project_id, task_id)):
            return None  # most labels: not a routed ticket, and no write transaction for them
        with self._tx() as db:
            row = db.execute("SELECT * FROM routes WHERE project_id = ? AND task_id = ?", (project_id, task_id)).fetchone()
            if row is None:
                return None
            if row["reviewed_department"] is None:
                db.execute("UPDATE routes SET reviewed_department = ? WHERE project_id = ? AND ticket_id = ?",
                           (department, project_id, row["ticket_id"]))
                if row["audit"]:
                    db.execute("UPDATE route_stats SET audited = audited + 1, correct = correct + ? WHERE project_id = ? AND model_version = ?",
                               (int(department == row["department"]), project_id, row["model_version"]))
            row = db.execute("SELECT * FROM routes WHERE project_id = ? AND task_id = ?", (project_id, task_id)).fetchone()
        return Route(**dict(row))

    def reviews_from_labels(self, project_id: int, since_seq: int = 0) -> tuple[int, int]:
        """Record as reviews the gold labels (newer than `since_seq`) of routed tasks not reviewed yet: labels a
        reconcile pulled because their webhook never arrived. Returns (reviews recorded, the newest seq seen)."""
        rows = self._read("SELECT l.task_id, l.department, l.seq FROM labels l JOIN routes r ON r.project_id = l.project_id AND r.task_id = l.task_id"
                          " WHERE l.project_id = ? AND l.seq > ? AND r.reviewed_department IS NULL ORDER BY l.seq", (project_id, since_seq))
        for row in rows:
            self.record_review(project_id, row["task_id"], row["department"])
        newest = self._read("SELECT MAX(seq) AS s FROM labels WHERE project_id = ?", (project_id,))[0]["s"] or 0
        return len(rows), max(since_seq, int(newest))

    def route_projects(self) -> list[int]:
        return [int(row["project_id"]) for row in self._read("SELECT DISTINCT project_id FROM route_stats")]

    def route_versions(self, project_id: int) -> list[str]:
        """Versions of a project that routed tickets and still may auto-route."""
        return [row["model_version"] for row in self._read("SELECT model_version FROM route_stats WHERE project_id = ? AND stopped_at IS NULL",
                                                           (project_id,))]

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold `name` for `seconds` unless another owner holds it: one replica at a time does a piece of shared
        work (pushing a project's routed tickets to Label Studio); a holder that died loses it when it expires."""
        key = f"lease:{name}"
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                holder, _, until = row["value"].rpartition("|")
                if holder != owner and float(until) > time.time():
                    return False
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, f"{owner}|{time.time() + seconds}"))
        return True

    def route_stats(self, project_id: int, model_version: str) -> RouteStats:
        rows = self._read("SELECT * FROM route_stats WHERE project_id = ? AND model_version = ?", (project_id, model_version))
        return RouteStats(**dict(rows[0])) if rows else RouteStats(project_id, model_version)

    def stop_auto_routing(self, project_id: int, model_version: str, reason: str) -> bool:
        """Stop auto-routing with a version for good (True the first time)."""
        with self._tx() as db:
            db.execute("INSERT INTO route_stats(project_id, model_version) VALUES (?, ?) ON CONFLICT(project_id, model_version) DO NOTHING",
                       (project_id, model_version))
            return db.execute("UPDATE route_stats SET stopped_at = ?, stop_reason = ? WHERE project_id = ? AND model_version = ?"
                              " AND stopped_at IS NULL", (now(), reason, project_id, model_version)).rowcount == 1

    def jobs_to_enqueue(self, kind: str, enqueuer: str, stale_before: str) -> list[Job]:
        """Queued jobs no replica has handed to the queue yet (or whose hand-over is older than `stale_before`:
        the replica died before enqueuing), marked as handed over by `enqueuer` — each goes to the queue once."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE kind = ? AND status = ? AND (claimed_by IS NULL OR"
                              " (claimed_by LIKE 'queue:%' AND heartbeat_at < ?))", (kind, JobStatus.QUEUED, stale_before)).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET claimed_by = ?, heartbeat_at = ? WHERE id = ?", (f"queue:{enqueuer}", now(), row["id"]))
        return [_job(row) for row in rows]

    def heartbeat(self, job_id: int, claimed_by: str, progress: dict | None = None) -> bool:
        """The worker is alive (and where it is); False when the job is no longer its own (declared lost)."""
        sets, params = "heartbeat_at = ?", [now()]
        if progress is not None:
            sets, params = sets + ", progress = ?", params + [json.dumps(progress)]
        with self._tx(serialize=False) as db:
            updated = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND claimed_by = ? AND status IN (?, ?)",
                                 (*params, job_id, claimed_by, JobStatus.RUNNING, JobStatus.EVALUATING)).rowcount
        return updated == 1

    def fail_lost_jobs(self, kind: str, silent_since: str) -> list[Job]:
        """Jobs whose worker stopped beating before `silent_since` (killed, its machine gone) are failed, and a
        new job is queued for each project so the work is done again by whoever is alive."""
        with self._tx() as db:
            lost = db.execute("SELECT * FROM jobs WHERE kind = ? AND status IN (?, ?) AND heartbeat_at < ?",
                              (kind, JobStatus.RUNNING, JobStatus.EVALUATING, silent_since)).fetchall()
            for row in lost:
                db.execute("UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                           (JobStatus.FAILED, now(), f"lost: its worker ({row['claimed_by']}) stopped answering", row["id"]))
                db.execute("INSERT INTO jobs(kind, status, reason, project_id, label_seq, requested_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (kind, JobStatus.QUEUED, f"again after job {row['id']} was lost", row["project_id"], _current_seq(db), now()))
        return [_job(row) for row in lost]

    def finish_job(self, job_id: int, claimed_by: str, status: str, **changes) -> bool:
        """End a job this worker still owns (False: it was declared lost meanwhile, and nothing is written)."""
        values = {k: json.dumps(v) if k == "progress" else v for k, v in {"status": status, "finished_at": now(), **changes}.items()}
        with self._tx(serialize=False) as db:
            updated = db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND claimed_by = ? AND status IN (?, ?)",
                                 (*values.values(), job_id, claimed_by, JobStatus.RUNNING, JobStatus.EVALUATING)).rowcount
        return updated == 1

    def promote_for_job(self, job_id: int, claimed_by: str, project_id: int, name: str) -> bool:
        """Promote `name` and finish the job in one transaction, only while the job is still this worker's: a
        worker declared lost that comes back can never promote a second time."""
        with self._tx() as db:
            owned = db.execute("SELECT 1 FROM jobs WHERE id = ? AND claimed_by = ? AND status IN (?, ?)",
                               (job_id, claimed_by, JobStatus.RUNNING, JobStatus.EVALUATING)).fetchone()
            if owned is None:
                return False
            kind = db.execute("SELECT kind FROM versions WHERE project_id = ? AND name = ?", (project_id, name)).fetchone()["kind"]
            db.execute("UPDATE versions SET status = 'retired' WHERE project_id = ? AND kind = ? AND status = 'serving' AND name != ?",
                       (project_id, kind, name))
            stamp = now()
            db.execute("UPDATE versions SET status = 'serving', promoted_at = ? WHERE project_id = ? AND name = ?", (stamp, project_id, name))
            db.execute("UPDATE jobs SET status = ?, finished_at = ?, version = ? WHERE id = ?", (JobStatus.PROMOTED, stamp, name, job_id))
        return True

    def update_job(self, job_id: int, **changes) -> None:
        allowed = {"status", "started_at", "finished_at", "pid", "progress", "version", "error", "label_seq", "claimed_by", "heartbeat_at"}
        if not changes or not set(changes) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        values = {k: json.dumps(v) if k == "progress" else v for k, v in changes.items()}
        with self._tx(serialize=False) as db:
            db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?", (*values.values(), job_id))

    def get_job(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, kind: str | None = None, status: Iterable[str] | None = None, project_id: int | None = None,
             limit: int = 100) -> list[Job]:
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if status:
            status = list(status)
            sql += f" AND status IN ({','.join('?' * len(status))})"
            params.extend(status)
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_job(r) for r in self._read(sql, params)]

    def job_counts(self) -> dict[tuple[str, str], int]:
        return {(r["kind"], r["status"]): r["n"] for r in self._read("SELECT kind, status, COUNT(*) AS n FROM jobs GROUP BY kind, status")}

    def last_job_label_seq(self, kind: str, project_id: int) -> int:
        """Labels up to this sequence number were (or are being) trained on; failed jobs do not count."""
        rows = self._read("SELECT MAX(label_seq) AS s FROM jobs WHERE kind = ? AND project_id = ? AND status != ?",
                          (kind, project_id, JobStatus.FAILED))
        return rows[0]["s"] or 0


@dataclass
class Route:
    """One ticket's routing decision, kept so the same ticket id always gets the same answer."""

    project_id: int
    ticket_id: str
    text_key: str
    department: str
    probability: float
    model_version: str
    decision: str
    threshold: float | None
    audit: int
    reason: str | None
    text: str | None  # kept only for tickets a person must see (review, or audit): their Label Studio tasks show it
    top: str | None  # JSON [[department, probability], ...], the suggestions its task shows
    task_id: int | None
    reviewed_department: str | None
    created_at: str

    def to_dict(self) -> dict:
        return {"id": self.ticket_id, "department": self.department, "probability": round(self.probability, 6),
                "model_version": self.model_version, "decision": self.decision, "threshold": self.threshold,
                "audit": bool(self.audit), **({"reason": self.reason} if self.reason else {})}


@dataclass
class RouteStats:
    """What a model version decided (auto, review, of which audited) and what the audits found."""

    project_id: int
    model_version: str
    auto: int = 0
    review: int = 0
    audit_selected: int = 0
    audited: int = 0
    correct: int = 0
    stopped_at: str | None = None
    stop_reason: str | None = None


def _current_seq(db) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = 'label_seq'").fetchone()
    return int(row["value"]) if row else 0


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Statement by statement: executescript() would commit the caller's transaction first."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """A store written before projects had their own state: one label space, one version line, a split keyed by
    text alone. Each label stays with its project; each project gets the split rows of its own texts; the one
    version line, its jobs and the remembered config go to the project whose config was served last (else the
    lowest project id, else DEFAULT_PROJECT); counters are computed once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
        projects = conn.execute("SELECT project_id, label_config FROM projects ORDER BY project_id").fetchall()
        owner = next((p[0] for p in projects if p[1] and p[1] == meta.get("label_config")), projects[0][0] if projects else DEFAULT_PROJECT)
        for table in ("splits", "versions", "jobs", "projects"):
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
        _script(conn, SCHEMA)
        conn.execute("INSERT INTO splits(project_id, text_key, department, split, assigned_at)"
                     " SELECT DISTINCT l.project_id, s.text_key, s.department, s.split, s.assigned_at FROM splits_v1 s"
                     " JOIN labels l ON l.text_key = s.text_key")
        conn.execute("INSERT INTO split_counts(project_id, department, texts, eval) SELECT project_id, department, COUNT(*),"
                     " SUM(CASE WHEN split = 'eval' THEN 1 ELSE 0 END) FROM splits GROUP BY project_id, department")
        conn.execute("INSERT INTO versions(project_id, name, kind, parent, status, path, data, metrics, created_at, promoted_at, note)"
                     " SELECT ?, name, kind, parent, status, path, data, metrics, created_at, promoted_at, note FROM versions_v1", (owner,))
        conn.execute("INSERT INTO jobs(id, kind, status, reason, project_id, label_seq, requested_at, started_at, finished_at, pid,"
                     " progress, version, error) SELECT id, kind, status, reason, COALESCE(project_id, ?), label_seq, requested_at,"
                     " started_at, finished_at, pid, progress, version, error FROM jobs_v1", (owner,))
        departments = meta.get("departments")
        conn.execute("INSERT INTO projects(project_id, label_config, departments, model_version, updated_at)"
                     " SELECT project_id, label_config, CASE WHEN project_id = ? THEN ? END, model_version, updated_at FROM projects_v1",
                     (owner, departments))
        if owner == DEFAULT_PROJECT and meta.get("label_config"):
            conn.execute("INSERT INTO projects(project_id, label_config, departments, updated_at) VALUES (?,?,?,?)",
                         (owner, meta["label_config"], departments, now()))
        conn.execute("INSERT INTO annotator_stats(annotator, labels) SELECT COALESCE(annotator, ?), COUNT(*) FROM labels"
                     " GROUP BY COALESCE(annotator, ?)", (UNKNOWN_ANNOTATOR, UNKNOWN_ANNOTATOR))
        conn.execute(
            "INSERT INTO project_stats(project_id, labels, eval, accepted, corrected, last_seq) SELECT l.project_id, COUNT(*),"
            " SUM(CASE WHEN s.split = 'eval' THEN 1 ELSE 0 END), SUM(CASE WHEN l.accepted = 1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN l.accepted = 0 THEN 1 ELSE 0 END), MAX(l.seq) FROM labels l LEFT JOIN splits s ON s.project_id = l.project_id"
            " AND s.text_key = l.text_key GROUP BY l.project_id")
        for table in ("splits", "versions", "jobs", "projects"):
            conn.execute(f"DROP TABLE {table}_v1")
        if "label_seq" in meta:
            conn.execute("INSERT INTO counters(name, value) VALUES ('label_seq', ?)", (int(meta["label_seq"]),))
        conn.execute("DELETE FROM meta WHERE key IN ('label_config', 'departments', 'label_seq')")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _stored_label(row) -> StoredLabel:
    d = dict(row)
    d.pop("accepted")  # derived from shown_department and department; kept as a column for queries
    return StoredLabel(**d)


def _version(row) -> Version:
    d = dict(row)
    d["data"] = json.loads(d["data"] or "{}")
    d["metrics"] = json.loads(d["metrics"] or "{}")
    return Version(**d)


def _job(row) -> Job:
    d = dict(row)
    d["progress"] = json.loads(d["progress"] or "{}")
    return Job(**d)


def _project(row) -> Project:
    d = dict(row)
    d["departments"] = tuple(json.loads(d["departments"])) if d["departments"] else None
    return Project(**d)
