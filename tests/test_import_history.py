"""Importing a centre's past tickets (issue 16): JSONL, CSV in GB18030 and .xlsx become gold labels with source
'history' and negative ids; bad rows are reported, never stored; a second import stores nothing new; reconciling
with Label Studio keeps them; the CLI says what is wrong."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import openpyxl
import pytest

from core.labeling import parse_label_config
from core.store import HISTORY, Store
from tests.helpers import LABEL_CONFIG, SAMPLES, repo_root
from tools.import_history import CHUNK_ROWS, DETECT_BYTES, SeenIds, detect_encoding, history_id, main

PROJECT = 3


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """A store that knows project 3 and its departments, as after Label Studio connected it."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    store = Store(model_dir / "store.sqlite3")
    store.remember_project(PROJECT, LABEL_CONFIG, parse_label_config(LABEL_CONFIG).departments)
    store.close()
    return model_dir


def stored(model_dir) -> Store:
    return Store(model_dir / "store.sqlite3")


def tickets(n: int = 20) -> list[dict]:
    return [{"工单编号": f"GD2024{i:06d}", "诉求内容": s["text"], "承办单位": s["department"]} for i, s in enumerate(SAMPLES[:n])]


def run(model_dir, path, *args) -> tuple[int, dict]:
    report = model_dir.parent / "report.json"
    code = main([str(path), "--project", str(PROJECT), "--report", str(report), *args])
    return code, json.loads(report.read_text(encoding="utf-8")) if code == 0 else {}


def test_jsonl_rows_become_history_gold_labels_and_a_second_import_stores_nothing(model_dir, tmp_path, capsys):
    rows = tickets()
    path = tmp_path / "past.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    code, report = run(model_dir, path)
    assert code == 0 and report["imported"] == 20 and report["skipped"] == {}
    assert report["columns"] == {"text": "诉求内容", "department": "承办单位", "id": "工单编号"}
    labels = stored(model_dir).labels(project_id=PROJECT)
    assert sorted((l.text, l.department) for l in labels) == sorted((r["诉求内容"], r["承办单位"]) for r in rows)
    assert all(l.source == HISTORY and l.annotation_id < 0 and l.task_id == l.annotation_id for l in labels)
    assert {l.annotation_id for l in labels} == {history_id(PROJECT, r["工单编号"]) for r in rows}
    assert "imported: 20 new gold labels" in capsys.readouterr().out

    seq = stored(model_dir).label_seq()
    code, again = run(model_dir, path)
    assert code == 0 and again["imported"] == 0 and again["already_stored"] == 20
    assert stored(model_dir).label_seq() == seq  # nothing changed, so no model refits
    assert stored(model_dir).count_labels() == 20 and stored(model_dir).integrity_errors() == []


def test_csv_in_gb18030_with_aliases_and_bad_rows_reported_not_stored(model_dir, tmp_path, capsys):
    rows = tickets(6)
    rows[1]["承办单位"] = "派出所"  # an alias of 市公安局 in the catalog
    rows[2]["承办单位"] = " 市 教育局 "  # spaces do not make another department
    bad = [
        {"工单编号": "GD9000001", "诉求内容": "小区门口路灯不亮", "承办单位": "区街道办事处（已撤销）"},  # unknown department
        {"工单编号": "GD9000002", "诉求内容": "  ", "承办单位": "市公安局"},  # empty text
        {"工单编号": "GD9000003", "诉求内容": "楼下烧烤店油烟很大", "承办单位": ""},  # no department
        {"工单编号": rows[0]["工单编号"], "诉求内容": "同一编号的另一张工单", "承办单位": "市公安局"},  # duplicate id
        {"工单编号": "", "诉求内容": "没有编号的工单", "承办单位": "市公安局"},  # no id
    ]
    path = tmp_path / "past.csv"
    with path.open("w", encoding="gb18030", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["工单编号", "诉求内容", "承办单位"])
        writer.writeheader()
        writer.writerows(rows + bad)
    assert detect_encoding(path.read_bytes()) == "gb18030"

    code, report = run(model_dir, path)
    assert code == 0 and report["encoding"] == "gb18030" and report["rows"] == 11 and report["imported"] == 6
    assert report["skipped"] == {"missing_id": 1, "empty_text": 1, "unknown_department": 2, "duplicate_id": 1}
    assert report["unknown_departments"] == {"区街道办事处（已撤销）": 1, "": 1}
    assert report["examples"]["duplicate_id"] == [{"row": 1 + 6 + 4, "id": rows[0]["工单编号"], "value": "同一编号的另一张工单"}]
    departments = {l.text: l.department for l in stored(model_dir).labels()}
    assert departments[rows[1]["诉求内容"]] == "市公安局" and departments[rows[2]["诉求内容"]] == "市教育局"
    assert len(departments) == 6 and not any(b["诉求内容"] in departments for b in bad)
    out = capsys.readouterr().out
    assert "区街道办事处（已撤销）" in out and "skipped: 5" in out


def test_utf8_csv_with_a_byte_order_mark_and_no_id_column(model_dir, tmp_path):
    path = tmp_path / "past.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as f:  # what Excel writes as "CSV UTF-8"
        writer = csv.writer(f)
        writer.writerow(["text", "department"])
        writer.writerows([(s["text"], s["department"]) for s in SAMPLES[:5]] + [(SAMPLES[0]["text"], SAMPLES[0]["department"])])
    code, report = run(model_dir, path)
    assert code == 0 and report["encoding"] == "utf-8-sig" and report["columns"] == {"text": "text", "department": "department", "id": None}
    assert report["imported"] == 5 and report["skipped"] == {"duplicate_id": 1}  # without ids, a repeated text is the same ticket


def test_a_file_unreadable_part_way_keeps_the_rows_before_and_says_so(model_dir, tmp_path, capsys):
    path = tmp_path / "past.csv"
    good = [f"GD{i},{SAMPLES[i % len(SAMPLES)]['text']}（{i}）,{SAMPLES[i % len(SAMPLES)]['department']}\n" for i in range(12_000)]
    assert len("".join(good).encode()) > DETECT_BYTES  # the start decides UTF-8; a GB18030 row comes after it
    path.write_bytes(("工单编号,诉求内容,承办单位\n" + "".join(good)).encode() + "GDX,噪音扰民,市公安局\n".encode("gb18030"))
    assert main([str(path), "--project", str(PROJECT)]) == 2
    assert "could not be read to the end: line 12002 is not utf-8-sig text" in capsys.readouterr().err
    assert stored(model_dir).count_labels(PROJECT) == 12_000


def test_xlsx_with_numeric_ids_and_a_named_sheet(model_dir, tmp_path):
    path = tmp_path / "past.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active.append(["本表为 2024 年工单"])
    sheet = book.create_sheet("工单")
    sheet.append(["受理编号", "来电内容", "处理部门", "受理时间"])
    for i, s in enumerate(SAMPLES[:12]):
        sheet.append([2024010100000 + i, s["text"], s["department"], "2024-01-01"])
    sheet.append([None, None, None, None])  # an empty row Excel left behind is no ticket
    book.save(path)

    code, report = run(model_dir, path, "--sheet", "工单", "--id-field", "受理编号")
    assert code == 0 and report["rows"] == 12 and report["imported"] == 12 and report["encoding"] is None
    ids = {l.annotation_id for l in stored(model_dir).labels()}
    assert history_id(PROJECT, "2024010100000") in ids  # the number is the id as written, not 2024010100000.0
    assert main([str(path), "--project", str(PROJECT), "--sheet", "Sheet9"]) == 2


def test_a_dry_run_reports_and_stores_nothing(model_dir, tmp_path):
    path = tmp_path / "past.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tickets(5)) + "not json\n", encoding="utf-8")
    code, report = run(model_dir, path, "--dry-run")
    assert code == 0 and report["dry_run"] and report["imported"] == 5 and report["skipped"] == {"unreadable": 1}
    assert stored(model_dir).count_labels() == 0
    run(model_dir, path)
    code, report = run(model_dir, path, "--dry-run")
    assert report["imported"] == 0 and report["already_stored"] == 5


def test_an_import_spans_several_transactions_and_a_stopped_one_resumes(model_dir, tmp_path):
    n = CHUNK_ROWS + 300
    lines = [json.dumps({"id": i, "text": f"{SAMPLES[i % len(SAMPLES)]['text']}（第{i}号）", "department": SAMPLES[i % len(SAMPLES)]["department"]},
                        ensure_ascii=False) + "\n" for i in range(n)]
    path = tmp_path / "past.jsonl"
    path.write_text("".join(lines[:CHUNK_ROWS + 100]), encoding="utf-8")  # an import stopped part-way
    assert run(model_dir, path)[1]["imported"] == CHUNK_ROWS + 100
    path.write_text("".join(lines), encoding="utf-8")
    code, report = run(model_dir, path)
    assert (report["imported"], report["already_stored"]) == (200, CHUNK_ROWS + 100)
    assert stored(model_dir).count_labels(PROJECT) == n


def test_history_labels_survive_a_reconcile_with_label_studio(model_dir, tmp_path):
    path = tmp_path / "past.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tickets(4)), encoding="utf-8")
    run(model_dir, path)
    store = stored(model_dir)
    store.reconcile_project(PROJECT, [], cancelled=set(), pulled_since="9999")  # Label Studio has no task of them
    assert store.count_labels(PROJECT) == 4


def test_errors_exit_2_with_the_reason(model_dir, tmp_path, capsys):
    path = tmp_path / "past.jsonl"
    path.write_text(json.dumps({"问题": "噪音扰民", "部门": "市公安局"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main([str(path), "--project", "99"]) == 2
    assert "project 99 is unknown" in capsys.readouterr().err
    assert main([str(path), "--project", str(PROJECT)]) == 2
    assert "no text column found among 问题, 部门" in capsys.readouterr().err
    assert main([str(path), "--project", str(PROJECT), "--text-field", "问题", "--department-field", "承办"]) == 2
    assert "no column '承办'" in capsys.readouterr().err
    assert main([str(tmp_path / "past.txt"), "--project", str(PROJECT)]) == 2
    assert main([str(path), "--project", str(PROJECT), "--text-field", "问题", "--department-field", "部门"]) == 0


def test_a_missing_store_is_an_error_not_a_new_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "nowhere"))
    assert main([str(tmp_path / "past.csv"), "--project", "1"]) == 2
    assert "there is no label store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_seen_ids_remember_across_merges():
    seen = SeenIds()
    assert all(seen.add(v) for v in (5, -3, 9))
    seen.merge()
    assert not seen.add(-3) and seen.add(7) and not seen.add(7)
    seen.merge()
    assert [seen.add(v) for v in (-4, 5, 7, 8, 9)] == [True, False, False, True, False]


def test_help_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "backend", "import-history", "--help"], cwd=repo_root(), capture_output=True,
                          text=True, check=True)
    assert "--department-field" in done.stdout and "--dry-run" in done.stdout and "GB18030" in done.stdout
