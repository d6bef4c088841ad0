"""The durable store under MODEL_DIR: gold labels, the frozen evaluation split, served predictions, model
versions and jobs, in one SQLite database (WAL, synchronous=FULL: a label acknowledged is a label kept).

Every write is one transaction, so a process killed at any point leaves either the old or the new state.
Label writes are idempotent and order-tolerant: duplicates change nothing, a stale update is ignored, and an
annotation deleted before its creation arrives stays deleted (a tombstone remembers it).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from core.jobs import UNFINISHED, JobStatus

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
CREATE INDEX IF NOT EXISTS labels_task ON labels(project_id, task_id);
CREATE INDEX IF NOT EXISTS labels_text_key ON labels(text_key);
CREATE TABLE IF NOT EXISTS deleted_annotations (
    annotation_id INTEGER PRIMARY KEY,
    project_id INTEGER,
    deleted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS splits (
    text_key TEXT PRIMARY KEY,
    department TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'eval')),
    assigned_at TEXT NOT NULL
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
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    parent TEXT,
    status TEXT NOT NULL,
    path TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    promoted_at TEXT,
    note TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    project_id INTEGER,
    label_seq INTEGER,
    requested_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    pid INTEGER,
    progress TEXT NOT NULL DEFAULT '{}',
    version TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    label_config TEXT,
    model_version TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


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
    project_id: int | None
    label_seq: int | None
    requested_at: str
    started_at: str | None
    finished_at: str | None
    pid: int | None
    progress: dict
    version: str | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED

    def to_dict(self) -> dict:
        return {**asdict(self), "finished": self.finished}


@dataclass
class Version:
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


class Store:
    def __init__(self, path: Path, eval_fraction: float = 0.2):
        self.path = Path(path)
        self.eval_fraction = eval_fraction
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._conn().executescript(SCHEMA)

    # -- connection handling -------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front so concurrent writers queue
        instead of failing half-way."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Iterable = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- meta -----------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        seq = _current_seq(db) + 1
        _put_meta(db, "label_seq", str(seq))
        return seq

    def set_label_space(self, label_config: str, departments: tuple[str, ...]) -> None:
        """The labeling config the service serves, and its department list for readers that do not parse XML
        (the training worker)."""
        with self._tx() as db:
            _put_meta(db, "label_config", label_config)
            _put_meta(db, "departments", json.dumps(list(departments), ensure_ascii=False))

    def departments(self) -> tuple[str, ...] | None:
        raw = self.get_meta("departments")
        return tuple(json.loads(raw)) if raw else None

    def label_seq(self) -> int:
        return int(self.get_meta("label_seq", "0"))

    # -- gold labels ----------------------------------------------------------------------------------------
    def upsert_label(self, label: Label) -> str:
        """Store one gold label. Returns what happened: created, updated, unchanged, stale or deleted."""
        with self._tx() as db:
            return self._upsert(db, label)

    def _upsert(self, db: sqlite3.Connection, label: Label) -> str:
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
        self._assign_split(db, key, label.department)
        db.execute(
            "INSERT OR REPLACE INTO labels(annotation_id, project_id, task_id, text, text_key, department, rationale,"
            " annotator, created_at, updated_at, lead_time, shown_model_version, shown_department, shown_score, accepted,"
            " source, seq, stored_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (label.annotation_id, label.project_id, label.task_id, label.text, key, label.department, label.rationale,
             label.annotator, label.created_at, label.updated_at, label.lead_time, label.shown_model_version,
             label.shown_department, label.shown_score, label.accepted, old["source"] if same_gold else label.source,
             seq, old["stored_at"] if same_gold else now()),
        )
        if old is None:
            return "created"
        return "unchanged" if same_gold else "updated"

    def _assign_split(self, db: sqlite3.Connection, key: str, department: str) -> None:
        """Freeze a text into train or eval the first time it is labelled, stratified by department: the n-th
        new text of a department goes to eval when round(n * f) steps up (the 3rd, 8th, 13th... for f = 0.2)."""
        if db.execute("SELECT 1 FROM splits WHERE text_key = ?", (key,)).fetchone():
            return
        n = db.execute("SELECT COUNT(*) FROM splits WHERE department = ?", (department,)).fetchone()[0] + 1
        f = self.eval_fraction
        split = "eval" if math.floor(n * f + 0.5) > math.floor((n - 1) * f + 0.5) else "train"
        db.execute("INSERT INTO splits(text_key, department, split, assigned_at) VALUES (?,?,?,?)", (key, department, split, now()))

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
        with self._tx() as db:
            return sum(db.execute("UPDATE labels SET annotator = ? WHERE annotator = ?", (name, annotator)).rowcount
                       for annotator, name in names.items())

    def discard_label(self, annotation_id: int) -> int:
        """A label that stopped being gold (cancelled/skipped) without being deleted: it may come back."""
        with self._tx() as db:
            return self._remove(db, annotation_id)

    def _remove(self, db: sqlite3.Connection, annotation_id: int) -> int:
        cur = db.execute("DELETE FROM labels WHERE annotation_id = ?", (annotation_id,))
        if cur.rowcount:
            self._next_seq(db)
        return cur.rowcount

    def reconcile_project(self, project_id: int, labels: list[Label], cancelled: set[int], pulled_since: str) -> dict:
        """Make the project's labels equal to a full pull from Label Studio, in one transaction.

        Labels stored after the pull began are kept even if the pull did not see them."""
        counts = {"created": 0, "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0, "removed": 0}
        seen = {label.annotation_id for label in labels}
        with self._tx() as db:
            for label in labels:
                counts[self._upsert(db, label)] += 1
            for annotation_id in cancelled:
                counts["removed"] += self._remove(db, annotation_id)
            for row in db.execute(
                "SELECT annotation_id FROM labels WHERE project_id = ? AND stored_at < ?", (project_id, pulled_since)
            ).fetchall():
                if row["annotation_id"] not in seen:
                    counts["removed"] += self._remove(db, row["annotation_id"])
        return counts

    def labels(self, split: str | None = None, project_id: int | None = None, since_seq: int | None = None) -> list[StoredLabel]:
        sql = ("SELECT l.*, COALESCE(s.split, 'train') AS split FROM labels l LEFT JOIN splits s ON s.text_key = l.text_key"
               " WHERE 1=1")
        params: list = []
        if split:
            sql += " AND COALESCE(s.split, 'train') = ?"
            params.append(split)
        if project_id is not None:
            sql += " AND l.project_id = ?"
            params.append(project_id)
        if since_seq is not None:
            sql += " AND l.seq > ?"
            params.append(since_seq)
        sql += " ORDER BY l.seq"
        return [_stored_label(row) for row in self._read(sql, params)]

    def get_label(self, annotation_id: int) -> StoredLabel | None:
        rows = self._read(
            "SELECT l.*, COALESCE(s.split, 'train') AS split FROM labels l LEFT JOIN splits s ON s.text_key = l.text_key"
            " WHERE l.annotation_id = ?", (annotation_id,))
        return _stored_label(rows[0]) if rows else None

    def count_labels(self, since_seq: int = 0) -> int:
        return self._read("SELECT COUNT(*) AS n FROM labels WHERE seq > ?", (since_seq,))[0]["n"]

    def label_stats(self) -> dict:
        row = self._read(
            "SELECT COUNT(*) AS labels, COUNT(DISTINCT l.department) AS departments,"
            " SUM(CASE WHEN s.split = 'eval' THEN 1 ELSE 0 END) AS eval,"
            " SUM(CASE WHEN l.accepted = 1 THEN 1 ELSE 0 END) AS accepted,"
            " SUM(CASE WHEN l.accepted = 0 THEN 1 ELSE 0 END) AS corrected"
            " FROM labels l LEFT JOIN splits s ON s.text_key = l.text_key")[0]
        return {k: row[k] or 0 for k in row.keys()}  # noqa: SIM118 (sqlite3.Row iterates values)

    def integrity_errors(self) -> list[str]:
        """Checks a restarted store must pass: SQLite's own check, one row per annotation, every label split."""
        errors = [r[0] for r in self._read("PRAGMA integrity_check") if r[0] != "ok"]
        orphans = self._read("SELECT COUNT(*) AS n FROM labels l LEFT JOIN splits s ON s.text_key = l.text_key WHERE s.text_key IS NULL")[0]["n"]
        if orphans:
            errors.append(f"{orphans} labels have no split")
        resurrected = self._read("SELECT COUNT(*) AS n FROM labels WHERE annotation_id IN (SELECT annotation_id FROM deleted_annotations)")[0]["n"]
        if resurrected:
            errors.append(f"{resurrected} deleted annotations are stored as labels")
        return errors

    # -- projects -------------------------------------------------------------------------------------------
    def remember_project(self, project_id: int, label_config: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO projects(project_id, label_config, updated_at) VALUES (?,?,?) ON CONFLICT(project_id) DO UPDATE"
                " SET label_config = COALESCE(excluded.label_config, projects.label_config), updated_at = excluded.updated_at",
                (project_id, label_config, now()))

    def projects(self) -> list[dict]:
        return [dict(r) for r in self._read("SELECT * FROM projects ORDER BY project_id")]

    def set_project_model_version(self, project_id: int, model_version: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE projects SET model_version = ?, updated_at = ? WHERE project_id = ?", (model_version, now(), project_id))

    # -- predictions ----------------------------------------------------------------------------------------
    def save_predictions(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO predictions(project_id, task_id, model_version, department, score, margin, entropy, top,"
                " truncated, created_at) VALUES (:project_id, :task_id, :model_version, :department, :score, :margin,"
                " :entropy, :top, :truncated, :created_at) ON CONFLICT(project_id, task_id, model_version) DO UPDATE SET"
                " department = excluded.department, score = excluded.score, margin = excluded.margin,"
                " entropy = excluded.entropy, top = excluded.top, truncated = excluded.truncated,"
                " created_at = excluded.created_at",
                [{**r, "top": json.dumps(r["top"], ensure_ascii=False), "created_at": now()} for r in rows],
            )

    def predictions(self, model_version: str | None = None, project_id: int | None = None) -> list[dict]:
        sql, params = "SELECT * FROM predictions WHERE 1=1", []
        if model_version:
            sql += " AND model_version = ?"
            params.append(model_version)
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        return [{**dict(r), "top": json.loads(r["top"])} for r in self._read(sql + " ORDER BY task_id", params)]

    def prediction_versions(self) -> list[str]:
        return [r["model_version"] for r in self._read(
            "SELECT model_version, MIN(created_at) AS first FROM predictions GROUP BY model_version ORDER BY first")]

    # -- model versions -------------------------------------------------------------------------------------
    def add_version(self, name: str, kind: str, status: str, parent: str | None = None, path: str | None = None,
                    data: dict | None = None, metrics: dict | None = None, note: str | None = None) -> Version:
        if not VERSION_NAME.fullmatch(name):
            raise ValueError(f"invalid version name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
        with self._tx() as db:
            db.execute(
                "INSERT INTO versions(name, kind, parent, status, path, data, metrics, created_at, note) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET status = excluded.status, path = excluded.path, data = excluded.data,"
                " metrics = excluded.metrics, note = excluded.note",
                (name, kind, parent, status, path, json.dumps(data or {}), json.dumps(metrics or {}), now(), note))
        return self.get_version(name)

    def update_version(self, name: str, **changes) -> None:
        allowed = {"status", "metrics", "note", "path", "data"}
        if not changes or not set(changes) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        values = {k: json.dumps(v) if k in {"metrics", "data"} else v for k, v in changes.items()}
        with self._tx() as db:
            db.execute(f"UPDATE versions SET {', '.join(f'{k} = ?' for k in values)} WHERE name = ?", (*values.values(), name))

    def promote_version(self, name: str) -> None:
        """Make `name` the serving version of its kind; the previous one is retired, never deleted."""
        with self._tx() as db:
            row = db.execute("SELECT kind FROM versions WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            db.execute("UPDATE versions SET status = 'retired' WHERE kind = ? AND status = 'serving' AND name != ?", (row["kind"], name))
            db.execute("UPDATE versions SET status = 'serving', promoted_at = ? WHERE name = ?", (now(), name))

    def get_version(self, name: str) -> Version | None:
        rows = self._read("SELECT * FROM versions WHERE name = ?", (name,))
        return _version(rows[0]) if rows else None

    def serving_version(self, kind: str) -> Version | None:
        rows = self._read("SELECT * FROM versions WHERE kind = ? AND status = 'serving' ORDER BY promoted_at DESC LIMIT 1", (kind,))
        return _version(rows[0]) if rows else None

    def versions(self, kind: str | None = None) -> list[Version]:
        if kind:
            rows = self._read("SELECT * FROM versions WHERE kind = ? ORDER BY created_at, name", (kind,))
        else:
            rows = self._read("SELECT * FROM versions ORDER BY created_at, name")
        return [_version(r) for r in rows]

    # -- jobs -----------------------------------------------------------------------------------------------
    def request_job(self, kind: str, reason: str, project_id: int | None = None, per_project: bool = False) -> tuple[Job, bool]:
        """Queue a job unless an unfinished one of the same kind (and project, if `per_project`) exists: requests
        coalesce. Returns (job, created)."""
        with self._tx() as db:
            sql = f"SELECT * FROM jobs WHERE kind = ? AND status IN ({','.join('?' * len(UNFINISHED))})"
            params = [kind, *UNFINISHED]
            if per_project:
                sql += " AND project_id IS ?"
                params.append(project_id)
            row = db.execute(sql + " ORDER BY id LIMIT 1", params).fetchone()
            if row is not None:
                return _job(row), False
            cur = db.execute(
                "INSERT INTO jobs(kind, status, reason, project_id, label_seq, requested_at) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, JobStatus.QUEUED, reason, project_id, _current_seq(db), now()))
            job_id = cur.lastrowid
        return self.get_job(job_id), True

    def update_job(self, job_id: int, **changes) -> None:
        allowed = {"status", "started_at", "finished_at", "pid", "progress", "version", "error", "label_seq"}
        if not changes or not set(changes) <= allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        values = {k: json.dumps(v) if k == "progress" else v for k, v in changes.items()}
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?", (*values.values(), job_id))

    def get_job(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, kind: str | None = None, status: Iterable[str] | None = None, limit: int = 100) -> list[Job]:
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if status:
            status = list(status)
            sql += f" AND status IN ({','.join('?' * len(status))})"
            params.extend(status)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_job(r) for r in self._read(sql, params)]

    def last_job_label_seq(self, kind: str) -> int:
        """Labels up to this sequence number were (or are being) trained on; failed jobs do not count."""
        rows = self._read("SELECT MAX(label_seq) AS s FROM jobs WHERE kind = ? AND status != ?", (kind, JobStatus.FAILED))
        return rows[0]["s"] or 0


def _put_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _current_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'label_seq'").fetchone()
    return int(row["value"]) if row else 0


def _stored_label(row: sqlite3.Row) -> StoredLabel:
    d = dict(row)
    d.pop("accepted")  # derived from shown_department and department; kept as a column for queries
    return StoredLabel(**d)


def _version(row: sqlite3.Row) -> Version:
    d = dict(row)
    d["data"] = json.loads(d["data"] or "{}")
    d["metrics"] = json.loads(d["metrics"] or "{}")
    return Version(**d)


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["progress"] = json.loads(d["progress"] or "{}")
    return Job(**d)
