"""bench.learning end to end in --quick mode on a small synthetic file: the JSON contract the table is built from."""
from __future__ import annotations

import json
import random

from bench.learning import main
from learning.strategies import DEFAULT

KEYWORDS = {
    "水务局": ["自来水", "停水", "水压低", "水管漏水"],
    "交通委员会": ["公交车", "地铁站", "出租车", "公交线路"],
    "房屋管理局": ["物业费", "电梯故障", "维修基金", "业委会"],
    "教育委员会": ["小学入学", "学区划分", "课外培训", "幼儿园"],
}
RARE = {"绿化市容局": ["垃圾分类", "行道树"], "民政局": ["养老院", "低保"]}  # fewer than k rows: only in the 'all' row
TINY = {"气象局": ["台风预警", "暴雨"]}  # one row: its fold never trained on it, the noise reference still ranks it
PLACES = ["浦东新区", "徐汇区", "静安区", "杨浦区", "闵行区", "宝山区"]
FILLERS = ["来电人反映", "市民来信称", "居民咨询", "网友留言"]
ENDINGS = ["，希望尽快处理。", "，请相关部门核实。", "，已多次反映未解决。", "，望答复。"]


def write_fixture(path) -> None:
    rng = random.Random(0)
    rows = []
    for units, n in ((KEYWORDS, 30), (RARE, 6), (TINY, 1)):
        for department, words in units.items():
            for _ in range(n):
                text = f"{rng.choice(FILLERS)}{rng.choice(PLACES)}{rng.choice(words)}的问题{rng.choice(ENDINGS)}"
                rows.append({"id": f"t{len(rows)}", "text": text, "label": department})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def in_unit(value) -> bool:
    return isinstance(value, float | int) and 0.0 <= value <= 1.0


def test_quick_run_writes_every_row_and_cell(tmp_path, capsys):
    data = tmp_path / "tiny" / "dev.jsonl"
    data.parent.mkdir()
    write_fixture(data)
    out = tmp_path / "learning.json"

    assert main(["--quick", "--data", str(data), "--out", str(out), "--skip", "tiny-all:strategy"]) == 0

    result = json.loads(out.read_text(encoding="utf-8"))
    assert [r["id"] for r in result["rows"]] == ["tiny-k20", "tiny-all"]
    k20, everything = result["rows"]
    assert (k20["rows"], k20["units"]) == (120, 4) and (everything["rows"], everything["units"]) == (133, 7)
    assert result["config"]["default_strategy"] == DEFAULT and result["config"]["quick"] is True
    for row in result["rows"]:
        cv = row["cv"]
        assert cv["status"] == "ok" and len(cv["runs"]) == result["config"]["folds"]
        for model in ("instant", "reference"):
            for metric in ("accuracy", "macro_f1"):
                assert all(in_unit(v) for v in cv[model][metric])
        assert all(in_unit(v) for v in cv["ece_before"] + cv["ece_after"])
        assert row["noise"]["status"] == "ok"
        for at in row["noise"]["rates"].values():
            assert all(in_unit(v) for v in at["ours"] + at["reference"]) and at["k"] >= 1

    strategy = k20["strategy"]
    assert strategy["status"] == "ok" and strategy["default"] == DEFAULT and strategy["reference"] == "random"
    for budget in map(str, result["config"]["budgets"]):
        at = strategy["budgets"][budget]
        assert at["status"] == "ok"
        for name in (DEFAULT, "random"):
            assert all(in_unit(v) for v in at[name]["accuracy"] + at[name]["macro_f1"])
            assert at[name]["saving_interval"] == [at[name]["saving_percent"]] * 2  # one seed: its own saving at both ends
    assert everything["strategy"] == {"status": "not run", "reason": everything["strategy"]["reason"]}

    table = capsys.readouterr().out
    assert "| tiny-k20 |" in table and "| tiny-all |" in table and "not run: skipped with --skip" in table

    # --from-json re-renders the same table without measuring
    again = tmp_path / "again.json"
    assert main(["--from-json", str(out), "--out", str(again)]) == 0
    assert json.loads(again.read_text(encoding="utf-8"))["rows"] == result["rows"]


def test_the_noise_reference_ranks_a_label_whose_unit_its_fold_never_trained_on(tmp_path):
    """The out-of-fold reference on a label space with single-row units (Dalian's and Shanghai's 'all' rows): a
    ticket filed under a unit no other ticket has is among the most doubted, not scored against another unit."""
    from bench.noise import reference_ranking

    write_fixture(tmp_path / "rows.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["label"] in KEYWORDS]
    suspect = next(r for r in rows if r["label"] == "水务局")
    suspect["label"] = "气象局"  # sorts among the known units, so a lookup by position would find one of them
    assert sorted([*KEYWORDS, "气象局"]).index("气象局") not in (0, len(KEYWORDS))
    assert suspect["id"] in reference_ranking(rows, seed=0)[:3]


def test_a_replay_run_in_parts_by_seed_merges_into_the_replay_of_all_seeds(tmp_path):
    """Two machines' cores are shared by running a row's seeds as separate processes; --from-json joins them into the
    cell one process with every seed writes: the same points, the same means and savings at each budget."""
    data = tmp_path / "tiny" / "dev.jsonl"
    data.parent.mkdir()
    write_fixture(data)
    common = ["--data", str(data), "--rows", "tiny-k20", "--cells", "strategy", "--folds", "2", "--budgets", "40", "60",
              "--initial", "20", "--step", "20", "--reorder", "40"]
    for name, seeds in (("whole", ["0", "1"]), ("part0", ["0"]), ("part1", ["1"])):
        assert main([*common, "--seeds", *seeds, "--out", str(tmp_path / f"{name}.json")]) == 0
    assert main([*common, "--reorder", "20", "--seeds", "1", "--out", str(tmp_path / "other.json")]) == 0
    assert main(["--from-json", str(tmp_path / "part1.json"), str(tmp_path / "part0.json"), "--out", str(tmp_path / "merged.json")]) == 0

    whole, merged = (json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))["rows"][0]["strategy"]
                     for name in ("whole", "merged"))
    assert merged["seeds"] == [0, 1]
    assert merged["budgets"] == whole["budgets"]
    assert points_of(merged) == points_of(whole)

    # a part written before cells recorded their --reorder is joined by its file's configuration
    older = json.loads((tmp_path / "part0.json").read_text(encoding="utf-8"))
    del older["rows"][0]["strategy"]["reorder"]
    (tmp_path / "older.json").write_text(json.dumps(older), encoding="utf-8")
    assert main(["--from-json", str(tmp_path / "older.json"), str(tmp_path / "part1.json"), "--out", str(tmp_path / "joined.json")]) == 0
    assert json.loads((tmp_path / "joined.json").read_text(encoding="utf-8"))["rows"][0]["strategy"]["seeds"] == [0, 1]

    # another replay (ordered every 20 labels) is not joined to it: the later file wins, as for any other cell
    assert main(["--from-json", str(tmp_path / "part0.json"), str(tmp_path / "other.json"), "--out", str(tmp_path / "mixed.json")]) == 0
    assert json.loads((tmp_path / "mixed.json").read_text(encoding="utf-8"))["rows"][0]["strategy"]["seeds"] == [1]


def points_of(cell: dict) -> list[tuple]:
    return sorted((p["strategy"], p["seed"], p["labels"], p["accuracy"]) for p in cell["points"])


def test_another_strategy_is_measured_against_random_order_and_named_in_the_table(tmp_path, capsys):
    data = tmp_path / "tiny" / "dev.jsonl"
    data.parent.mkdir()
    write_fixture(data)
    out = tmp_path / "cover.json"

    assert main(["--quick", "--data", str(data), "--out", str(out), "--cells", "strategy", "--rows", "tiny-k20",
                 "--strategy", "cover-then-margin"]) == 0

    result = json.loads(out.read_text(encoding="utf-8"))
    strategy = result["rows"][0]["strategy"]
    assert result["config"]["default_strategy"] == strategy["default"] == "cover-then-margin"
    assert {point["strategy"] for point in strategy["points"]} == {"cover-then-margin", "random"}
    assert "cover-then-margin vs random acc @" in capsys.readouterr().out


def test_a_run_in_parallel_parts_gives_the_numbers_of_one_process(tmp_path, capsys):
    """--jobs runs each row's cells and each replay seed as a process of its own and merges them: every measured
    number is the one a single process gives, and the table has every row and cell."""
    data = tmp_path / "tiny" / "dev.jsonl"
    data.parent.mkdir()
    write_fixture(data)
    common = ["--data", str(data), "--folds", "2", "--seeds", "0", "1", "--budgets", "40", "60", "--initial", "20", "--step", "20",
              "--reorder", "40", "--rates", "0.1", "--skip", "tiny-all:strategy"]
    assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--jobs", "2", "--out", str(tmp_path / "parts.json")]) == 0

    one, parts = (json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")) for name in ("one", "parts"))
    assert parts["config"] == one["config"] and [r["id"] for r in parts["rows"]] == [r["id"] for r in one["rows"]]
    assert len(list((tmp_path / "parts_parts").glob("*.json"))) == 7  # 2 rows x (cv, noise), tiny-k20's replay x 2 seeds, 1 skipped
    for a, b in zip(one["rows"], parts["rows"]):
        assert [run["instant"]["accuracy"] for run in a["cv"]["runs"]] == [run["instant"]["accuracy"] for run in b["cv"]["runs"]]
        assert a["noise"]["rates"] == b["noise"]["rates"]
        assert (a["strategy"]["status"], b["strategy"]["status"]) in (("ok", "ok"), ("not run", "not run"))
    assert points_of(parts["rows"][0]["strategy"]) == points_of(one["rows"][0]["strategy"])
    assert parts["rows"][0]["strategy"]["budgets"] == one["rows"][0]["strategy"]["budgets"]
    assert "2 processes at once" in capsys.readouterr().out
