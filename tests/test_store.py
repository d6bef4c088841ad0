"""The gold-label store: durable, idempotent, order-tolerant, with a frozen stratified evaluation split — the same
tests on SQLite and on PostgreSQL (`store_location`), and the races several replicas and workers create."""
from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

from core.jobs import JobStatus
from core.store import HISTORY, Label, Store, now, text_key
from learning.instant_model import newest_per_department


def label(annotation_id: int, department: str = "市公安局", text: str | None = None, updated_at: str = "2026-01-01T00:00:00Z",
          project_id: int = 1) -> Label:
    return Label(annotation_id=annotation_id, project_id=project_id, task_id=annotation_id, text=text or f"工单 {annotation_id}",
                 department=department, updated_at=updated_at)


def test_labels_survive_a_restart(store_location):
    store = Store(store_location)
    store.upsert_label(label(1))
    store.upsert_label(label(2, "市教育局"))
    store.close()
    reopened = Store(store_location)
    assert [(l.annotation_id, l.department) for l in reopened.labels()] == [(1, "市公安局"), (2, "市教育局")]
    assert reopened.integrity_errors() == []


def test_evaluation_split_is_stratified_and_frozen(store_location):
    store = Store(store_location, eval_fraction=0.2)
    departments = ["市公安局", "市教育局", "市水务局"]
    for i in range(60):
        store.upsert_label(label(i + 1, departments[i % 3]))
    eval_counts = Counter(l.department for l in store.labels(split="eval"))
    assert eval_counts == {d: 4 for d in departments}  # 20 per department -> 4 held out each
    frozen = {l.annotation_id for l in store.labels(split="eval")}
    for i in range(60):  # relabelling never moves a text between splits
        store.upsert_label(label(i + 1, "市公安局", updated_at="2026-02-01T00:00:00Z"))
    assert {l.annotation_id for l in store.labels(split="eval")} == frozen


def test_identical_texts_share_one_split(store_location):
    store = Store(store_location, eval_fraction=0.5)
    for i in range(10):
        store.upsert_label(label(i + 1, text=f"同一张工单 {i // 2}"))  # pairs of identical tickets
        store.upsert_label(label(100 + i, text=f"同一张工单  {i // 2}"))  # whitespace does not make a new ticket
    by_text = {}
    for l in store.labels():
        by_text.setdefault(l.text_key, set()).add(l.split)
    assert all(len(splits) == 1 for splits in by_text.values())
    assert text_key("a b") == text_key("ab")


def test_sequence_counts_only_changes_of_gold(store_location):
    store = Store(store_location)
    store.upsert_label(label(1))
    seq = store.label_seq()
    assert store.upsert_label(label(1)) == "unchanged"
    assert store.label_seq() == seq
    store.upsert_label(label(1, "市教育局", updated_at="2026-03-01T00:00:00Z"))
    assert store.label_seq() == seq + 1
    assert store.count_labels(since_seq=seq) == 1
    assert store.count_labels(since_seq=0, until_seq=seq) == 0  # label 1 changed after seq: counted once, at its new seq
    store.upsert_label(label(2))
    assert store.count_labels(since_seq=seq, until_seq=seq + 1) == 1 and store.count_labels(since_seq=seq) == 2


def test_reconcile_adds_missing_removes_vanished_and_keeps_newer(store_location):
    store = Store(store_location)
    store.upsert_label(label(1))
    store.upsert_label(label(2))
    pulled_since = "2000-01-01T00:00:00Z"  # everything local is older than the pull... except what we add below
    counts = store.reconcile_project(1, [label(1), label(3, "市水务局")], cancelled=set(), pulled_since="9999")
    assert counts["created"] == 1 and counts["unchanged"] == 1 and counts["removed"] == 1
    assert [l.annotation_id for l in store.labels()] == [1, 3]
    store.upsert_label(label(4))
    store.reconcile_project(1, [label(1), label(3, "市水务局")], cancelled=set(), pulled_since=pulled_since)
    assert [l.annotation_id for l in store.labels()] == [1, 3, 4]


def test_reconcile_keeps_imported_past_tickets(store_location):
    """Past tickets (issue 16) have no Label Studio task: a pull that does not list them must not remove them."""
    store = Store(store_location)
    store.upsert_labels([replace(label(-5), source=HISTORY), replace(label(-6, "市教育局"), source=HISTORY)])
    store.upsert_label(label(1))
    counts = store.reconcile_project(1, [], cancelled=set(), pulled_since="9999")
    assert counts["removed"] == 1
    assert [(l.annotation_id, l.source) for l in store.labels()] == [(-5, HISTORY), (-6, HISTORY)]
    assert store.stored_ids([-6, -5, 1, 7]) == {-5, -6}
    assert store.integrity_errors() == []


def test_reconcile_of_one_project_leaves_other_projects_alone(store_location):
    store = Store(store_location)
    store.upsert_label(label(1, project_id=1))
    store.upsert_label(label(2, project_id=2))
    store.reconcile_project(1, [], cancelled=set(), pulled_since="9999")
    assert [l.annotation_id for l in store.labels()] == [2]


def test_jobs_coalesce_per_project_while_one_is_active(store_location):
    store = Store(store_location)
    job, created = store.request_job("train", "threshold", project_id=1)
    again, created_again = store.request_job("train", "START_TRAINING", project_id=1)
    assert created and not created_again and again.id == job.id
    store.update_job(job.id, status=JobStatus.EVALUATING)  # trained, the gate still running: not finished yet
    assert not store.request_job("train", "threshold", project_id=1)[1]
    other, created_other = store.request_job("train", "threshold", project_id=2)
    assert created_other and other.id != job.id
    store.update_job(job.id, status=JobStatus.PROMOTED, finished_at=now())
    assert store.request_job("train", "threshold", project_id=1)[1]


def test_the_next_job_is_the_project_that_waited_longest(store_location):
    store = Store(store_location)
    busy = [store.request_job("train", "x", project_id=1)[0]]
    store.update_job(busy[0].id, status=JobStatus.RUNNING, started_at="2026-01-01T10:00:00Z")
    store.update_job(busy[0].id, status=JobStatus.PROMOTED, finished_at=now())
    again, _ = store.request_job("train", "x", project_id=1)  # queued first
    quiet, _ = store.request_job("train", "x", project_id=2)  # queued later, but project 2 never ran
    assert store.next_queued_job("train").id == quiet.id
    store.update_job(quiet.id, status=JobStatus.RUNNING, started_at="2026-01-01T11:00:00Z")
    assert store.next_queued_job("train").id == again.id


def test_each_project_has_its_own_split_version_line_and_counters(store_location):
    store = Store(store_location, eval_fraction=0.5)
    for i in range(1, 9):
        store.upsert_label(label(i, text="同一张工单" if i < 5 else f"工单 {i}", project_id=1 + (i % 2)))
    assert all(len({l.split for l in store.labels(p) if l.text == "同一张工单"}) == 1 for p in (1, 2))
    store.add_version(1, "instant-1", "instant", status="candidate")
    store.add_version(2, "instant-1", "instant", status="candidate")  # the same name in another project's line
    store.promote_version(1, "instant-1")
    assert store.serving_version(1, "instant").name == "instant-1" and store.serving_version(2, "instant") is None
    assert store.label_stats(1)["labels"] == 4 and store.label_stats(2)["labels"] == 4 and store.label_stats()["labels"] == 8
    store.delete_labels([1, 3])
    assert store.label_stats(2)["labels"] == 2 and store.integrity_errors() == []
    assert store.project_seq(2) == store.label_seq() and store.project_seq(1) < store.label_seq()


def test_the_evaluation_split_stops_growing_at_its_cap(store_location):
    store = Store(store_location, eval_fraction=0.2, eval_max_per_department=3)
    for i in range(1, 101):
        store.upsert_label(label(i))
    assert len(store.labels(split="eval")) == 3
    assert store.label_stats()["eval"] == 3 and store.integrity_errors() == []


def test_a_store_from_before_projects_is_migrated_and_keeps_every_label(tmp_path):
    path = tmp_path / "s.sqlite3"
    old = sqlite3.connect(path)
    old.executescript((Path(__file__).parent / "fixtures" / "store_v1.sql").read_text(encoding="utf-8"))
    old.close()
    store = Store(path)
    assert [(l.annotation_id, l.project_id) for l in store.labels()] == [(1, 3), (2, 3), (3, 3), (4, 5), (5, 3)]
    first, copy = store.get_label(1), store.get_label(5)  # the same text twice: one split
    assert first.text_key == copy.text_key and first.split == copy.split
    assert store.integrity_errors() == []
    assert store.label_stats(3) == {"labels": 4, "eval": sum(l.split == "eval" for l in store.labels(3)), "accepted": 3, "corrected": 1}
    # the one version line and its jobs went to project 3, the project whose config was served
    assert store.serving_version(3, "llm").name == "lora-1" and store.serving_version(3, "instant").name == "instant-1"
    assert store.versions(5) == [] and store.get_job(1).project_id == 3
    assert store.project(3).departments == ("市公安局", "市教育局") and store.project(3).model_version == "instant-1"
    assert store.upsert_label(label(9, project_id=3)) == "deleted"  # tombstones survive
    Store(path)  # opening a migrated store again changes nothing
    assert len(store.labels()) == 5


def test_two_replicas_taking_the_same_webhooks_store_each_label_once(store_location):
    replicas = [Store(store_location), Store(store_location)]  # two processes' connections to one store
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def deliver(replica: Store, first: int):
        barrier.wait()
        for i in range(first, first + 25):
            outcomes.append(replica.upsert_label(label(i, "市公安局" if i % 3 else "市教育局")))

    threads = [threading.Thread(target=deliver, args=(replicas[n % 2], 1 + (n % 4) * 25)) for n in range(8)]  # each label twice
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes).count("created") == 100 and sorted(outcomes).count("unchanged") == 100
    assert len(replicas[0].labels()) == 100 and replicas[1].label_stats()["labels"] == 100
    assert replicas[0].integrity_errors() == [] and replicas[0].label_seq() == 100


def test_two_workers_never_claim_the_same_round_and_a_lost_one_is_redone_once(store_location):
    store = Store(store_location)
    for project in (1, 2, 3):
        store.request_job("train", "x", project_id=project)
    workers = [Store(store_location) for _ in range(4)]
    claimed: list[int] = []
    barrier = threading.Barrier(4)

    def work(worker: Store, n: int):
        barrier.wait()
        while (job := worker.claim_job(None, "train", f"worker-{n}")) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(w, n)) for n, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == [1, 2, 3]  # each exactly once

    store.add_version(1, "lora-1", "llm", status="candidate")
    lost = store.fail_lost_jobs("train", silent_since="9999")  # every claimed job stopped beating
    assert sorted(j.id for j in lost) == [1, 2, 3] and len(store.jobs(kind="train", status=["queued"])) == 3
    owner = store.get_job(1).claimed_by
    assert not store.heartbeat(1, owner)
    assert not store.promote_for_job(1, owner, 1, "lora-1")  # the lost worker comes back: it cannot promote
    assert store.serving_version(1, "llm") is None
    again = store.claim_job(None, "train", "worker-9")
    assert store.promote_for_job(again.id, "worker-9", again.project_id, "lora-1") or again.project_id != 1


def test_the_store_picks_the_same_capped_sample_without_reading_every_label(store_location):
    """The refit process asks the store for its sample, so a refit at 10^6 labels does not load 10^6 of them."""
    store = Store(store_location)
    for i in range(1, 301):
        store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=f"第{i}号工单：路灯不亮",
                                 department=("甲", "乙", "丙")[min(i % 10, 2)]))
    store.upsert_label(Label(annotation_id=999, project_id=1, task_id=999, text="旧标签", department="已撤销的部门"))
    sample, total = store.training_sample(1, ["甲", "乙", "丙"], 40)
    train, held_out = [l for l in sample if l.split == "train"], [l for l in sample if l.split == "eval"]
    assert total == 300 and held_out
    known = [l for l in store.labels(1, split="train") if l.department != "已撤销的部门"]
    assert {l.seq for l in train} == {l.seq for l in newest_per_department(known, 40)}
    assert [l.seq for l in held_out] == [l.seq for l in store.labels(1, split="eval") if l.department != "已撤销的部门"]
    everything = sorted(store.training_sample(1, ["甲", "乙", "丙"], None)[0], key=lambda l: l.seq)
    assert everything == [l for l in store.labels(1) if l.department != "已撤销的部门"]
