"""The gold-label store: durable, idempotent, order-tolerant, with a frozen stratified evaluation split."""
from __future__ import annotations

from collections import Counter

from core.jobs import JobStatus
from core.store import Label, Store, now, text_key


def label(annotation_id: int, department: str = "市公安局", text: str | None = None, updated_at: str = "2026-01-01T00:00:00Z",
          project_id: int = 1) -> Label:
    return Label(annotation_id=annotation_id, project_id=project_id, task_id=annotation_id, text=text or f"工单 {annotation_id}",
                 department=department, updated_at=updated_at)


def test_labels_survive_a_restart(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(label(1))
    store.upsert_label(label(2, "市教育局"))
    store.close()
    reopened = Store(tmp_path / "s.sqlite3")
    assert [(l.annotation_id, l.department) for l in reopened.labels()] == [(1, "市公安局"), (2, "市教育局")]
    assert reopened.integrity_errors() == []


def test_evaluation_split_is_stratified_and_frozen(tmp_path):
    store = Store(tmp_path / "s.sqlite3", eval_fraction=0.2)
    departments = ["市公安局", "市教育局", "市水务局"]
    for i in range(60):
        store.upsert_label(label(i + 1, departments[i % 3]))
    eval_counts = Counter(l.department for l in store.labels(split="eval"))
    assert eval_counts == {d: 4 for d in departments}  # 20 per department -> 4 held out each
    frozen = {l.annotation_id for l in store.labels(split="eval")}
    for i in range(60):  # relabelling never moves a text between splits
        store.upsert_label(label(i + 1, "市公安局", updated_at="2026-02-01T00:00:00Z"))
    assert {l.annotation_id for l in store.labels(split="eval")} == frozen


def test_identical_texts_share_one_split(tmp_path):
    store = Store(tmp_path / "s.sqlite3", eval_fraction=0.5)
    for i in range(10):
        store.upsert_label(label(i + 1, text=f"同一张工单 {i // 2}"))  # pairs of identical tickets
        store.upsert_label(label(100 + i, text=f"同一张工单  {i // 2}"))  # whitespace does not make a new ticket
    by_text = {}
    for l in store.labels():
        by_text.setdefault(l.text_key, set()).add(l.split)
    assert all(len(splits) == 1 for splits in by_text.values())
    assert text_key("a b") == text_key("ab")


def test_sequence_counts_only_changes_of_gold(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(label(1))
    seq = store.label_seq()
    assert store.upsert_label(label(1)) == "unchanged"
    assert store.label_seq() == seq
    store.upsert_label(label(1, "市教育局", updated_at="2026-03-01T00:00:00Z"))
    assert store.label_seq() == seq + 1
    assert store.count_labels(since_seq=seq) == 1


def test_reconcile_adds_missing_removes_vanished_and_keeps_newer(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(label(1))
    store.upsert_label(label(2))
    pulled_since = "2000-01-01T00:00:00Z"  # everything local is older than the pull... except what we add below
    counts = store.reconcile_project(1, [label(1), label(3, "市水务局")], cancelled=set(), pulled_since="9999")
    assert counts["created"] == 1 and counts["unchanged"] == 1 and counts["removed"] == 1
    assert [l.annotation_id for l in store.labels()] == [1, 3]
    store.upsert_label(label(4))
    store.reconcile_project(1, [label(1), label(3, "市水务局")], cancelled=set(), pulled_since=pulled_since)
    assert [l.annotation_id for l in store.labels()] == [1, 3, 4]


def test_reconcile_of_one_project_leaves_other_projects_alone(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(label(1, project_id=1))
    store.upsert_label(label(2, project_id=2))
    store.reconcile_project(1, [], cancelled=set(), pulled_since="9999")
    assert [l.annotation_id for l in store.labels()] == [2]


def test_jobs_coalesce_while_one_is_active(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    job, created = store.request_job("train", "threshold")
    again, created_again = store.request_job("train", "START_TRAINING")
    assert created and not created_again and again.id == job.id
    store.update_job(job.id, status=JobStatus.EVALUATING)  # trained, the gate still running: not finished yet
    assert not store.request_job("train", "threshold")[1]
    store.update_job(job.id, status=JobStatus.PROMOTED, finished_at=now())
    _, created_after = store.request_job("train", "threshold")
    assert created_after
    first, _ = store.request_job("preannotate", "promoted", project_id=1, per_project=True)
    other, created_other = store.request_job("preannotate", "promoted", project_id=2, per_project=True)
    assert created_other and other.id != first.id
