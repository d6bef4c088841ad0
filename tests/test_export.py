"""Exporting gold labels: what dataset builders get (rows, formats, split, de-duplication, filters) and the CLI."""
from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from datasets import load_from_disk

from core.store import Label, Store
from tests.helpers import LABEL_CONFIG, choice
from tools.export import compare_with_label_studio, export_gold, main, select_labels

PLACES = ("幸福里小区", "城南花园", "滨江一号", "翠湖苑", "金桥新村", "阳光水岸", "锦绣家园", "东湖名邸", "梧桐苑", "长安里")
ISSUES = {
    "市自来水公司": "家中自来水发黄浑浊，还有一股铁锈味，已经持续三天",
    "市交通警察支队": "门口路口的红绿灯坏了好几天，早晚高峰车辆拥堵严重",
    "市教育局": "孩子今年上小学，按学区划分却被分到三公里外的学校",
}


def ticket(place: str, department: str) -> str:
    return f"来电人反映，{place}{ISSUES[department]}，要求相关部门尽快处理。"


def gold(annotation_id: int, text: str, department: str, *, project_id: int = 1, annotator: str = "7",
         created_at: str | None = "2026-03-01T09:00:00.000000Z", updated_at: str | None = None, **extra) -> Label:
    return Label(annotation_id=annotation_id, project_id=project_id, task_id=annotation_id, text=text, department=department,
                 annotator=annotator, created_at=created_at, updated_at=updated_at or created_at, **extra)


@pytest.fixture
def store(tmp_path) -> Store:
    """Ten tickets for each of three departments; every third was shown a prediction, which was right or wrong."""
    store = Store(tmp_path / "s.sqlite3")
    annotation_id = 0
    for department in ISSUES:
        for i, place in enumerate(PLACES):
            annotation_id += 1
            shown = {} if i % 3 else {"shown_model_version": "instant-3", "shown_score": 0.8,
                                      "shown_department": department if i % 2 else "市公安局"}
            store.upsert_label(gold(annotation_id, ticket(place, department), department,
                                    rationale="来电反映供水水质问题" if department == "市自来水公司" else None, **shown))
    return store


def test_export_round_trips_through_every_format(store, tmp_path):
    out = tmp_path / "out"
    report = export_gold(select_labels(store), out)

    stored = {l.annotation_id: l for l in store.labels()}
    hf = load_from_disk(str(out / "hf"))
    rows = [row for split in ("train", "test") for row in hf[split]]
    assert sorted(r["annotation_id"] for r in rows) == sorted(stored)
    for row in rows:
        label = stored[row["annotation_id"]]
        assert (row["Question"], row["Response"], row["Complex_CoT"]) == (label.text, label.department, label.rationale or "")
        assert row["accepted"] == {1: "accepted", 0: "corrected", None: ""}[label.accepted]
    assert Counter(r["accepted"] for r in rows) == {"": 18, "accepted": 6, "corrected": 6}

    for split in ("train", "test"):
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert all(set(r) == {"Question", "Complex_CoT", "Response"} for r in records)
        assert [(r["Question"], r["Response"]) for r in records] == [(r["Question"], r["Response"]) for r in hf[split]]
        assert "来电人反映" in lines[0]  # Chinese stays readable, not \\u escapes
        parquet = pd.read_parquet(out / f"{split}.parquet")
        assert parquet["annotation_id"].tolist() == hf[split]["annotation_id"]
        raw = (out / f"{split}.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs
        with (out / f"{split}.csv").open(encoding="utf-8-sig", newline="") as f:
            table = list(csv.DictReader(f))
        assert [r["Question"] for r in table] == hf[split]["Question"]
        assert {r["split"] for r in table} == {split}
    assert report["exported"] == 30 and report["duplicates_removed"] == 0
    assert set(report["files"]) == {"train.jsonl", "test.jsonl", "hf", "train.parquet", "test.parquet", "train.csv", "test.csv"}


def test_split_is_stratified_and_reproducible(store, tmp_path):
    store.upsert_label(gold(100, "来电人咨询，新生儿户口可以落在父母哪一方，到哪里办理。", "市公安局"))
    store.upsert_label(gold(101, "投诉：幸福里小区夜间有人在广场燃放烟花，噪音扰民。", "市城市管理综合执法局"))
    store.upsert_label(gold(102, "投诉：城南花园工地夜间施工到凌晨，噪音扰民。", "市城市管理综合执法局"))

    def test_ids(seed: int) -> set[int]:
        out = tmp_path / f"seed-{seed}"
        report = export_gold(select_labels(store), out, formats=["jsonl", "hf"], test_fraction=0.2, seed=seed)
        assert report["departments"]["市公安局"] == {"train": 1, "test": 0}  # a single row cannot be tested on
        assert report["departments"]["市城市管理综合执法局"] == {"train": 1, "test": 1}  # two rows: one each
        for department in ISSUES:
            assert report["departments"][department] == {"train": 8, "test": 2}
        return set(load_from_disk(str(out / "hf"))["test"]["annotation_id"])

    assert test_ids(1) == test_ids(1)
    assert test_ids(1) != test_ids(2)


def test_whitespace_variants_collapse_and_the_latest_label_wins(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(gold(1, "来电人反映，幸福里小区停水两天，没有任何通知。", "市水务局", updated_at="2026-03-01T09:00:00Z"))
    store.upsert_label(gold(2, "来电人反映， 幸福里小区 停水两天，没有任何通知。", "市自来水公司", updated_at="2026-03-05T09:00:00Z"))
    store.upsert_label(gold(3, "来电人反映，幸福里小区停水两天，没有任何通知。\n", "市自来水公司",
                            updated_at="2026-03-05T16:00:00+08:00"))  # 08:00 UTC: older than annotation 2
    store.upsert_label(gold(4, "投诉：城南花园门口违章停车严重，占用非机动车道。", "市交通警察支队"))
    store.upsert_label(gold(5, "投诉：城南花园门口违章停车严重，占用非机动车道。 ", "市交通警察支队"))

    report = export_gold(select_labels(store), tmp_path / "out", formats=["jsonl"])

    records = [json.loads(line) for split in ("train", "test")
               for line in (tmp_path / "out" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2
    water = next(r for r in records if "停水" in r["Question"])
    assert water["Response"] == "市自来水公司" and water["Question"].startswith("来电人反映， 幸福里小区")  # annotation 2
    assert report["duplicates_removed"] == 3
    assert len(report["conflicts"]) == 1  # the agreeing traffic copies are no conflict
    conflict = report["conflicts"][0]
    assert conflict["kept"]["annotation_id"] == 2
    assert sorted(d["annotation_id"] for d in conflict["dropped"]) == [1, 3]

    kept_all = export_gold(select_labels(store), tmp_path / "all", formats=["jsonl"], dedupe=False)
    assert kept_all["exported"] == 5 and kept_all["duplicates_removed"] == 0


def test_a_label_corrected_while_the_export_runs_is_left_out_and_counted(store, tmp_path):
    """The export reads the store twice (plan, then write) so that it never holds every label; an annotator's
    correction in between must not slip into the split that was planned without it."""
    selection = select_labels(store)

    class CorrectedBetweenPasses:
        passes = 0

        def __iter__(self):
            self.passes += 1
            if self.passes == 2:
                label = store.get_label(1)
                store.upsert_label(gold(1, label.text, "市住房和城乡建设管理委员会", updated_at="2026-03-02T09:00:00Z"))
            return iter(selection)

    report = export_gold(CorrectedBetweenPasses(), tmp_path / "out", formats=["jsonl", "csv"])

    assert report["labels"] == 30 and report["exported"] == 29 and report["changed_during_export"] == 1
    rows = [row for split in ("train", "test") for row in csv.DictReader(
        (tmp_path / "out" / f"{split}.csv").open(encoding="utf-8-sig", newline=""))]
    assert len(rows) == 29 and "1" not in {row["annotation_id"] for row in rows}
    assert "市住房和城乡建设管理委员会" not in {row["Response"] for row in rows}


def test_filters_by_project_date_range_and_annotator(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(gold(1, ticket("翠湖苑", "市教育局"), "市教育局", created_at="2025-01-15T10:00:00Z"))
    store.upsert_label(gold(2, ticket("梧桐苑", "市教育局"), "市教育局", created_at="2025-02-28T23:30:00Z", annotator="9"))
    store.upsert_label(gold(3, ticket("长安里", "市教育局"), "市教育局", created_at="2025-03-01T00:00:00Z", project_id=2))
    store.upsert_label(gold(4, ticket("金桥新村", "市教育局"), "市教育局", created_at=None))  # falls back to stored_at

    def ids(**filters) -> list[int]:
        return [l.annotation_id for l in select_labels(store, **filters)]

    assert ids(project=2) == [3]
    assert ids(since="2025-02-01", until="2025-02-28") == [2]  # a bare until date includes its whole day
    assert ids(since="2025-01-15T10:00:00+00:00", until="2025-03-01T00:00:00Z") == [1, 2]
    assert ids(since="2025-03-01T08:00:00+08:00") == [3, 4]  # midnight UTC: zones are respected
    assert ids(since=(datetime.now(UTC) - timedelta(days=1)).date().isoformat()) == [4]
    assert ids(annotators={"9"}) == [2]
    assert ids(annotators={"7"}, project=1) == [1, 4]
    with pytest.raises(ValueError, match="ISO date"):
        select_labels(store, since="last week")


def test_cli_exports_the_store_under_model_dir(store, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    cli_store = Store(model_dir / "store.sqlite3")
    for label in store.labels():
        cli_store.upsert_label(label)
    cli_store.upsert_label(gold(99, ticket("翠湖苑", "市教育局"), "市教育局", project_id=2))
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    out = tmp_path / "export"

    assert main(["--out", str(out), "--format", "jsonl", "--format", "csv", "--project", "1", "--seed", "5"]) == 0

    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "test.csv", "test.jsonl", "train.csv", "train.jsonl"]
    report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    assert report["exported"] == 30 and report["splits"] == {"train": 24, "test": 6} and report["seed"] == 5
    assert report["filters"]["project"] == 1
    assert "exported 30 of 30 labels: 24 train, 6 test, 3 departments" in capsys.readouterr().out


def test_cli_says_why_nothing_was_exported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model"))
    out = tmp_path / "export"

    assert main(["--out", str(out)]) == 2
    assert "no label store" in capsys.readouterr().err

    store = Store(tmp_path / "model" / "store.sqlite3")
    assert main(["--out", str(out)]) == 2
    assert "no gold labels yet" in capsys.readouterr().err

    store.upsert_label(gold(1, ticket("翠湖苑", "市教育局"), "市教育局"))
    assert main(["--out", str(out), "--annotator", "nobody"]) == 2
    assert "none of the 1 gold labels match --annotator nobody" in capsys.readouterr().err
    assert main(["--out", str(out), "--since", "yesterday"]) == 2
    assert "ISO date" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(out), "--format", "xlsx"])
    assert exit_.value.code == 2


class FakeLabelStudio:
    """Answers the two reads compare_with_label_studio makes, in LabelStudioClient's shapes."""

    def __init__(self, tasks: list[dict]):
        self._tasks = tasks

    def project(self, project_id: int) -> dict:
        return {"id": project_id, "title": "12345", "label_config": LABEL_CONFIG, "model_version": ""}

    def annotated_tasks(self, project_id: int) -> list[dict]:
        return self._tasks


def ls_task(annotation_id: int, text: str, department: str, cancelled: bool = False) -> dict:
    return {"id": annotation_id, "data": {"text": text}, "annotations": [{
        "id": annotation_id, "completed_by": 7, "result": [] if cancelled else [choice(department)],
        "was_cancelled": cancelled, "lead_time": 9.0, "created_at": "2026-03-01T09:00:00.000000Z",
        "updated_at": "2026-03-01T09:00:00.000000Z", "prediction": {}}]}


def test_compare_reports_differences_without_changing_the_store(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    texts = {i: ticket(place, "市教育局") for i, place in enumerate(PLACES[:6], start=1)}
    for i in (1, 2, 3, 5, 6):
        store.upsert_label(gold(i, texts[i], "市公安局" if i == 2 else "市教育局"))
    store.upsert_label(gold(7, texts[1], "市教育局", project_id=2))  # another project is not compared
    before = (store.labels(), store.label_seq())
    client = FakeLabelStudio([
        ls_task(1, texts[1], "市教育局"),
        ls_task(2, texts[2], "市教育局"),
        ls_task(4, texts[4], "市教育局"),
        ls_task(5, texts[5], "市教育局", cancelled=True),
        ls_task(6, "来电人反映，翠湖苑孩子入学被分到很远的学校（工单已修改）", "市教育局"),
    ])

    diff = compare_with_label_studio(store, client, project_id=1)

    assert diff["only_in_label_studio"] == [4]
    assert diff["only_in_store"] == [3, 5]  # 5 was skipped in Label Studio: it is no longer gold
    assert diff["different"] == [
        {"annotation_id": 2, "department": {"store": "市公安局", "label_studio": "市教育局"}},
        {"annotation_id": 6, "text": {"store": texts[6], "label_studio": "来电人反映，翠湖苑孩子入学被分到很远的学校（工单已修改）"}},
    ]
    assert diff["skipped_in_label_studio"] == 1
    assert (store.labels(), store.label_seq()) == before
