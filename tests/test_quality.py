"""The label-quality report finds mislabelled tickets, confused departments and annotator disagreement."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest

from core.store import Label, Store
from tools.quality import labels_from_rows, main, quality_report, write_report

DEPARTMENTS = ("市自来水公司", "市交通警察支队", "市教育局")
PLACES = ("幸福里小区", "城南花园", "滨江一号", "翠湖苑", "金桥新村", "阳光水岸", "锦绣家园", "东湖名邸", "梧桐苑",
          "长安里", "和平新村", "紫金城", "蓝湾小区", "枫林苑", "丽景湾")
ISSUES = {
    "市自来水公司": ("家里自来水停水已经两天，没有收到任何停水通知", "水龙头流出的自来水发黄浑浊，有铁锈味",
                 "自来水水压太低，高层住户基本用不上水", "门口供水管道爆管，大量自来水外流", "本月水费是平时的三倍，怀疑水表故障"),
    "市交通警察支队": ("路口红绿灯坏了好几天，早晚高峰交通拥堵", "道路两侧长期有车辆违章停放，占用非机动车道",
                "晚上经常有人驾驶改装车飙车炸街", "路口信号灯配时不合理，左转绿灯只有几秒", "电动自行车上牌点排长队，问能否网上预约上牌"),
    "市教育局": ("孩子今年上小学，按学区划分却被分到很远的学校", "学校要求家长统一购买教辅资料，每学期收费三百元",
             "幼儿园老师体罚孩子，孩子身上有淤青", "附近校外培训机构周末违规开展学科类培训", "咨询今年中考招生政策和随迁子女报名条件"),
}


def ticket(department: str, i: int) -> str:
    return f"来电人反映，{PLACES[i]}{ISSUES[department][i % 5]}，要求尽快处理。"


def gold(annotation_id: int, text: str, department: str, *, task_id: int | None = None, annotator: str = "7") -> Label:
    return Label(annotation_id=annotation_id, project_id=1, task_id=task_id or annotation_id, text=text,
                 department=department, annotator=annotator, updated_at="2026-03-01T09:00:00Z")


def learnable_store(path: Path, flips: dict[int, str]) -> Store:
    """15 tickets for each department with distinct keywords; the annotation ids in `flips` get a wrong department."""
    store = Store(path)
    for d, department in enumerate(DEPARTMENTS):
        for i in range(15):
            annotation_id = d * 100 + i + 1
            store.upsert_label(gold(annotation_id, ticket(department, i), flips.get(annotation_id, department)))
    return store


def test_a_flipped_label_is_among_the_top_suspected_errors(tmp_path):
    store = learnable_store(tmp_path / "s.sqlite3", flips={8: "市教育局"})  # a water complaint labelled as education

    report = quality_report(store.labels(), DEPARTMENTS)

    suspected = report["suspected_errors"]
    top = suspected[:3]
    assert 8 in [e["annotation_id"] for e in top]
    doubts = [e["doubt"] for e in suspected]
    assert doubts == sorted(doubts, reverse=True)  # the most doubted first
    flipped = next(e for e in top if e["annotation_id"] == 8)
    assert (flipped["gold"], flipped["predicted"]) == ("市教育局", "市自来水公司")
    assert flipped["p_predicted"] > flipped["p_gold"]
    assert flipped["text"].startswith("来电人反映，东湖名邸")
    assert report["summary"]["folds"] == 5 and report["summary"]["judged"] == 45
    assert report["summary"]["cv_accuracy"] > 0.9


def test_with_a_cap_on_each_folds_fit_every_label_is_still_checked(tmp_path, monkeypatch):
    """At 10^5-10^6 labels each fold learns a bounded sample (newest per department), as the service's refit does."""
    from tools import quality

    store = learnable_store(tmp_path / "s.sqlite3", flips={8: "市教育局"})
    fitted = []
    fit = quality.LinearSvmClassifier.fit
    monkeypatch.setattr(quality.LinearSvmClassifier, "fit", lambda self, texts, *a, **k: fitted.append(len(texts)) or fit(self, texts, *a, **k))

    report = quality_report(store.labels(), DEPARTMENTS, max_train_labels=24)

    assert fitted == [24] * 5 and report["summary"]["judged"] == 45
    assert 8 in [e["annotation_id"] for e in report["suspected_errors"][:3]]


def test_confusable_pairs_put_the_most_confused_pair_first(tmp_path):
    flips = {201: "市自来水公司", 202: "市自来水公司", 203: "市自来水公司", 101: "市教育局"}
    store = learnable_store(tmp_path / "s.sqlite3", flips)

    pairs = quality_report(store.labels(), DEPARTMENTS)["confusable_pairs"]

    first = pairs[0]
    assert {first["a"], first["b"]} == {"市自来水公司", "市教育局"}
    assert first["a"] == "市自来水公司"  # three school tickets labelled water were predicted as education
    assert first["a_predicted_as_b"] >= 3 and first["total"] == first["a_predicted_as_b"] + first["b_predicted_as_a"]
    assert [p["total"] for p in pairs] == sorted((p["total"] for p in pairs), reverse=True)
    assert any({p["a"], p["b"]} == {"市交通警察支队", "市教育局"} for p in pairs[1:])


def test_agreement_on_tasks_labelled_twice(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    water, traffic, school = DEPARTMENTS
    answers = [(water, water), (traffic, traffic), (school, school), (water, traffic)]  # the last task is disputed
    for task, (first, second) in enumerate(answers, start=1):
        store.upsert_label(gold(task, ticket(first, task), first, task_id=task, annotator="7"))
        store.upsert_label(gold(100 + task, ticket(first, task), second, task_id=task, annotator="9"))
    store.upsert_label(gold(50, ticket(water, 10), water))  # labelled once: no part of agreement

    agreement = quality_report(store.labels(), DEPARTMENTS)["annotator_agreement"]

    assert agreement["tickets"] == 4 and agreement["annotators"] == ["7", "9"]
    assert agreement["pairwise_agreement"] == 0.75
    # annotator 7 used water 2, traffic 1, school 1; annotator 9 water 1, traffic 2, school 1: chance = 5/16
    assert agreement["cohen_kappa"] == pytest.approx((12 / 16 - 5 / 16) / (11 / 16), abs=1e-4)
    # pooled shares 3/8, 3/8, 2/8: chance = 22/64
    assert agreement["fleiss_kappa"] == pytest.approx((0.75 - 22 / 64) / (1 - 22 / 64), abs=1e-4)
    assert [d["task_id"] for d in agreement["disagreements"]] == [4]
    assert {l["department"] for l in agreement["disagreements"][0]["labels"]} == {water, traffic}


def test_the_same_text_in_another_task_counts_as_the_same_ticket(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    text = ticket("市自来水公司", 0)
    store.upsert_label(gold(1, text, "市自来水公司", annotator="7"))
    store.upsert_label(gold(2, text.replace("，", "， "), "市自来水公司", annotator="9"))
    store.upsert_label(gold(3, text, "市教育局", annotator="12"))

    agreement = quality_report(store.labels(), DEPARTMENTS)["annotator_agreement"]

    assert agreement["tickets"] == 1 and agreement["annotators"] == ["12", "7", "9"]
    assert agreement["pairwise_agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert agreement["cohen_kappa"] is None  # three annotators: only Fleiss' kappa applies
    assert len(agreement["disagreements"]) == 1


@pytest.mark.parametrize("departments", [["市自来水公司"], ["市自来水公司", "市教育局"]])
def test_tiny_data_degrades_to_fewer_folds_or_none(tmp_path, departments):
    store = Store(tmp_path / "s.sqlite3")
    for i, department in enumerate(departments * 2):
        store.upsert_label(gold(i + 1, ticket(department, i), department))

    report = quality_report(store.labels(), DEPARTMENTS, folds=5)
    json_path, html_path = write_report(report, tmp_path / "out")

    summary = report["summary"]
    if len(departments) == 1:
        assert summary["judged"] == 0 and summary["folds"] == 0 and report["suspected_errors"] == []
        assert "skipped" in summary["notes"][0]
    else:
        assert summary["judged"] == 4 and summary["folds"] == 2
        assert "2 folds instead of 5" in summary["notes"][0]
    assert json.loads(json_path.read_text(encoding="utf-8"))["summary"] == summary
    assert escape(summary["notes"][0]) in html_path.read_text(encoding="utf-8")


def test_a_single_label_and_no_labels_at_all_do_not_crash(tmp_path):
    assert quality_report([], DEPARTMENTS)["summary"]["judged"] == 0
    store = Store(tmp_path / "s.sqlite3")
    store.upsert_label(gold(1, ticket("市教育局", 0), "市教育局"))
    report = quality_report(store.labels(), DEPARTMENTS)
    assert report["suspected_errors"] == [] and report["annotator_agreement"]["tickets"] == 0
    assert report["annotator_agreement"]["pairwise_agreement"] is None


def test_html_report_is_self_contained_and_escaped(tmp_path):
    store = learnable_store(tmp_path / "s.sqlite3", flips={8: "市教育局"})
    hostile = "来电人反映<script>alert(1)</script>学校乱收费"
    store.upsert_label(gold(900, hostile, "市教育局", task_id=900, annotator="7"))
    store.upsert_label(gold(901, hostile, "市交通警察支队", task_id=900, annotator="9"))

    _, html_path = write_report(quality_report(store.labels(), DEPARTMENTS), tmp_path / "out")

    html = html_path.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "东湖名邸" in html and "市自来水公司" in html
    assert "http" not in html  # no external stylesheets, scripts or fonts


def test_cli_writes_both_files_for_the_store_under_model_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model"))
    assert main(["--out", str(tmp_path / "report")]) == 2
    assert "no label store" in capsys.readouterr().err

    learnable_store(tmp_path / "model" / "store.sqlite3", flips={8: "市教育局"})
    assert main(["--out", str(tmp_path / "report"), "--project", "2"]) == 2
    assert "project 2 has no gold labels" in capsys.readouterr().err

    assert main(["--out", str(tmp_path / "report"), "--folds", "3"]) == 0

    out = capsys.readouterr().out
    assert "45 labels, 3 departments" in out
    report = json.loads((tmp_path / "report" / "quality_report.json").read_text(encoding="utf-8"))
    assert report["summary"]["folds"] == 3 and report["suspected_errors"][0]["annotation_id"] == 8
    assert (tmp_path / "report" / "quality_report.html").exists()


NOISY_PER_DEPARTMENT = 30


def noisy_rows(flips: int, seed: int) -> tuple[list[dict], set[str]]:
    """30 distinct learnable tickets a department as JSONL rows, `flips` of them given another department at
    random (seeded)."""
    import random

    rng = random.Random(seed)
    rows = [{"id": f"T-{d}-{i}", "label": department,
             "text": f"来电人反映，{PLACES[i % 15]}{ISSUES[department][(i // 15 + i) % 5]}，要求尽快处理。"}
            for d, department in enumerate(DEPARTMENTS) for i in range(NOISY_PER_DEPARTMENT)]
    flipped = rng.sample(range(len(rows)), flips)
    for i in flipped:
        rows[i]["label"] = rng.choice([d for d in DEPARTMENTS if d != rows[i]["label"]])
    return rows, {rows[i]["id"] for i in flipped}


@pytest.mark.parametrize("ranking", ["rank_average", "normalized_margin", "self_confidence"])
def test_injected_label_noise_ranks_on_top(ranking):
    hits = []
    for seed in range(3):
        rows, flipped = noisy_rows(flips=6, seed=seed)  # 7 % noise
        labels, ids = labels_from_rows(rows)
        report = quality_report(labels, DEPARTMENTS, seed=seed, ranking=ranking, ids=ids)
        top = [e["id"] for e in report["suspected_errors"][:len(flipped)]]
        hits.append(len(set(top) & flipped) / len(flipped))
    assert min(hits) >= 0.8, hits  # precision@K, K = the number of flipped labels: one miss at most


def test_from_jsonl_lists_suspects_in_rank_order_by_row_id(tmp_path, capsys):
    rows, flipped = noisy_rows(flips=3, seed=0)
    rows[0] = {"id": rows[0]["id"], "text": rows[0]["text"], "department": rows[0]["label"]}  # department is accepted too
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")

    assert main(["--from-jsonl", str(data), "--out", str(tmp_path / "report")]) == 0

    assert "90 labels, 3 departments" in capsys.readouterr().out
    suspects = json.loads((tmp_path / "report" / "quality_report.json").read_text(encoding="utf-8"))["suspected_errors"]
    assert set(e["id"] for e in suspects[:3]) == flipped
    assert all("annotation_id" not in e and "task_id" not in e for e in suspects)
    assert [e["doubt"] for e in suspects] == sorted((e["doubt"] for e in suspects), reverse=True)
    by_id = {row["id"]: row for row in rows}
    assert all(e["gold"] == by_id[e["id"]].get("label", by_id[e["id"]].get("department")) for e in suspects)


def test_from_jsonl_refuses_bad_rows_and_a_project(tmp_path, capsys):
    data = tmp_path / "labels.jsonl"
    data.write_text('{"id": 1, "text": "停水两天"}\n', encoding="utf-8")
    assert main(["--from-jsonl", str(data), "--out", str(tmp_path / "report")]) == 2
    assert "row 1 needs id, text and label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--from-jsonl", str(data), "--project", "1", "--out", str(tmp_path / "report")])


def test_one_annotator_meeting_a_text_twice_is_no_agreement(tmp_path):
    store = learnable_store(tmp_path / "s.sqlite3", flips={})
    store.upsert_label(gold(900, ticket("市教育局", 3), "市交通警察支队", task_id=900))  # the same annotator, a copy

    report = quality_report(store.labels(), DEPARTMENTS)
    _, html_path = write_report(report, tmp_path / "out")

    assert report["annotator_agreement"]["tickets"] == 0
    assert "Annotator agreement" not in html_path.read_text(encoding="utf-8")


def test_suspects_link_to_their_label_studio_task_when_the_url_is_known(tmp_path, monkeypatch):
    learnable_store(tmp_path / "model" / "store.sqlite3", flips={8: "市教育局"})
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080/")

    assert main(["--out", str(tmp_path / "report")]) == 0

    html = (tmp_path / "report" / "quality_report.html").read_text(encoding="utf-8")
    assert '<a href="http://ls.example:8080/projects/1/data?task=8">task 8</a>' in html
    assert "labels the model agrees with (share)" in html and "cv_accuracy" not in html


def test_the_html_shows_the_top_suspects_a_page_at_a_time(tmp_path):
    suspect = {"annotation_id": 1, "project_id": 1, "task_id": 1, "text": "停水", "gold": "市教育局",
               "predicted": "市自来水公司", "doubt": 1.0, "p_predicted": 0.9, "p_gold": 0.1, "annotator": "7"}
    report = quality_report([], DEPARTMENTS)
    report["suspected_errors"] = [{**suspect, "task_id": i} for i in range(1, 121)]

    _, html_path = write_report(report, tmp_path / "out", top=100)

    html = html_path.read_text(encoding="utf-8")
    assert "The 100 most doubtful of 120 are shown" in html
    assert "task 100<" in html and "task 101<" not in html
    assert 'id="pager"' in html
