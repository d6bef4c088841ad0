"""The simulation replays a labelled set in each strategy's order and reports learning curves a person can read."""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tools.simulation import CurvePoint, compare_to_random, main, mean_curves, print_table, saving_interval

REPO = Path(__file__).resolve().parents[1]

KEYWORDS = {
    "上海市水务局": ["自来水", "停水", "水压低", "水管漏水"],
    "上海市交通委员会": ["公交车", "地铁站", "出租车", "公交线路"],
    "上海市房屋管理局": ["物业费", "电梯故障", "维修基金", "业委会"],
    "上海市教育委员会": ["小学入学", "学区划分", "课外培训", "幼儿园"],
}
PLACES = ["浦东新区", "徐汇区", "静安区", "杨浦区", "闵行区", "宝山区"]
FILLERS = ["来电人反映", "市民来信称", "居民咨询", "网友留言"]
ENDINGS = ["，希望尽快处理。", "，请相关部门核实。", "，已多次反映未解决。", "，望答复。"]
INITIAL, STEP, BUDGET = 20, 30, 90
CHECKPOINTS = [20, 50, 80, 90]  # every step, then the budget even when it is not a whole step away
STRATEGIES = ["random", "margin", "balanced-margin"]


def tickets(n_per_department: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": f"{rng.choice(FILLERS)}{rng.choice(PLACES)}{rng.choice(words)}的问题{rng.choice(ENDINGS)}",
             "label": department}
            for department, words in KEYWORDS.items() for _ in range(n_per_department)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One simulation over two seeds, shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("simulation")
    write_jsonl(folder / "train.jsonl", tickets(40, seed=1))
    write_jsonl(folder / "eval.jsonl", tickets(20, seed=2))
    out = folder / "out"
    code = main(["--train", str(folder / "train.jsonl"), "--eval", str(folder / "eval.jsonl"), "--out", str(out),
                 "--initial", str(INITIAL), "--step", str(STEP), "--budget", str(BUDGET), "--seeds", "0", "1",
                 "--strategies", *STRATEGIES])
    with (out / "learning_curve.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return code, out, rows


def test_the_run_writes_the_curve_the_plot_and_the_summary(run):
    code, out, rows = run
    assert code == 0
    assert list(rows[0]) == ["strategy", "seed", "labels", "accuracy", "macro_f1"]
    assert len(rows) == len(STRATEGIES) * 2 * len(CHECKPOINTS)  # every seed's rows are kept
    with (out / "refit_seconds.csv").open(encoding="utf-8") as f:
        timings = list(csv.DictReader(f))
    assert list(timings[0]) == ["strategy", "seed", "labels", "seconds"] and len(timings) == len(rows)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_curve_starts_after_the_initial_batch_and_ends_at_the_budget(run):
    _, _, rows = run
    curves = defaultdict(list)
    for row in rows:
        curves[row["strategy"], row["seed"]].append(int(row["labels"]))
    assert set(curves) == {(s, seed) for s in STRATEGIES for seed in ("0", "1")}
    assert all(labels == CHECKPOINTS for labels in curves.values())


def test_all_strategies_of_a_seed_start_from_the_same_labels(run):
    _, _, rows = run
    for seed in ("0", "1"):
        first = {(r["accuracy"], r["macro_f1"]) for r in rows if r["seed"] == seed and int(r["labels"]) == INITIAL}
        assert len(first) == 1, f"seed {seed}: the strategies' first refits differ: {first}"


def test_the_instant_model_learns_the_departments_well_above_chance(run):
    _, _, rows = run
    final = [float(r["accuracy"]) for r in rows if int(r["labels"]) == BUDGET]
    assert min(final) >= 0.8  # chance is 0.25


def test_the_summary_compares_every_strategy_with_random_order(run):
    _, out, _ = run
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["pool"] == 160 and summary["eval_tickets"] == 80 and summary["departments"] == 4
    assert set(summary["strategies"]) == set(STRATEGIES)
    for row in summary["strategies"].values():
        assert {"final_accuracy", "final_accuracy_std", "final_macro_f1", "final_macro_f1_std", "labels_to_reach_random_final_accuracy",
                "label_saving_percent", "label_saving_interval"} <= set(row)
        assert row["seeds"] == 2
    random_row = summary["strategies"]["random"]
    assert random_row["final_accuracy"] == summary["random_final_accuracy"]
    assert random_row["labels_to_reach_random_final_accuracy"] in CHECKPOINTS
    assert random_row["label_saving_percent"] == 0.0


def test_labels_needed_and_saving_come_from_the_mean_curves():
    def curve(name, accuracies):
        return [CurvePoint(name, seed, n, a + delta, 0.5, 0.1) for seed, delta in ((0, -0.02), (1, 0.02))
                for n, a in zip((100, 200, 300, 400), accuracies)]

    points = curve("random", [0.5, 0.6, 0.7, 0.8]) + curve("margin", [0.6, 0.8, 0.85, 0.9]) + curve("entropy", [0.4, 0.5, 0.6, 0.7])
    comparison = compare_to_random(mean_curves(points))
    assert comparison["random"]["labels_to_reach_random_final_accuracy"] == 400
    assert comparison["margin"]["labels_to_reach_random_final_accuracy"] == 200
    assert comparison["margin"]["label_saving_percent"] == 50.0
    assert comparison["entropy"]["labels_to_reach_random_final_accuracy"] is None
    assert comparison["entropy"]["label_saving_percent"] is None
    assert comparison["margin"]["final_accuracy"] == pytest.approx(0.9)
    assert comparison["margin"]["final_accuracy_std"] == pytest.approx(0.04 / 2**0.5, abs=1e-4)  # seeds at 0.88 and 0.92, rounded


def test_a_curve_that_crosses_random_and_falls_back_has_not_reached_it(capsys):
    def curve(name, accuracies):
        return [CurvePoint(name, seed, n, a, 0.5, 0.1) for seed in (0, 1) for n, a in zip((100, 200, 300, 400), accuracies)]

    # It touches random's final 0.70 at 200 labels (the first crossing), then ends below it.
    points = curve("random", [0.5, 0.6, 0.65, 0.7]) + curve("least-confidence", [0.55, 0.72, 0.66, 0.69]) \
        + curve("margin", [0.55, 0.71, 0.69, 0.71])
    comparison = compare_to_random(mean_curves(points))
    assert comparison["least-confidence"]["labels_to_reach_random_final_accuracy"] is None
    assert comparison["least-confidence"]["label_saving_percent"] is None
    assert comparison["margin"]["labels_to_reach_random_final_accuracy"] == 400  # from 400 on, not from its first crossing at 200
    for name, interval in saving_interval(points).items():
        comparison[name]["label_saving_interval"] = interval
    print_table(comparison)
    assert "| least-confidence | 400 | 0.690 ± 0.000 | 0.500 ± 0.000 | not reached | none | none to none |" in capsys.readouterr().out


def test_a_saving_that_some_seeds_do_not_share_gets_a_wide_interval():
    """The mean curve of five seeds saves half the labels, but one seed of five never reaches random order: drawn
    twice or more in a resample, it costs the saving, so the interval reaches well below the mean's 50 %."""
    def curve(name, seeds, accuracies):
        return [CurvePoint(name, seed, n, a, 0.5, 0.1) for seed in seeds for n, a in zip((100, 200, 300, 400), accuracies)]

    random = curve("random", range(5), [0.5, 0.6, 0.7, 0.8])
    agreeing = random + curve("margin", range(5), [0.6, 0.85, 0.9, 0.95])
    one_lucky_less = random + curve("margin", range(4), [0.6, 0.85, 0.9, 0.95]) + curve("margin", [4], [0.5, 0.6, 0.7, 0.75])
    assert compare_to_random(mean_curves(one_lucky_less))["margin"]["label_saving_percent"] == 50.0
    assert saving_interval(agreeing) == {"random": [0.0, 0.0], "margin": [50.0, 50.0]}
    low, high = saving_interval(one_lucky_less)["margin"]
    assert high == 50.0 and low is not None and low <= 25.0
    assert saving_interval(one_lucky_less) == saving_interval(one_lucky_less)  # seeded: the same points, the same interval


def test_the_same_replay_gives_the_same_curve_whatever_the_hash_seed(tmp_path):
    """Two processes with different string hashing (set and dict order) write the same learning_curve.csv."""
    write_jsonl(tmp_path / "train.jsonl", tickets(15, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", tickets(5, seed=2))
    curves = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out-{hash_seed}"
        subprocess.run([sys.executable, "-m", "backend", "simulate", "--train", str(tmp_path / "train.jsonl"), "--eval",
                        str(tmp_path / "eval.jsonl"), "--out", str(out), "--initial", "8", "--step", "16", "--budget", "40",
                        "--seeds", "0", "1", "--strategies", "random", "margin"],
                       cwd=REPO, env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True, capture_output=True)
        curves.append((out / "learning_curve.csv").read_bytes())
    assert curves[0] == curves[1]


def test_a_missing_evaluation_file_is_refused_with_its_name(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", tickets(5, seed=1))
    code = main(["--train", str(tmp_path / "train.jsonl"), "--eval", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--min-per-label", "6", "--min-per-label 6"),  # a threshold that leaves no department
    ("--budget", "21", "20 tickets of the pool"),  # a budget beyond the pool
])
def test_settings_the_data_cannot_meet_are_refused(tmp_path, capsys, option, value, message):
    write_jsonl(tmp_path / "train.jsonl", tickets(5, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", tickets(2, seed=2))
    code = main(["--train", str(tmp_path / "train.jsonl"), "--eval", str(tmp_path / "eval.jsonl"), option, value,
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_llm_model_is_refused_without_a_gpu(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_jsonl(tmp_path / "train.jsonl", tickets(5, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", tickets(2, seed=2))
    code = main(["--train", str(tmp_path / "train.jsonl"), "--eval", str(tmp_path / "eval.jsonl"), "--model", "llm",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "CUDA" in capsys.readouterr().err


def test_the_default_strategy_is_the_services_and_picks_its_young_order_while_the_model_is_young():
    """`--strategies default` replays the queue order the service writes: before the model is mature each batch,
    the first one included (the service orders a project's queue before it has any label), is the head of the
    default's young order over the tickets still unlabelled (its ``first``), seeded from the replay's seed."""
    from learning.strategies import DEFAULT, Pool, mature, strategy
    from tools.simulation import InstantModel, Schedule, Tickets, build_parser, replay

    assert build_parser().parse_args(["--train", "t", "--eval", "e", "--strategies", "default"]).strategies == [DEFAULT]
    pool, evaluation = tickets(40, seed=1), tickets(20, seed=2)
    pool, evaluation = (Tickets([r["text"] for r in rows], [r["label"] for r in rows]) for rows in (pool, evaluation))
    assert not mature(BUDGET, len(KEYWORDS))
    learnt: list[list[str]] = []

    class Recording(InstantModel):
        def learn(self, texts, labels):
            learnt.append(list(texts))
            return super().learn(texts, labels)

    model = Recording(sorted(KEYWORDS))
    try:
        replay(DEFAULT, 0, pool, evaluation, model, Schedule(INITIAL, STEP, BUDGET), len(KEYWORDS))
    finally:
        model.close()
    rng, default = np.random.default_rng([0, 1]), strategy(DEFAULT)  # the replay's generator, drawn in the same order
    first = default.first(Pool(pool.texts, []), len(KEYWORDS), rng)[:INITIAL]
    assert learnt[0] == [pool.texts[i] for i in first]
    rest = np.setdiff1d(np.arange(len(pool)), first)
    order = default.first(Pool([pool.texts[i] for i in rest], [pool.texts[i] for i in first]), len(KEYWORDS), rng)
    assert learnt[1] == [pool.texts[i] for i in rest[order[:STEP]]]


def test_scoring_between_two_orderings_takes_the_next_tickets_of_the_last_order(monkeypatch):
    """With --reorder the queue is ordered only every so many labels, as the service orders it at pre-annotation while
    it refits on every label: the strategy is asked at the same label counts as in a replay that refits only when it
    re-orders, and in between the annotators take the order's next tickets, so random order (whose picks need no
    model) labels the very same tickets. (A strategy that asks the model may still pick otherwise: the refit keeps
    the method it serves on a near-tie, so the model at an ordering can depend on the refits before it.)"""
    import tools.simulation as simulation
    from tools.simulation import InstantModel, Schedule, Tickets, replay

    pool, evaluation = (Tickets([r["text"] for r in rows], [r["label"] for r in rows])
                        for rows in (tickets(40, seed=1), tickets(20, seed=2)))
    asked_at: list[int] = []

    class Asked:
        def __init__(self, name):
            self.chooser = simulation.STRATEGIES[name]()

        def rank(self, probs, rng=None, labelled=0, pool=None):
            asked_at.append(labelled)
            return self.chooser.rank(probs, rng, labelled, pool)

    class Recording(InstantModel):
        learnt: list[str]

        def learn(self, texts, labels):
            self.learnt.extend(texts)
            return super().learn(texts, labels)

    monkeypatch.setattr(simulation, "strategy", Asked)
    runs = {}
    for schedule in (Schedule(INITIAL, STEP, BUDGET), Schedule(INITIAL, STEP // 2, BUDGET, reorder=STEP)):
        asked_at.clear()
        model = Recording(sorted(KEYWORDS))
        model.learnt = []
        try:
            points = replay("random", 0, pool, evaluation, model, schedule, len(KEYWORDS))
        finally:
            model.close()
        runs[schedule.step] = model.learnt, list(asked_at), [p.labels for p in points]
    (every_refit, asked_every_refit, coarse), (between, asked_between, fine) = runs[STEP], runs[STEP // 2]
    assert coarse == CHECKPOINTS and fine == [20, 35, 50, 65, 80, 90]
    assert asked_between == asked_every_refit == [20, 50, 80]
    assert between == every_refit
